"""``GaussianMixtureImputer``: the mixture-model counterpart of scikit-learn's imputers."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from jaxgmm._estimator import (
    _PARAMETER_RULES,
    GaussianMixture,
    InvalidParameterError,
    _precision_scope,
    _seed_from,
)
from jaxgmm._impute import IMPUTE_METHODS, impute

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)


class GaussianMixtureImputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Fill missing values (NaN) from a Gaussian mixture fitted to the observed entries.

    ``fit`` fits a :class:`jaxgmm.GaussianMixture` with ``nan_policy="marginalize"``
    (exact EM on every observed entry); ``transform`` replaces each NaN by its
    conditional expectation given the row's observed entries under that mixture
    (``method="mean"``), or by one draw from the conditional distribution
    (``method="sample"``, for multiple imputation). Observed entries pass through
    unchanged. Where :class:`~sklearn.impute.SimpleImputer` fills a column's mean and
    :class:`~sklearn.impute.IterativeImputer` regresses column on column, this uses
    the joint density, clusters included.

    Args:
        n_components: K, the mixture's number of components.
        covariance_type: ``"full"`` (default), ``"tied"``, ``"diag"`` or ``"spherical"``.
        method: ``"mean"`` or ``"sample"``.
        tol, reg_covar, max_iter, n_init, init_params: as in
            :class:`jaxgmm.GaussianMixture`.
        random_state: None, an int seed or a ``numpy.random.RandomState``: the fit's
            initialisation, and the draws of ``method="sample"``.

    Attributes:
        mixture_: the fitted :class:`jaxgmm.GaussianMixture`.
        n_iter_: EM iterations of its fit.
        n_features_in_: D. ``feature_names_in_``: column names of a fitted data frame.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        method: str = "mean",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        random_state=None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.method = method
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state

    def __sklearn_tags__(self):
        """scikit-learn's tags: NaN is this transformer's input."""
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _mixture(self) -> GaussianMixture:
        if self.method not in IMPUTE_METHODS:
            raise InvalidParameterError(
                f"GaussianMixtureImputer's parameter 'method' must be one of {IMPUTE_METHODS}; "
                f"got {self.method!r}."
            )
        names = ("covariance_type", "tol", "reg_covar", "max_iter", "n_init", "init_params")
        for name in names:
            is_valid, expected = _PARAMETER_RULES[name]
            if not is_valid(getattr(self, name)):
                raise InvalidParameterError(
                    f"GaussianMixtureImputer's parameter {name!r} must be {expected}; got "
                    f"{getattr(self, name)!r}."
                )
        return GaussianMixture(
            self.n_components,
            nan_policy="marginalize",
            random_state=self.random_state,
            **{name: getattr(self, name) for name in names},
        )

    def fit(self, X, y=None) -> GaussianMixtureImputer:
        """Fit the mixture to the observed entries of X: (N, D) with NaN; y: ignored."""
        mixture = self._mixture()
        X = _validate_data(
            self,
            X,
            dtype=[np.float64, np.float32],
            ensure_all_finite="allow-nan",
            ensure_min_samples=2,
        )
        self.mixture_ = mixture.fit(X)
        return self

    @property
    def n_iter_(self) -> int:
        """EM iterations of the fitted mixture."""
        check_is_fitted(self)
        return self.mixture_.n_iter_

    def transform(self, X) -> np.ndarray:
        """X: (N, D) with NaN -> (N, D) with every NaN filled (observed entries kept)."""
        check_is_fitted(self)
        X = _validate_data(
            self, X, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan", reset=False
        )
        key = _seed_from(self.random_state)
        with _precision_scope(self.mixture_.means_.dtype):
            filled = impute(self.mixture_.params_, X, method=self.method, key=key)
        return np.asarray(filled, dtype=X.dtype)
