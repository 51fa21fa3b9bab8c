"""Input checks at the API boundary: plain-language errors before anything is traced.

Every public function validates its arguments here and raises ``ValueError`` or
``TypeError`` with a message that says what is wrong and how to fix it, before any
JAX program is traced or compiled.

Arrays that are JAX tracers (inside ``jit``/``vmap``) get only the checks their shape
and dtype allow; value checks (NaN, signs, sums, positive definiteness) run on
concrete inputs only. Under ``jit``/``vmap`` check ``FitResult.status`` instead.
"""

from __future__ import annotations

import difflib
import math
import numbers
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._covariance import COVARIANCE_TYPES, covariance_model
from jaxgmm._init import INIT_METHODS
from jaxgmm._jit import jit
from jaxgmm._params import FitResult, GaussianMixtureParams

# Fitted means resolve a feature only to np.spacing(|centre|) in the compute dtype; warn
# when that is coarser than this fraction of the feature's half-range.
_RESOLUTION_WARNING = 1e-2
# Headroom below the dtype's largest value for sums of N * D squared deviations.
_OVERFLOW_HEADROOM = 16.0


def is_traced(x) -> bool:
    """Whether ``x`` is an abstract value inside a JAX transformation."""
    return isinstance(x, jax.core.Tracer)


def compute_dtype(dtype) -> np.dtype:
    """float64 when x64 is enabled and the input is float64, else float32."""
    if np.dtype(dtype) == np.float64 and jax.config.jax_enable_x64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


# --------------------------------------------------------------------------- helpers


def _check_numeric_dtype(dtype, name: str) -> None:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise TypeError(
            f"{name} has complex dtype {dtype}; Gaussian mixtures need real numbers. "
            f"Pass the real part, or split real and imaginary parts into separate columns."
        )
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(
            f"{name} has non-numeric dtype {dtype}; convert it to floating point first, "
            f"e.g. np.asarray({name}, dtype=float)."
        )


def _as_numeric_numpy(value, name: str) -> np.ndarray:
    """``value`` as a numpy array of a real numeric dtype (object arrays converted)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an array of numbers, got a string.")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise TypeError(
            f"{name} could not be read as an array of numbers ({err}). Rows of different "
            f"lengths are a common cause."
        ) from None
    if array.dtype == object:
        try:
            array = array.astype(np.float64)
        except (ValueError, TypeError):
            raise TypeError(
                f"{name} holds Python objects that are not all numbers (dtype object); "
                f"convert it to floating point first, e.g. np.asarray({name}, dtype=float)."
            ) from None
    _check_numeric_dtype(array.dtype, name)
    return array


def _position(index: tuple) -> str:
    if len(index) == 2:
        return f"row {index[0]}, column {index[1]}"
    if len(index) == 1:
        return f"index {index[0]}"
    return f"index {index}"


def _check_finite(values: np.ndarray, name: str, advice: str, allow_nan: bool = False) -> None:
    """Raise if ``values`` holds NaN (unless ``allow_nan``) or +-inf, naming how many
    and where the first is."""
    if not np.issubdtype(values.dtype, np.inexact):
        return
    if isinstance(values, jax.Array):  # checked where the values live
        _check_finite_on_devices(values, name, advice, allow_nan)
        return
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n_bad = int(bad.sum())
        n_nan = 0 if allow_nan else int(np.isnan(values).sum())
        raise ValueError(
            f"{name} contains {n_bad} non-finite value{'s' if n_bad != 1 else ''} "
            f"({n_nan} NaN, {n_bad - n_nan} infinite); the first is at {_position(first)}. "
            f"{advice}"
        )


@partial(jax.jit, static_argnames="allow_nan")
def _all_finite(values: jax.Array, allow_nan: bool) -> jax.Array:
    """Whether no entry is +-inf (or NaN, unless ``allow_nan``); (...) -> () bool.

    One fused reduction: no (N, D) temporary (W4's 10M x 16 rows took 1.2 GiB more
    memory with eager ``jnp.all(jnp.isfinite(values))``).
    """
    return jnp.all(~jnp.isinf(values) if allow_nan else jnp.isfinite(values))


def _check_finite_on_devices(
    values: jax.Array, name: str, advice: str, allow_nan: bool = False
) -> None:
    """:func:`_check_finite` for a JAX array, sharded or spread over processes.

    Only reductions run on the devices (each device checks its own rows); their
    results are the same on every process, so all processes raise together.
    """
    if bool(_all_finite(values, allow_nan)):
        return
    bad = jnp.isinf(values) if allow_nan else ~jnp.isfinite(values)
    n_bad = int(jnp.sum(bad))
    n_nan = 0 if allow_nan else int(jnp.sum(jnp.isnan(values)))
    where = ""
    if values.ndim == 2:
        row = int(jnp.argmax(jnp.any(bad, axis=1)))
        in_row = bad & (jnp.arange(values.shape[0])[:, None] == row)
        where = f"; the first is at {_position((row, int(jnp.argmax(jnp.any(in_row, axis=0)))))}"
    raise ValueError(
        f"{name} contains {n_bad} non-finite value{'s' if n_bad != 1 else ''} "
        f"({n_nan} NaN, {n_bad - n_nan} infinite){where}. {advice}"
    )


_DATA_NON_FINITE_ADVICE = (
    "Missing values (NaN) need nan_policy: nan_policy='omit' drops the rows that contain "
    "them, nan_policy='marginalize' fits and scores them exactly over their observed "
    "entries (the default nan_policy='raise' refuses them). Infinite values are never "
    "accepted."
)
_INF_ADVICE = "Replace infinite values by finite numbers, or by NaN for missing values."


# ---------------------------------------------------------------------------- data


def check_data_array(X, name: str = "X", n_features: int | None = None, allow_nan: bool = False):
    """Validate (N, D) data, keeping the input's own precision.

    Args:
        X: array-like (N, D) of real numbers; object arrays of numbers are converted.
        name: the argument's name, for messages.
        n_features: if given, the D the data must have (e.g. the D seen at fit time).
        allow_nan: accept NaN (missing values); +-inf is still refused.

    Returns:
        A numpy array in the input's dtype (concrete input) or the tracer itself.

    Raises:
        TypeError: non-numeric, complex or unreadable input.
        ValueError: not 2-D, no rows or no columns, wrong D, NaN or +-inf values.
    """
    if is_traced(X) or isinstance(X, jax.Array):  # device arrays stay on the device
        _check_numeric_dtype(X.dtype, name)
        array = X
    else:
        array = _as_numeric_numpy(X, name)
    if array.ndim != 2:
        hint = ""
        if array.ndim == 1:
            hint = " Use X.reshape(-1, 1) for one feature, or X.reshape(1, -1) for one sample."
        raise ValueError(
            f"{name} must be 2-D with shape (n_samples, n_features), got shape "
            f"{tuple(array.shape)}.{hint}"
        )
    n_samples, d = array.shape
    if n_samples == 0 or d == 0:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}; it needs at least one sample (row) and "
            f"one feature (column)."
        )
    if n_features is not None and d != n_features:
        raise ValueError(
            f"{name} has {d} feature{'s' if d != 1 else ''}, but the model was fitted on "
            f"{n_features}. Pass data with the same columns as at fit time."
        )
    if not is_traced(array):
        if allow_nan and np.issubdtype(array.dtype, np.inexact):
            _check_finite(array, name, _INF_ADVICE, allow_nan=True)
        else:
            _check_finite(array, name, _DATA_NON_FINITE_ADVICE)
    return array


def _column_range(array) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (min, max) as float64 numpy arrays, without copying the data."""
    xp = jnp if isinstance(array, jax.Array) else np
    return (
        np.asarray(xp.min(array, axis=0)).astype(np.float64),
        np.asarray(xp.max(array, axis=0)).astype(np.float64),
    )


def _check_range(lo: np.ndarray, hi: np.ndarray, shape: tuple, dtype, centred: bool, name: str):
    """Raise if ``dtype`` cannot hold the data or EM's sums of squared deviations."""
    n_samples, d = shape
    dtype = np.dtype(dtype)
    largest = float(max(np.abs(lo).max(), np.abs(hi).max()))
    spread = float((hi - lo).max())  # bounds every deviation from the (weighted) mean
    limit = float(np.sqrt(np.finfo(dtype).max / (_OVERFLOW_HEADROOM * n_samples * d)))
    if spread > limit or (not centred and largest > float(np.finfo(dtype).max)):
        raise ValueError(
            f"{name} has values up to {largest:.3g} in magnitude, spread over a range of "
            f"{spread:.3g}; in {dtype} the sums of squares that EM needs would overflow "
            f"(the limit for {n_samples} x {d} data is about {limit:.3g}). Rescale {name} "
            f"first, e.g. (X - X.mean(axis=0)) / X.std(axis=0)."
        )


def _warn_if_unresolved(lo: np.ndarray, hi: np.ndarray, dtype, name: str) -> None:
    """Warn when ``dtype`` resolves numbers near the data only coarsely for their spread."""
    dtype = np.dtype(dtype)
    center = (lo + hi) / 2
    half_range = (hi - lo) / 2
    resolution = np.spacing(np.abs(center).astype(dtype)).astype(np.float64)
    coarse = (half_range > 0) & (resolution > _RESOLUTION_WARNING * half_range)
    if coarse.any():
        d = int(np.argmax(np.where(coarse, resolution / np.where(coarse, half_range, 1.0), 0)))
        warnings.warn(
            f"{name} feature {d} spans only {hi[d] - lo[d]:.3g} around {center[d]:.6g}, far "
            f"from the origin for its spread: {dtype} resolves numbers near {center[d]:.6g} "
            f"only to {resolution[d]:.3g}, so the fitted means (and later predictions) "
            f"cannot be finer than that. Centre and scale {name} before fitting, e.g. "
            f"(X - X.mean(axis=0)) / X.std(axis=0), or enable float64 with "
            f"jax.config.update('jax_enable_x64', True) and pass float64 data.",
            UserWarning,
            stacklevel=4,
        )


def check_data(X, name: str = "X", n_features: int | None = None):
    """Validate (N, D) data and convert it to the compute dtype.

    Args:
        X: array-like (N, D); integer, bool and float16 input is converted.
        name: the argument's name, for messages.
        n_features: if given, the D the data must have (e.g. the D seen at fit time).

    Returns:
        The data in the compute dtype (see :func:`compute_dtype`): a numpy array for
        host input (copied to the device once, by the compiled program that uses it),
        a JAX array for JAX input, the tracer itself for traced input.
    """
    if is_float_matrix(X, n_features) and _clearly_in_range(X, compute_dtype(X.dtype)):
        return X.astype(compute_dtype(X.dtype), copy=False)  # passes every check below
    array = check_data_array(X, name, n_features)
    dtype = compute_dtype(array.dtype)
    if not is_traced(array):
        _check_range(*_column_range(array), array.shape, dtype, False, name)
    xp = np if isinstance(array, np.ndarray) else jnp
    return xp.asarray(array, dtype=dtype)


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_float_matrix(X, n_features: int | None = None) -> bool:
    """Whether X is a plain float32/float64 ndarray of shape (N >= 1, D >= 1).

    With ``n_features``, D must equal it. Such data need only value checks; the fast
    paths of the scoring functions test this first and leave everything else (and
    every error message) to the full checks.
    """
    return (
        type(X) is np.ndarray
        and X.dtype in _FLOAT_DTYPES
        and X.ndim == 2
        and X.shape[0] >= 1
        and X.shape[1] >= 1
        and (n_features is None or X.shape[1] == n_features)
    )


def _clearly_in_range(X: np.ndarray, dtype) -> bool:
    """True when float data are finite and far enough inside :func:`_check_range`'s limit.

    Two whole-array reductions instead of per-column ones: NaN and +-inf show in the
    minimum or maximum, and every spread is at most twice the largest magnitude. False
    means "check exactly" (it does not mean the data fail).
    """
    lo, hi = float(X.min()), float(X.max())  # NaN propagates (without a warning)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    n_samples, n_features = X.shape
    limit = math.sqrt(float(np.finfo(dtype).max) / (_OVERFLOW_HEADROOM * n_samples * n_features))
    return 2.0 * max(hi, -lo) <= limit


def check_datasets(X: np.ndarray, W: np.ndarray, dtype, n_components: int) -> None:
    """Validate a stacked batch of data sets and weights, vectorised over the batch.

    Equivalent to :func:`check_data` and :func:`check_sample_weight` on every data set
    ``X[b]``, ``W[b]``, but one numpy pass for the whole batch; only a data set that
    fails a check is re-checked on its own, to raise that check's message.

    Args:
        X: (B, N, D) numeric numpy array; W: (B, N) numeric numpy weights.
        dtype: the compute dtype; n_components: K.

    Raises:
        TypeError, ValueError: as :func:`check_data` / :func:`check_sample_weight`, naming
            the data set ("data set b").
    """
    _check_numeric_dtype(X.dtype, "the data sets")
    _check_numeric_dtype(W.dtype, "sample_weight")
    n_batch, n_samples, n_features = X.shape
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        finite = np.isfinite(X).all(axis=(1, 2)) if np.issubdtype(X.dtype, np.inexact) else True
        # Conservative and fast (contiguous reductions): every spread is at most twice
        # the set's largest magnitude; a set failing this gets the exact check alone.
        largest = np.abs(X).max(axis=(1, 2)).astype(np.float64)
        limit = np.sqrt(np.finfo(dtype).max / (_OVERFLOW_HEADROOM * n_samples * n_features))
        in_range = 2 * largest <= limit
        weights_ok = np.isfinite(W).all(axis=1) & (W >= 0).all(axis=1)
        cast = W.astype(dtype)
        weights_ok &= np.isfinite(cast).all(axis=1)
        weights_ok &= (cast > 0).sum(axis=1) == (W > 0).sum(axis=1)
        weights_ok &= (cast > 0).sum(axis=1) >= n_components
    suspect = ~(finite & in_range & weights_ok)
    for b in np.flatnonzero(suspect):  # re-check alone: raises with the plain message
        check_data(X[b], name=f"data set {b}")
        try:
            check_sample_weight(W[b], n_samples, dtype, n_components)
        except ValueError as error:
            raise ValueError(f"data set {b}: {error}") from None


def centre_and_cast(X, sample_weight, dtype, name: str = "X"):
    """Cast validated data to the compute dtype, centring first when that saves precision.

    When concrete input is more precise than the compute dtype (float64 or int64 data
    fitted in float32, e.g. with x64 disabled), its weighted mean is subtracted in
    float64 *before* the cast, so data far from the origin keep their spread; the
    caller adds the returned offset back to the fitted means. Warns when the compute
    dtype resolves numbers near the data to worse than 1% of their half-range (the
    fitted means cannot be more precise than that).

    Args:
        X: (N, D) output of :func:`check_data_array`.
        sample_weight: (N,) validated weights.
        dtype: the compute dtype.
        name: the argument's name, for messages.

    Returns:
        (X in ``dtype``, offset: (D,) float64 numpy array or None). X stays where it
        was: a numpy array for numpy input (the compiled fit copies it to the device
        once, after padding), a JAX array for JAX input.
    """
    if is_traced(X):
        return jnp.asarray(X, dtype), None
    dtype = np.dtype(dtype)
    lo, hi = _column_range(X)
    precise_input = (
        np.dtype(X.dtype) != dtype and isinstance(X, np.ndarray) and not is_traced(sample_weight)
    )
    _check_range(lo, hi, X.shape, dtype, precise_input, name)
    if dtype.itemsize < 8:
        _warn_if_unresolved(lo, hi, dtype, name)
    if not precise_input:
        xp = np if isinstance(X, np.ndarray) else jnp
        return xp.asarray(X, dtype), None
    X64 = X.astype(np.float64, copy=False)
    weights = np.asarray(sample_weight, np.float64)
    offset = (weights @ X64) / weights.sum()
    return (X64 - offset).astype(dtype), offset


# ------------------------------------------------------------------------- options


def _check_int(value, name: str, minimum: int) -> None:
    if is_traced(value):
        raise TypeError(
            f"{name} must be a concrete Python int, got a traced value. It fixes array "
            f"shapes, so under jax.jit pass it as a static argument (static_argnames)."
        )
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _check_real(value, name: str, minimum: float) -> None:
    if is_traced(value):
        return
    if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0:
        if np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer):
            value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value}.")


def _check_choice(value, name: str, choices: tuple) -> None:
    if isinstance(value, str) and value in choices:
        return
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value.lower(), choices, n=1)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.{hint}")


def check_options(n_components, covariance_type, tol, reg_covar, max_iter, n_init, init) -> None:
    """Validate the scalar fit options; raises ValueError/TypeError with a fix."""
    _check_int(n_components, "n_components", minimum=1)
    _check_int(max_iter, "max_iter", minimum=0)
    _check_int(n_init, "n_init", minimum=1)
    _check_real(tol, "tol", minimum=0.0)
    _check_real(reg_covar, "reg_covar", minimum=0.0)
    _check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    _check_choice(init, "init", INIT_METHODS)


def check_key(key) -> None:
    """``key`` must be an int seed in [0, 2**63) or one JAX PRNG key (typed or raw uint32 (2,))."""
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"key must be an int seed or a JAX PRNG key, got {key!r}.")
    if isinstance(key, numbers.Integral):
        if not 0 <= key < 2**63:
            raise ValueError(f"key must be an int seed between 0 and 2**63 - 1, got {key}.")
        return
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise TypeError(
            f"key must be an int seed or a JAX PRNG key (jax.random.key(0)), got "
            f"{type(key).__name__}."
        )
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"key must be a single PRNG key, got an array of keys of shape {key.shape}; "
                f"pass one of them (restarts and fit_many derive their own keys from it)."
            )
        return
    if key.dtype != np.uint32 or key.shape != (2,):
        raise TypeError(
            f"a raw PRNG key must be a uint32 array of shape (2,), as made by "
            f"jax.random.PRNGKey(0); got dtype {key.dtype} and shape {key.shape}. Prefer an "
            f"int seed or jax.random.key(seed)."
        )


def check_chunk_size(chunk_size) -> None:
    """``chunk_size`` must be None or a positive int."""
    if chunk_size is not None:
        _check_int(chunk_size, "chunk_size", minimum=1)


def check_n_samples(n_samples: int, n_components: int) -> None:
    """At least as many points as components."""
    if n_samples < n_components:
        raise ValueError(
            f"Expected n_samples >= n_components, got n_samples = {n_samples} and "
            f"n_components = {n_components}. Use fewer components or more data."
        )


def check_sample_weight(sample_weight, n_samples: int, dtype, n_components: int):
    """Validate per-point weights (N,); None means all ones. Returns a JAX array.

    Weights must be finite and >= 0, and at least ``n_components`` of them > 0.
    """
    if sample_weight is None:  # on the host: no device program per row count
        return np.ones(n_samples, dtype)
    if not is_traced(sample_weight):
        sample_weight = _as_numeric_numpy(sample_weight, "sample_weight")
    else:
        _check_numeric_dtype(sample_weight.dtype, "sample_weight")
    if tuple(sample_weight.shape) != (n_samples,):
        raise ValueError(
            f"sample_weight must have shape ({n_samples},), one weight per row of X, got "
            f"shape {tuple(sample_weight.shape)}."
        )
    if not is_traced(sample_weight):
        _check_finite(sample_weight, "sample_weight", "Weights must be finite numbers >= 0.")
        n_negative = int((sample_weight < 0).sum())
        if n_negative:
            first = int(np.argmax(sample_weight < 0))
            raise ValueError(
                f"sample_weight has {n_negative} negative value(s), the first at index "
                f"{first}; weights must be >= 0 (use 0 to leave a point out)."
            )
        if not (sample_weight > 0).any():
            raise ValueError("sample_weight is all zero; at least one point needs weight > 0.")
        with np.errstate(over="ignore", under="ignore"):
            cast = sample_weight.astype(dtype)
        n_positive = int((cast > 0).sum())
        if n_positive < int((sample_weight > 0).sum()) or not np.isfinite(cast).all():
            raise ValueError(
                f"sample_weight has values (between {sample_weight.min():.3g} and "
                f"{sample_weight.max():.3g}) that {np.dtype(dtype)} cannot hold; rescale "
                f"the weights, e.g. sample_weight / sample_weight.max()."
            )
        if n_positive < n_components:
            raise ValueError(
                f"Only {n_positive} point(s) have positive sample_weight, fewer than "
                f"n_components = {n_components}. Use fewer components or more data."
            )
        sample_weight = cast
    return jnp.asarray(sample_weight, dtype)


# ------------------------------------------------------------- initial parameters


def _as_checked_array(value, name: str, shape: tuple, dtype):
    """Check shape and finiteness; concrete values come back as float64 numpy arrays."""
    if not is_traced(value):
        value = _as_numeric_numpy(value, name)
    else:
        _check_numeric_dtype(value.dtype, name)
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}.")
    if not is_traced(value):
        value = value.astype(np.float64)
        _check_finite(value, name, "Initial parameters must be finite.")
        if not np.isfinite(value.astype(dtype)).all():
            raise ValueError(
                f"{name} has values up to {np.abs(value).max():.3g}, too large for "
                f"{np.dtype(dtype)}; rescale the data and initial parameters."
            )
    return value


def check_initial_params(
    weights_init,
    means_init,
    precisions_init,
    covariance_type,
    n_components,
    n_features,
    dtype,
    means_offset=None,
):
    """Validate user-given initial parameters (scikit-learn's meaning and shapes).

    Args:
        weights_init: None or (K,) weights in [0, 1] summing to 1.
        means_init: None or (K, D) means.
        precisions_init: None or precision matrices shaped like the covariances:
            (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical; symmetric
            positive definite (full, tied) or positive (diag, spherical).
        covariance_type, n_components, n_features: the fit's settings.
        dtype: the compute dtype.
        means_offset: None or (D,) float64 offset subtracted from ``means_init`` (in
            float64, before the cast) when the data were centred at the boundary.

    Returns:
        (weights_init, means_init, precisions_init) as JAX arrays in ``dtype`` or None.
    """
    out = []
    if weights_init is not None:
        w = _as_checked_array(weights_init, "weights_init", (n_components,), dtype)
        if not is_traced(w):
            if (w < 0).any() or (w > 1).any():
                raise ValueError(
                    f"weights_init must lie in [0, 1], got min {w.min():.6g} and max {w.max():.6g}."
                )
            if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError(
                    f"weights_init must sum to 1, got sum {w.sum():.8f}. Divide it by its sum."
                )
        out.append(w)
    else:
        out.append(None)
    if means_init is not None:
        m = _as_checked_array(means_init, "means_init", (n_components, n_features), dtype)
        if means_offset is not None and not is_traced(m):
            m = m - means_offset
        out.append(m)
    else:
        out.append(None)
    if precisions_init is not None:
        shape = covariance_model(covariance_type).shape(n_components, n_features)
        p = _as_checked_array(precisions_init, f"precisions_init ({covariance_type})", shape, dtype)
        if not is_traced(p):
            name = f"precisions_init ({covariance_type})"
            covariance_model(covariance_type).check_precisions(p, np.dtype(dtype), name)
        out.append(p)
    else:
        out.append(None)
    return tuple(None if v is None else jnp.asarray(v, dtype) for v in out)


# ------------------------------------------------------------------ fitted params


@jit
def _params_summary(params: GaussianMixtureParams):
    """(all finite, min weight, weight sum, min precision-Cholesky diagonal)."""
    leaves = jax.tree_util.tree_leaves(params)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    chol = covariance_model(params.covariance_type).cholesky_diagonal(params.precisions_cholesky)
    return finite, jnp.min(params.weights), jnp.sum(params.weights), jnp.min(chol)


# Parameters with at most this many values are checked in NumPy on the host (a copy of
# a few kB) rather than by a compiled program, which would be compiled once per shape.
_HOST_SUMMARY_VALUES = 1 << 20


def _host_params_summary(params: GaussianMixtureParams) -> tuple:
    """:func:`_params_summary` computed in NumPy."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]
    finite = all(bool(np.isfinite(leaf).all()) for leaf in leaves)
    model = covariance_model(params.covariance_type)
    chol = model.cholesky_diagonal(np.asarray(params.precisions_cholesky))
    weights = np.asarray(params.weights)
    return finite, weights.min(), weights.sum(), chol.min()


def check_params(params) -> GaussianMixtureParams:
    """Validate fitted parameters given to the functional inference API.

    Args:
        params: :class:`GaussianMixtureParams`, or the :class:`FitResult` of
            :func:`jaxgmm.fit`.

    Returns:
        The :class:`GaussianMixtureParams`.

    Raises:
        TypeError: not parameters, or arrays of mixed or non-floating dtypes.
        ValueError: inconsistent shapes, a batch of models, or values that do not
            describe a mixture (non-finite, weights not summing to one, ...).
    """
    if isinstance(params, FitResult):
        params = params.params
    if getattr(params, _CHECKED, False):  # checked (or fitted) before: nothing can differ
        return params
    if not isinstance(params, GaussianMixtureParams):
        raise TypeError(
            "expected fitted parameters (GaussianMixtureParams or the FitResult of "
            f"jaxgmm.fit), got {type(params).__name__}. Fit a model first with "
            "jaxgmm.fit(X, n_components)."
        )
    _check_choice(params.covariance_type, "params.covariance_type", COVARIANCE_TYPES)
    means = params.means
    if np.ndim(means) == 3:
        raise ValueError(
            f"params hold a batch of {np.shape(means)[0]} models (e.g. from jaxgmm.fit_many); "
            "select one first: jax.tree_util.tree_map(lambda a: a[b], result.params)."
        )
    if np.ndim(means) != 2:
        raise ValueError(f"params.means must be (K, D), got shape {np.shape(means)}.")
    k, d = np.shape(means)
    expected = {
        "weights": (k,),
        "covariances": covariance_model(params.covariance_type).shape(k, d),
        "precisions_cholesky": covariance_model(params.covariance_type).shape(k, d),
    }
    for field, shape in expected.items():
        got = tuple(np.shape(getattr(params, field)))
        if got != shape:
            raise ValueError(
                f"params.{field} has shape {got}, but {params.covariance_type} parameters "
                f"with means of shape {(k, d)} need {shape}."
            )
    dtypes = {np.dtype(getattr(params, f).dtype) for f in ("means", *expected)}
    if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
        raise TypeError(
            f"params arrays must all have the same floating dtype, got "
            f"{sorted(str(t) for t in dtypes)}."
        )
    leaves = jax.tree_util.tree_leaves(params)
    if any(is_traced(leaf) for leaf in leaves):
        return params
    small = sum(np.size(leaf) for leaf in leaves) <= _HOST_SUMMARY_VALUES
    # (NumPy or concrete leaves, also when closed over by the user's jit: checked here.)
    summary = _host_params_summary(params) if small else None  # no program per shape
    if not all(isinstance(leaf, jax.Array) for leaf in leaves):
        params = jax.tree_util.tree_map(jax.device_put, params)
    if summary is None:
        summary = _params_summary(params)
        if any(is_traced(v) for v in summary):
            # Concrete params closed over by the user's jit/vmap/grad: the summary is
            # staged into their trace, so its values are unknown here; nothing to check.
            return params
    finite, min_weight, weight_sum, min_chol = (float(v) for v in summary)
    if not finite:
        raise ValueError(
            "params contain NaN or infinite values, so they do not describe a mixture. If "
            "they come from jaxgmm.fit under jit/vmap or from fit_many, check "
            "result.status: Status.NON_FINITE marks a fit that failed."
        )
    if min_weight < 0 or abs(weight_sum - 1.0) > 1e-3:
        raise ValueError(
            f"params.weights must be >= 0 and sum to 1, got min {min_weight:.6g} and sum "
            f"{weight_sum:.6g}."
        )
    if min_chol <= 0:
        raise ValueError(
            "params.precisions_cholesky must have a strictly positive diagonal (upper "
            "Cholesky factors of the precisions, as scikit-learn's precisions_cholesky_)."
        )
    return mark_checked(params)


# Attribute set on a GaussianMixtureParams object whose values passed check_params (or
# that a successful fit made): later calls skip the value checks and their device
# round trip. The arrays of a frozen params object never change, so neither does the
# verdict.
_CHECKED = "_jaxgmm_values_checked"


def mark_checked(params: GaussianMixtureParams) -> GaussianMixtureParams:
    """Record that ``params`` (concrete JAX arrays) describe a valid mixture; returns it."""
    object.__setattr__(params, _CHECKED, True)
    return params


# ------------------------------------------------------------ missing values, noise

NAN_POLICIES = ("raise", "omit", "marginalize")


def check_nan_policy(nan_policy) -> None:
    """Raise ValueError unless ``nan_policy`` is one of :data:`NAN_POLICIES`."""
    if not isinstance(nan_policy, str) or nan_policy not in NAN_POLICIES:
        raise ValueError(
            f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}: 'raise' refuses "
            "NaN, 'omit' drops rows with any NaN, 'marginalize' uses every observed entry "
            "(exact EM for incomplete data)."
        )


def check_concrete_for_nan_policy(values, nan_policy: str, noise) -> None:
    """Raise TypeError for traced or row-sharded data with missing-value options.

    ``nan_policy`` other than ``"raise"`` and noise covariances look at the values of
    X on the host, so they need concrete, unsharded arrays.
    """
    if nan_policy == "raise" and noise is None:
        return
    what = "noise_covariances" if noise is not None else f"nan_policy={nan_policy!r}"
    if any(is_traced(v) for v in jax.tree_util.tree_leaves(values)):
        raise TypeError(
            f"{what} needs concrete data: it finds the missing entries on the host, so it "
            "cannot run inside jax.jit, jax.vmap or jax.grad. Call it outside, or fill "
            "the missing values first."
        )


def nan_rows(X) -> np.ndarray:
    """(N,) bool: rows of concrete (N, D) data with at least one NaN."""
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.inexact):
        return np.zeros(X.shape[0], bool)
    return np.isnan(X).any(axis=1)


def omit_nan_rows(X, name: str = "X", *others):
    """Drop the rows of X that hold NaN, warning with their count.

    Args:
        X: (N, D) concrete data; name: for messages; others: None or arrays with a
            leading (N,) axis (weights, noise) to drop the same rows from.

    Returns:
        (X kept, *others kept); raises ValueError when no row is left.
    """
    drop = nan_rows(X)
    n_drop = int(drop.sum())
    if n_drop == 0:
        return (X, *others)
    if n_drop == X.shape[0]:
        raise ValueError(
            f"Every row of {name} contains NaN, so nan_policy='omit' leaves no data; use "
            "nan_policy='marginalize' to use the observed entries of each row."
        )
    warnings.warn(
        f"nan_policy='omit': dropped {n_drop} of {X.shape[0]} rows of {name} that contain NaN.",
        UserWarning,
        stacklevel=3,
    )
    keep = ~drop
    kept = [None if a is None else (np.asarray(a)[keep]) for a in others]
    return (np.asarray(X)[keep], *kept)


def missing_mask(X, sample_weight, name: str = "X"):
    """The observed-entry mask of data with NaN, and the data with NaN filled.

    Missing entries are filled with their column's weighted mean of observed entries
    (so passes that ignore the mask, such as centring, see the observed means), and
    rows with no observed entry get weight zero.

    Args:
        X: (N, D) concrete data (NaN = missing); sample_weight: (N,) checked weights.

    Returns:
        (X filled, mask (N, D) bool True where observed, or None when nothing is
        missing, sample_weight with empty rows zeroed).

    Raises:
        ValueError: a column has no observed entry (with positive weight).
    """
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.inexact):
        return X, None, sample_weight
    observed = ~np.isnan(X)
    if observed.all():
        return X, None, sample_weight
    weights = np.asarray(sample_weight, np.float64)
    column_weight = weights @ observed
    empty = np.flatnonzero(column_weight <= 0)
    if empty.size:
        raise ValueError(
            f"{name} column{'s' if empty.size > 1 else ''} {', '.join(map(str, empty[:10]))} "
            f"{'have' if empty.size > 1 else 'has'} no observed entry (all NaN, or only in "
            "zero-weight rows), so nothing can be learnt about "
            f"{'them' if empty.size > 1 else 'it'}. Drop such columns first."
        )
    means = (weights @ np.where(observed, X, 0.0).astype(np.float64)) / column_weight
    filled = np.where(observed, X, means.astype(X.dtype))
    weight = np.where(observed.any(axis=1), np.asarray(sample_weight), 0)
    return filled, observed, weight.astype(np.asarray(sample_weight).dtype)


def check_noise_covariances(noise, n_samples: int, n_features: int, covariance_type: str, dtype):
    """Validate known per-row measurement-noise covariances.

    Args:
        noise: (N, D) diagonal noise variances or (N, D, D) noise covariance matrices,
            symmetric non-negative definite, finite.
        n_samples, n_features: N and D of the data; covariance_type: the model's.
        dtype: the compute dtype.

    Returns:
        The noise as a numpy array in ``dtype``.

    Raises:
        ValueError: wrong shape, NaN/inf, negative variances, non-symmetric or
            indefinite matrices, or a covariance type that cannot deconvolve this noise.
    """
    if is_traced(noise):
        raise TypeError("noise_covariances must be a concrete array, not a traced value.")
    noise = _as_numeric_numpy(noise, "noise_covariances").astype(np.float64)
    diagonal_shape, full_shape = (n_samples, n_features), (n_samples, n_features, n_features)
    if noise.shape not in (diagonal_shape, full_shape):
        raise ValueError(
            f"noise_covariances must have shape {diagonal_shape} (one diagonal of noise "
            f"variances per row) or {full_shape} (one noise covariance matrix per row), got "
            f"{noise.shape}."
        )
    _check_finite(noise, "noise_covariances", "Noise covariances must be finite.")
    diagonal = noise.ndim == 2
    supported = covariance_model(covariance_type).noise_kinds
    if ("diagonal" if diagonal else "full") not in supported:
        need = (
            "covariance_type='full' or 'diag' with diagonal (N, D) noise"
            if diagonal
            else "covariance_type='full' (or diagonal (N, D) noise with 'diag')"
        )
        raise ValueError(
            f"Measurement noise (extreme deconvolution) of shape {noise.shape} is not "
            f"supported with covariance_type={covariance_type!r}: use {need}."
        )
    if diagonal:
        if (noise < 0).any():
            first = tuple(int(i) for i in np.argwhere(noise < 0)[0])
            raise ValueError(
                f"noise_covariances has {int((noise < 0).sum())} negative variance(s), the "
                f"first at {_position(first)}; noise variances must be >= 0."
            )
        return noise.astype(dtype)
    asymmetry = np.abs(noise - np.swapaxes(noise, 1, 2)).max(axis=(1, 2))
    scale = np.abs(noise).max(axis=(1, 2))
    bad = np.flatnonzero(asymmetry > 1e-8 * np.maximum(scale, 1e-300))
    if bad.size:
        raise ValueError(
            f"noise_covariances matrix {bad[0]} is not symmetric ({bad.size} such rows); "
            "pass (S + S.swapaxes(1, 2)) / 2."
        )
    lowest = np.linalg.eigvalsh(noise).min(axis=1)
    bad = np.flatnonzero(lowest < -1e-8 * np.maximum(scale, 1e-300))
    if bad.size:
        raise ValueError(
            f"noise_covariances matrix {bad[0]} has a negative eigenvalue "
            f"({lowest[bad[0]]:.3g}); noise covariances must be non-negative definite "
            f"({bad.size} such rows)."
        )
    return noise.astype(dtype)
