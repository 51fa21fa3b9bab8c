"""scikit-learn's estimator checks for ``jaxgmm.GaussianMixtureImputer``."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from jaxgmm import GaussianMixtureImputer  # noqa: E402


@parametrize_with_checks(
    [GaussianMixtureImputer(covariance_type="diag", max_iter=5, init_params="random_from_data")]
)
def test_sklearn_imputer_checks(estimator, check) -> None:
    """Every check scikit-learn applies to a transformer passes."""
    check(estimator)
