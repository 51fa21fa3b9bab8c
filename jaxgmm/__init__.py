"""jaxgmm: Gaussian mixture models fitted by expectation-maximisation in JAX."""

import importlib.util as _importlib_util

from jaxgmm import compilation_cache, datasets
from jaxgmm._covariance import COVARIANCE_TYPES
from jaxgmm._fit import fit, fit_many
from jaxgmm._gradient import UnconstrainedParams, fit_gradient, from_unconstrained, to_unconstrained
from jaxgmm._impute import impute
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
from jaxgmm._online import OnlineEM, OnlineEMState, online_em
from jaxgmm._params import FitResult, GaussianMixtureParams, Status
from jaxgmm._sharding import shard_rows
from jaxgmm._stream import fit_stream
from jaxgmm.io import load, save

__version__ = "0.1.0"

__all__ = [
    "COVARIANCE_TYPES",
    "FitResult",
    "GaussianMixtureParams",
    "Status",
    "aic",
    "bic",
    "datasets",
    "fit",
    "fit_gradient",
    "fit_many",
    "impute",
    "fit_stream",
    "from_unconstrained",
    "to_unconstrained",
    "UnconstrainedParams",
    "load",
    "n_parameters",
    "online_em",
    "OnlineEM",
    "OnlineEMState",
    "predict",
    "predict_proba",
    "sample",
    "save",
    "score",
    "score_samples",
    "shard_rows",
]

# The scikit-learn estimator is optional: listed only when scikit-learn is installed,
# so that ``from jaxgmm import *`` works without it.
if _importlib_util.find_spec("sklearn") is not None:
    __all__ += ["GaussianMixture", "GaussianMixtureImputer"]


def __getattr__(name: str):
    """Import ``GaussianMixture`` lazily; it needs scikit-learn, the rest does not."""
    if name in ("GaussianMixture", "GaussianMixtureImputer"):
        try:
            from jaxgmm._estimator import GaussianMixture
            from jaxgmm._imputer import GaussianMixtureImputer
        except ImportError as err:
            if "sklearn" not in str(err):
                raise
            raise ImportError(
                f"jaxgmm.{name} needs scikit-learn, which is not installed. "
                'Install it with: pip install "jaxgmm[sklearn]" (the functional API, '
                "jaxgmm.fit and friends, works without it)."
            ) from err
        return GaussianMixture if name == "GaussianMixture" else GaussianMixtureImputer
    raise AttributeError(f"module 'jaxgmm' has no attribute {name!r}")


# Opt-in only: does nothing unless JAXGMM_COMPILATION_CACHE is set.
compilation_cache.enable_from_environment()
