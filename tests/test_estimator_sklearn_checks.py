"""scikit-learn's estimator checks for ``jaxgmm.GaussianMixture``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from jaxgmm import GaussianMixture  # noqa: E402


@parametrize_with_checks([GaussianMixture()])
def test_sklearn_estimator_checks(estimator, check) -> None:
    """Every check scikit-learn applies to a density estimator passes."""
    check(estimator)


def test_array_api_check_with_numpy() -> None:
    """check_array_api_input, which skips unless SCIPY_ARRAY_API is set at start-up."""
    code = textwrap.dedent(
        """
        from sklearn.utils.estimator_checks import check_array_api_input
        from jaxgmm import GaussianMixture
        check_array_api_input(
            "GaussianMixture",
            GaussianMixture(),
            array_namespace="numpy",
            expect_only_array_outputs=False,
        )
        print("ok")
        """
    )
    env = {**os.environ, "SCIPY_ARRAY_API": "1", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
