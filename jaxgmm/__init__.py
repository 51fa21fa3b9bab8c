"""jaxgmm: Gaussian mixture models fitted by expectation-maximisation in JAX."""

from jaxgmm._fit import fit, fit_many
from jaxgmm._inference import (
    aic,
    bic,
    n_parameters,
    predict,
    predict_proba,
    sample,
    score,
    score_samples,
)
from jaxgmm._params import COVARIANCE_TYPES, FitResult, GaussianMixtureParams, Status

__version__ = "0.1.0"

__all__ = [
    "COVARIANCE_TYPES",
    "FitResult",
    "GaussianMixtureParams",
    "Status",
    "aic",
    "bic",
    "fit",
    "fit_many",
    "n_parameters",
    "predict",
    "predict_proba",
    "sample",
    "score",
    "score_samples",
]
