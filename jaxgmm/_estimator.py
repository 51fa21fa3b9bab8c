"""``jaxgmm.GaussianMixture``: scikit-learn's estimator contract on top of the functional API.

This module needs scikit-learn (``pip install "jaxgmm[sklearn]"``); the rest of jaxgmm
does not. It is imported lazily by ``jaxgmm.__getattr__``.

Precision: the estimator computes in the dtype of the data it is given, as
scikit-learn does: float32 input in float32, float64 (and integer) input in float64.
For float64 input it turns on 64-bit JAX types only for the duration of the call with
the thread-local ``jax.enable_x64`` context, so the user's global
``jax_enable_x64`` setting is never changed. Pass float32 data to compute in float32
(much faster on most GPUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import time
import warnings

import jax
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from jaxgmm._covariance import COVARIANCE_TYPES, covariance_model
from jaxgmm._fit import fit as _fit
from jaxgmm._fit import host_results
from jaxgmm._inference import _evaluate as _evaluate_functional
from jaxgmm._inference import count_parameters as _count_parameters
from jaxgmm._inference import evaluate_checked as _evaluate_checked
from jaxgmm._inference import sample as _sample
from jaxgmm._inference import score as _score
from jaxgmm._init import INIT_METHODS
from jaxgmm._online import online_em as _online_em
from jaxgmm._options import DEFAULTS, MATMUL_PRECISIONS
from jaxgmm._params import (
    ARRAY_FIELDS,
    FitResult,
    GaussianMixtureParams,
    Status,
    arrays_on_device,
)
from jaxgmm._sharding import leading_axis_sharding
from jaxgmm._validation import NAN_POLICIES, mark_checked
from jaxgmm._validation import check_data_array as _check_data_array
from jaxgmm._validation import check_params as _check_params
from jaxgmm._validation import check_sample_weight as _check_sample_weight
from jaxgmm._validation import is_float_matrix as _is_float_matrix

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)


try:  # jax >= 0.6
    _x64_scope = jax.enable_x64
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental import enable_x64 as _x64_scope

_MAX_SEED = 2**32 - 1


class InvalidParameterError(ValueError, TypeError):
    """A constructor parameter has an invalid value or type.

    Subclasses both ValueError and TypeError, like scikit-learn's error of the same
    name, so ``except ValueError`` catches it for either kind of mistake.
    """


def _precision_scope(dtype) -> contextlib.AbstractContextManager:
    """Thread-local 64-bit JAX types while computing on float64 data; else no-op."""
    if np.dtype(dtype) == np.float64:
        return _x64_scope(True)
    return contextlib.nullcontext()


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_array_like(value) -> bool:
    has_array_protocol = (
        hasattr(value, "__len__") or hasattr(value, "shape") or hasattr(value, "__array__")
    )
    return has_array_protocol and not np.isscalar(value)


def _int_at_least(minimum: int):
    def check(value) -> bool:
        return _is_int(value) and value >= minimum

    return check, f"an int >= {minimum}"


def _finite_real_at_least(minimum: float):
    def check(value) -> bool:
        return _is_real(value) and bool(np.isfinite(value)) and value >= minimum

    return check, f"a finite real number >= {minimum}"


def _one_of(options: tuple[str, ...]):
    def check(value) -> bool:
        return isinstance(value, str) and value in options

    return check, f"one of {list(options)}"


def _random_state_ok(value) -> bool:
    if value is None or isinstance(value, np.random.RandomState):
        return True
    return _is_int(value) and 0 <= value <= _MAX_SEED


def _array_or_none(value) -> bool:
    return value is None or _is_array_like(value)


# name -> (predicate, description of what is accepted). Mirrors the values scikit-learn
# 1.9's GaussianMixture accepts (bools count as ints, as in scikit-learn).
_PARAMETER_RULES = {
    "n_components": _int_at_least(1),
    "covariance_type": _one_of(COVARIANCE_TYPES),
    "tol": _finite_real_at_least(0.0),
    "reg_covar": _finite_real_at_least(0.0),
    "max_iter": _int_at_least(0),
    "n_init": _int_at_least(1),
    "init_params": _one_of(INIT_METHODS),
    "matmul_precision": _one_of(MATMUL_PRECISIONS),
    "nan_policy": _one_of(NAN_POLICIES),
    "weights_init": (_array_or_none, "an array-like of shape (n_components,) or None"),
    "means_init": (_array_or_none, "an array-like of shape (n_components, n_features) or None"),
    "precisions_init": (_array_or_none, "an array-like or None"),
    "random_state": (
        _random_state_ok,
        f"None, an int in [0, {_MAX_SEED}] or a numpy.random.RandomState",
    ),
    "warm_start": (_is_bool, "a bool"),
    "verbose": (lambda v: _is_bool(v) or (_is_int(v) and v >= 0), "a bool or an int >= 0"),
    "verbose_interval": _int_at_least(1),
}


def _seed_from(random_state) -> int:
    """An int seed for a JAX key: the int itself, or one drawn from a RandomState.

    ``None`` draws from NumPy's global RandomState, as scikit-learn does, so
    ``np.random.seed`` makes unseeded fits reproducible.
    """
    if _is_int(random_state):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, _MAX_SEED, dtype=np.int64))


# Above this many values the finiteness test first sums (one fast pass, no mask).
_SUM_FIRST_SIZE = 4096


def _is_plain_matrix(X, n_features: int | None, nan_policy: str) -> bool:
    """Whether ``validate_data`` would accept X unchanged: a float32/float64 ndarray of
    shape (N >= 1, ``n_features``) without infinity, and without NaN unless
    ``nan_policy`` allows it.

    NumPy tests only, no copy: the estimator's predictions skip scikit-learn's
    ``validate_data`` (tens of microseconds) for such input. False means "not sure":
    the caller then validates with scikit-learn, which raises its own errors.
    """
    if n_features is None or not _is_float_matrix(X, n_features):
        return False
    if nan_policy != "raise":
        return not np.isinf(X).any()
    if X.size > _SUM_FIRST_SIZE:
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(X.sum()):  # NaN and inf propagate; an overflow checks exactly
                return True
    return bool(np.isfinite(X).all())


def _to_numpy(value, dtype) -> np.ndarray:
    return np.asarray(value).astype(dtype, copy=False)


def _device_dtype(dtype) -> np.dtype:
    """The dtype a fitted attribute of ``dtype`` has on the device: float32 for float64
    without ``jax_enable_x64``."""
    dtype = np.dtype(dtype)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        return np.dtype(np.float32)
    return dtype


def _device_value(value: np.ndarray) -> np.ndarray:
    """A fitted attribute in the dtype it has on the device in the current precision
    (cast by NumPy: ``jnp.asarray`` compiles a small conversion per shape)."""
    value = np.asarray(value)
    return value.astype(_device_dtype(value.dtype), copy=False)


class _FittedParams:
    """The fitted model for the functional API, and the attributes it was made from.

    Fits read their results on the host (:func:`jaxgmm._fit.host_results`); the
    parameters go to the device in one transfer when a prediction first needs them,
    not after every fit (a model-selection loop scores only some fits, and tiny models
    are scored from a padded copy of their own). Equality is identity, so that filling
    the cache is not a change of the estimator's ``__dict__`` (scikit-learn checks that
    predictions leave it unchanged).
    """

    def __init__(self, source: tuple, params: GaussianMixtureParams):
        self._source = source
        self._params = params

    def made_from(self, source: tuple) -> bool:
        """Whether these parameters hold exactly the arrays (and precision) ``source``."""
        return len(source) == len(self._source) and all(
            a is b for a, b in zip(source, self._source, strict=True)
        )

    def stored(self) -> GaussianMixtureParams:
        """The parameters as they are now: NumPy arrays, or JAX arrays once moved."""
        return self._params

    def on_device(self) -> GaussianMixtureParams:
        """The parameters as JAX arrays (moved there, in one transfer, on first use)."""
        params = self._params
        if not arrays_on_device(params):
            arrays = jax.device_put({name: getattr(params, name) for name in ARRAY_FIELDS})
            self._params = mark_checked(dataclasses.replace(params, **arrays))
        return self._params


def _precisions(precisions_cholesky: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precisions from their Cholesky factors, in NumPy (no compiled program)."""
    return covariance_model(covariance_type).precisions(np.asarray(precisions_cholesky))


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM in JAX, with scikit-learn's ``GaussianMixture`` API.

    The constructor parameters, defaults, fitted attributes and methods are those of
    :class:`sklearn.mixture.GaussianMixture`. Differences: the ``n_init`` restarts run
    in parallel in one compiled program; ``fit`` accepts ``sample_weight``; the fitted
    model is available to jaxgmm's functional API as :attr:`params_`; verbose output
    is printed after the compiled fit has finished. See the README for the full list
    of differences from scikit-learn.

    Args:
        n_components: K, the number of mixture components.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        tol: convergence threshold on the change of the mean log-likelihood.
        reg_covar: non-negative value added to the diagonal of every covariance.
        max_iter: maximum number of EM iterations per restart.
        n_init: number of restarts; the one with the best lower bound is kept.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or
            ``"random_from_data"``.
        weights_init: (K,) initial weights, or None.
        means_init: (K, D) initial means, or None.
        precisions_init: initial precisions shaped like the covariances ((K, D, D)
            full, (D, D) tied, (K, D) diag, (K,) spherical), or None.
        random_state: None, an int seed (the JAX key ``jax.random.key(seed)``, so
            ``random_state=s`` fits exactly like ``jaxgmm.fit(..., key=s)``) or a
            ``numpy.random.RandomState`` (an int seed is drawn from it per call).
        warm_start: if True, later calls to ``fit`` continue from the fitted
            parameters with a single restart.
        verbose: 0 silent, 1 per-iteration markers, >= 2 also log-likelihood changes.
        verbose_interval: iterations between two verbose messages.
        matmul_precision: ``"highest"`` (full float32 matrix products, default),
            ``"high"`` or ``"default"`` (TF32 on recent NVIDIA GPUs); jaxgmm only.
        nan_policy: what NaN entries of X mean, in ``fit`` and every scoring method:
            ``"raise"`` (default, scikit-learn's behaviour), ``"omit"`` (rows with NaN
            are dropped from the fit and the scores; their per-point outputs are NaN,
            label -1) or ``"marginalize"`` (exact EM over each row's observed
            entries; see :func:`jaxgmm.fit`); jaxgmm only.

    Attributes:
        weights_: (K,) mixture weights.
        means_: (K, D) component means.
        covariances_: covariances, shaped by ``covariance_type``.
        precisions_: inverse covariances, same shape.
        precisions_cholesky_: upper Cholesky factors of the precisions, same shape.
        converged_: whether the best restart converged.
        n_iter_: EM iterations of the best restart.
        lower_bound_: mean log-likelihood of the best restart's last E-step.
        lower_bounds_: (n_iter_,) lower bound at every iteration of the best restart.
        n_features_in_: D.
        feature_names_in_: (D,) column names, when fitted on a data frame with string
            column names.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = DEFAULTS.covariance_type,
        tol: float = DEFAULTS.tol,
        reg_covar: float = DEFAULTS.reg_covar,
        max_iter: int = DEFAULTS.max_iter,
        n_init: int = DEFAULTS.n_init,
        init_params: str = DEFAULTS.init,
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        matmul_precision: str = DEFAULTS.matmul_precision,
        nan_policy: str = DEFAULTS.nan_policy,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.matmul_precision = matmul_precision
        self.nan_policy = nan_policy

    def __sklearn_tags__(self):
        """scikit-learn's tags: NaN is accepted unless ``nan_policy="raise"``."""
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.nan_policy != "raise"
        return tags

    # ------------------------------------------------------------------ validation

    def _check_constructor_parameters(self) -> None:
        """Raise :class:`InvalidParameterError` for any parameter scikit-learn rejects."""
        for name, (is_valid, expected) in _PARAMETER_RULES.items():
            value = getattr(self, name)
            if not is_valid(value):
                raise InvalidParameterError(
                    f"GaussianMixture's parameter {name!r} must be {expected}; got {value!r}."
                )

    def _dtype(self) -> np.dtype:
        return self.means_.dtype

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y=None, sample_weight=None) -> GaussianMixture:
        """Fit the mixture by EM, keeping the best of ``n_init`` parallel restarts.

        Args:
            X: (N, D) data (array-like or data frame).
            y: ignored.
            sample_weight: (N,) non-negative per-point weights, or None for all ones.
                An integer weight w counts a point as if it appeared w times.

        Returns:
            The fitted estimator.
        """
        self._fit(X, sample_weight)
        return self

    def partial_fit(self, X, y=None, sample_weight=None) -> GaussianMixture:
        """One online EM update on a batch of rows (Cappé & Moulines' stepwise EM).

        The first call on an unfitted estimator initialises from that batch, as
        scikit-learn's ``MiniBatchKMeans`` does: a full :meth:`fit` on the batch (with
        this estimator's ``init_params``, ``n_init``, ``max_iter``, ...), then one
        online update on the same batch, whose step size is 1. Every later call does
        one update, ``s <- (1 - rho_t) s + rho_t s_hat(X)`` with ``rho_t = t ** -0.6``
        (t = 1, 2, ...), from the statistics of the previous calls. An estimator fitted
        by :meth:`fit` continues from its fitted parameters. For other step sizes use
        :func:`jaxgmm.online_em` directly.

        After each call ``n_iter_`` is the number of online updates, ``lower_bound_``
        (and the one entry of ``lower_bounds_``) the batch's mean log-likelihood under
        the parameters before the update, and ``converged_`` is False (online EM has
        no convergence test). Calling :meth:`fit` starts afresh.

        Args:
            X: (B, D) batch; D must match the first call's.
            y: ignored.
            sample_weight: (B,) non-negative per-point weights, or None.

        Returns:
            The updated estimator.
        """
        self._check_constructor_parameters()
        if self.nan_policy != "raise":
            raise ValueError(
                f"partial_fit (online EM) does not support nan_policy={self.nan_policy!r} "
                "yet; use fit, or drop the rows with NaN and set nan_policy='raise'."
            )
        if not hasattr(self, "means_"):
            X = self._fit(X, sample_weight)
        else:
            X = self._validated(X, reset=False)
        dtype = self._dtype()
        X = np.asarray(X).astype(dtype, copy=False)
        with _precision_scope(dtype):
            state = getattr(self, "_online_state", None)
            online = _online_em(
                int(self.n_components),
                covariance_type=self.covariance_type,
                reg_covar=float(self.reg_covar),
            )
            if state is None:
                state = online.init(self.params_)
            params, state = online.update(X, state, sample_weight)
            result = FitResult(
                params=params,
                lower_bound=state.log_likelihood,
                n_iter=state.count,
                converged=np.False_,
                status=np.int32(Status.MAX_ITER),
                history=state.log_likelihood[None],
                restart_lower_bounds=state.log_likelihood[None],
            )
            self._set_fitted(result, dtype)
        self.lower_bounds_ = np.asarray([self.lower_bound_])
        self._online_state = state
        return self

    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit the mixture, then return the most probable component of each point.

        Args:
            X: (N, D) data.
            y: ignored.
            sample_weight: (N,) per-point weights, or None.

        Returns:
            (N,) integer labels, identical to ``fit(X).predict(X)``.
        """
        X = self._fit(X, sample_weight)
        return self._predict_validated(X)

    def _fit(self, X, sample_weight) -> np.ndarray:
        """Validate, run the compiled fit, set the fitted attributes; returns the (N, D) data."""
        self._check_constructor_parameters()
        self.__dict__.pop("_online_state", None)  # partial_fit starts afresh after fit
        warm = bool(self.warm_start) and hasattr(self, "converged_")
        X = self._validated(X, reset=True)
        n_samples = X.shape[0]
        if n_samples < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components, got n_components = {self.n_components} "
                f"and n_samples = {n_samples}. Use fewer components or more data."
            )
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight)
        options = dict(
            covariance_type=self.covariance_type,
            tol=float(self.tol),
            reg_covar=float(self.reg_covar),
            max_iter=int(self.max_iter),
            init=self.init_params,
            sample_weight=sample_weight,
            matmul_precision=self.matmul_precision,
            nan_policy=self.nan_policy,
        )
        if warm:
            fitted_shape = self.means_.shape
            if fitted_shape != (self.n_components, X.shape[1]):
                raise ValueError(
                    f"warm_start=True continues from the fitted model, which has "
                    f"{fitted_shape[0]} components and {fitted_shape[1]} features, but "
                    f"n_components={self.n_components} and X has {X.shape[1]} features. "
                    f"Set warm_start=False to fit a new model."
                )
            inits = dict(
                weights_init=self.weights_,
                means_init=self.means_,
                precisions_init=self.precisions_,
            )
            n_init = 1
        else:
            inits = dict(
                weights_init=self.weights_init,
                means_init=self.means_init,
                precisions_init=self.precisions_init,
            )
            n_init = int(self.n_init)
        key = _seed_from(self.random_state)
        started = time.perf_counter()
        with _precision_scope(X.dtype), host_results():  # fitted attributes are NumPy
            result = None
            if warm and options["max_iter"] > 0:
                result = self._warm_first_iteration(X, key, options, inits)
            if result is None:
                result = _fit(X, int(self.n_components), n_init=n_init, key=key, **options, **inits)
            self._set_fitted(result, X.dtype)
        if self.verbose:
            self._print_verbose(result, time.perf_counter() - started)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "The best initialization did not converge within max_iter iterations. "
                "Increase max_iter or tol, try other init parameters, or check the data "
                "for degenerate points.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return X

    def _warm_first_iteration(self, X, key, options, inits) -> FitResult | None:
        """A warm restart's first iteration, when it already meets ``tol``.

        scikit-learn compares a warm restart's first lower bound with the previous
        ``lower_bound_``; the compiled loop starts from ``-inf`` instead. The first
        lower bound is the mean log-likelihood of the current parameters, so it is
        computed here: if it is within ``tol`` of the previous one, the fit is exactly
        one EM iteration (returned, marked converged); otherwise None, and the full
        compiled fit runs, whose first iteration can then not converge either.
        """
        first = float(
            _score(self.params_, X, options["sample_weight"], nan_policy=options["nan_policy"])
        )
        if not abs(first - float(self.lower_bound_)) < options["tol"]:
            return None
        result = _fit(X, int(self.n_components), key=key, **{**options, "max_iter": 1}, **inits)
        return dataclasses.replace(result, converged=np.True_)

    def _set_fitted(self, result: FitResult, dtype) -> None:
        """Copy a FitResult into the fitted attributes as NumPy arrays of ``dtype``."""
        params = result.params
        self.weights_ = _to_numpy(params.weights, dtype)
        self.means_ = _to_numpy(params.means, dtype)
        self.covariances_ = _to_numpy(params.covariances, dtype)
        self.precisions_cholesky_ = _to_numpy(params.precisions_cholesky, dtype)
        self.precisions_ = _precisions(self.precisions_cholesky_, self.covariance_type)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = np.asarray(result.lower_bound).astype(dtype)[()]
        self.lower_bounds_ = _to_numpy(result.history, dtype)[: self.n_iter_]
        self._restart_lower_bounds = _to_numpy(result.restart_lower_bounds, dtype)
        with _precision_scope(dtype):  # the scope every prediction runs in
            self._fitted_params = _FittedParams(self._params_source(), self._params_from(params))

    def _print_verbose(self, result: FitResult, seconds: float) -> None:
        """scikit-learn-style progress messages, printed after the compiled fit."""
        restarts = self._restart_lower_bounds
        best = int(np.argmax(restarts))
        if restarts.shape[0] > 1:
            print(
                f"Ran {restarts.shape[0]} initializations in parallel; final lower bounds: "
                + ", ".join(f"{b:.5f}" for b in restarts)
            )
        print(f"Initialization {best}")
        previous = -np.inf
        for iteration, bound in enumerate(self.lower_bounds_, start=1):
            if iteration % self.verbose_interval == 0:
                if self.verbose >= 2:
                    print(f"  Iteration {iteration}\t ll change {bound - previous:.5f}")
                else:
                    print(f"  Iteration {iteration}")
            previous = bound
        status = "converged" if self.converged_ else "did not converge"
        if self.verbose >= 2:
            print(
                f"Initialization {status}. time lapse {seconds:.5f}s (whole fit)\t "
                f"lower bound {self.lower_bound_:.5f}."
            )
        else:
            print(f"Initialization {status}.")

    # ------------------------------------------------------------------ jaxgmm interop

    @property
    def params_(self) -> GaussianMixtureParams:
        """The fitted model as :class:`jaxgmm.GaussianMixtureParams` for the functional API.

        Built from the fitted attributes with the current JAX settings, so with
        ``jax_enable_x64`` off it holds float32 arrays.

        Returns:
            Parameters with weights (K,), means (K, D) and covariance-shaped
            ``covariances`` / ``precisions_cholesky``.
        """
        self._check_fitted()
        fitted = self.__dict__.get("_fitted_params")
        current = self._params_source()
        if fitted is not None and fitted.made_from(current):
            return fitted.on_device()
        return self._build_params()

    def _params_source(self) -> tuple:
        """What :attr:`params_` is built from: the fitted arrays and the JAX precision."""
        x64 = bool(jax.config.jax_enable_x64)
        return (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_, x64)

    def _params_from(self, fitted: GaussianMixtureParams) -> GaussianMixtureParams:
        """:attr:`params_` as the fit returned them when they hold exactly the fitted
        attributes in the current precision (checked when made; on the device, or host
        arrays that :class:`_FittedParams` moves there on first use), else built from
        the attributes."""
        target = _device_dtype(self.means_.dtype)
        arrays = (fitted.weights, fitted.means, fitted.covariances, fitted.precisions_cholesky)
        if all(
            isinstance(a, (jax.Array, np.ndarray)) and a.dtype == target for a in arrays
        ) and all(
            a.dtype == self.means_.dtype
            for a in (self.weights_, self.covariances_, self.precisions_cholesky_)
        ):
            return _check_params(fitted)
        return self._build_params()

    def _build_params(self) -> GaussianMixtureParams:
        """:attr:`params_` from the fitted attributes (one transfer), values checked once."""
        arrays = {name: _device_value(getattr(self, name + "_")) for name in ARRAY_FIELDS}
        return _check_params(
            GaussianMixtureParams(**jax.device_put(arrays), covariance_type=self.covariance_type)
        )

    @classmethod
    def from_fit_result(cls, result: FitResult, **params) -> GaussianMixture:
        """A fitted estimator holding the outcome of :func:`jaxgmm.fit`.

        Args:
            result: a single-model :class:`FitResult` (not a batched one from
                ``fit_many``).
            **params: other constructor parameters; ``n_components`` and
                ``covariance_type`` are taken from ``result``.

        Returns:
            A fitted :class:`GaussianMixture` whose attributes are in the result's
            dtype and whose ``n_features_in_`` is D.
        """
        if not isinstance(result, FitResult):
            raise TypeError(f"expected a jaxgmm FitResult, got {type(result).__name__}.")
        if np.ndim(result.lower_bound) != 0:
            raise ValueError(
                "from_fit_result takes the result of a single fit; index a batched "
                "fit_many result first, e.g. jax.tree.map(lambda a: a[0], result)."
            )
        fitted = result.params
        for name in ("n_components", "covariance_type"):
            if name in params:
                raise TypeError(f"{name} is taken from the FitResult; do not pass it.")
        estimator = cls(
            n_components=fitted.n_components,
            covariance_type=fitted.covariance_type,
            max_iter=int(result.history.shape[0]),
            **params,
        )
        estimator._set_fitted(result, np.dtype(fitted.means.dtype))
        estimator.n_features_in_ = fitted.n_features
        return estimator

    # ------------------------------------------------------------------ inference

    def _check_fitted(self) -> None:
        """Raise scikit-learn's NotFittedError unless fitted (cheap once fitted)."""
        if "_fitted_params" not in self.__dict__:  # set by every fit; else ask sklearn
            check_is_fitted(self)

    def _check_data(self, X) -> np.ndarray:
        """Rows to score, validated as scikit-learn's ``validate_data`` would (same errors).

        A plain float NumPy matrix that passes every check is returned as is after a
        few NumPy tests; anything else (lists, data frames, other dtypes, wrong shapes,
        non-finite values, ...) goes through ``validate_data``, which converts it or
        raises scikit-learn's own error and warnings.
        """
        self._check_fitted()
        if _is_plain_matrix(X, getattr(self, "n_features_in_", None), self.nan_policy):
            if not hasattr(self, "feature_names_in_"):  # else: sklearn's name checks
                return X
        return self._validated(X, reset=False)

    def _validated(self, X, *, reset: bool):
        """scikit-learn's input validation; row-sharded JAX arrays stay where they are.

        A ``jax.Array`` split over devices along its rows is checked on the devices
        by jaxgmm (shape, dtype, finite values) instead of being copied to one host
        array, and fitted or scored shard by shard.
        """
        allow_nan = getattr(self, "nan_policy", "raise") != "raise"
        if leading_axis_sharding(X) is None:
            kwargs = dict(ensure_min_samples=2) if reset else {}
            if allow_nan:
                kwargs["ensure_all_finite"] = "allow-nan"
            return _validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], **kwargs)
        n_features = None if reset else self.n_features_in_
        X = _check_data_array(X, n_features=n_features, allow_nan=allow_nan)
        if reset:
            if X.shape[0] < 2:
                raise ValueError(f"Expected n_samples >= 2, got X with {X.shape[0]} row(s).")
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):  # a JAX array has no column names
                del self.feature_names_in_
        return X

    def _evaluate(self, X: np.ndarray, output: str, sample_weight=None):
        """One compiled program on rows that ``_check_data`` validated (no second check)."""
        dtype = self._dtype()
        with _precision_scope(dtype):
            if self.nan_policy != "raise":  # NaN-aware path of the functional API
                out = _evaluate_functional(self.params_, X, output, sample_weight, self.nan_policy)
                return out if output == "score" else np.asarray(out)
            if output == "score" and sample_weight is None:
                sample_weight = np.ones(X.shape[0], dtype)
            elif output == "score":
                sample_weight = _check_sample_weight(sample_weight, X.shape[0], dtype, 1)
            return _evaluate_checked(
                self._evaluation_params(), X, output, sample_weight, host_rows=True
            )

    def _evaluation_params(self) -> GaussianMixtureParams:
        """:attr:`params_` as the fit stored them: NumPy arrays until something needed
        them on the device. Scoring pads small models on the host and moves the copy
        once (:func:`jaxgmm._params.padded_components`), so a model scored once (a
        model-selection loop) is not moved to the device and read back first."""
        fitted = self.__dict__.get("_fitted_params")
        if fitted is not None and fitted.made_from(self._params_source()):
            return fitted.stored()
        return self.params_

    def _predict_validated(self, X: np.ndarray) -> np.ndarray:
        return self._evaluate(X, "predict").astype(np.intp)

    def predict(self, X) -> np.ndarray:
        """Most probable component of each point.

        Args:
            X: (N, D) data.

        Returns:
            (N,) integer labels.
        """
        return self._predict_validated(self._check_data(X))

    def predict_proba(self, X) -> np.ndarray:
        """Posterior probability of each component for each point.

        Args:
            X: (N, D) data.

        Returns:
            (N, K) responsibilities, rows summing to one.
        """
        return _to_numpy(self._evaluate(self._check_data(X), "predict_proba"), self._dtype())

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood of each point under the mixture.

        Args:
            X: (N, D) data.

        Returns:
            (N,) log p(x_n), in the dtype of the fitted model.
        """
        return _to_numpy(self._evaluate(self._check_data(X), "score_samples"), self._dtype())

    def score(self, X, y=None, sample_weight=None) -> float:
        """Mean log-likelihood per point (sample-weighted if weights are given).

        Args:
            X: (N, D) data.
            y: ignored.
            sample_weight: (N,) non-negative weights, or None.

        Returns:
            The mean log p(x_n) as a float (higher is better).
        """
        return self._score_validated(self._check_data(X), sample_weight)

    def _score_validated(self, X: np.ndarray, sample_weight=None) -> float:
        return float(self._evaluate(X, "score", sample_weight))

    def _n_parameters(self) -> int:
        """Number of free parameters of the fitted model."""
        check_is_fitted(self)
        return _count_parameters(*np.shape(self.means_), self.covariance_type)

    def bic(self, X) -> float:
        """Bayesian information criterion on X: (N, D) (lower is better)."""
        X = self._check_data(X)
        n_samples = self._scored_rows(X)
        log_lik = self._score_validated(X) * n_samples
        return -2.0 * log_lik + self._n_parameters() * float(np.log(n_samples))

    def aic(self, X) -> float:
        """Akaike information criterion on X: (N, D) (lower is better)."""
        X = self._check_data(X)
        log_lik = self._score_validated(X) * self._scored_rows(X)
        return -2.0 * log_lik + 2.0 * self._n_parameters()

    def _scored_rows(self, X) -> int:
        """Rows the score averages over (``nan_policy="omit"`` leaves NaN rows out)."""
        if self.nan_policy == "omit":
            return int((~np.isnan(np.asarray(X)).any(axis=1)).sum())
        return X.shape[0]

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw points from the fitted mixture.

        Uses ``random_state`` like ``fit``: an int seed gives the same points on
        every call.

        Args:
            n_samples: number of points M >= 1.

        Returns:
            X: (M, D) float64 points grouped by component (as scikit-learn), and
            labels: (M,) int64 component of each point.
        """
        check_is_fitted(self)
        if isinstance(n_samples, (bool, np.bool_)) or not _is_int(n_samples) or n_samples < 1:
            raise ValueError(
                f"n_samples must be an integer >= 1 (the number of points to draw); "
                f"got {n_samples!r}."
            )
        key = _seed_from(self.random_state)
        with _precision_scope(self._dtype()):
            points, labels = _sample(self.params_, int(n_samples), key)
        return np.asarray(points).astype(np.float64), np.asarray(labels).astype(np.int64)
