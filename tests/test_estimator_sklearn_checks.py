"""scikit-learn's estimator checks for ``jaxgmm.GaussianMixture``."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from jaxgmm import GaussianMixture  # noqa: E402


@parametrize_with_checks([GaussianMixture()])
def test_sklearn_estimator_checks(estimator, check) -> None:
    """Every check scikit-learn applies to a density estimator passes."""
    check(estimator)
