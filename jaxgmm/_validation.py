"""Input checks at the API boundary: plain-language errors before anything is traced.

Arrays that are JAX tracers (inside ``jit``/``vmap``) get only the checks their shape
and dtype allow; value checks (NaN, signs, sums) run on concrete inputs.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np

from jaxgmm._init import INIT_METHODS
from jaxgmm._params import COVARIANCE_TYPES


def is_traced(x) -> bool:
    """Whether ``x`` is an abstract value inside a JAX transformation."""
    return isinstance(x, jax.core.Tracer)


def compute_dtype(dtype) -> np.dtype:
    """float64 when x64 is enabled and the input is float64, else float32."""
    if np.dtype(dtype) == np.float64 and jax.config.jax_enable_x64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


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


def _check_finite(values: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n_nan = int(np.isnan(values).sum())
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) ({n_nan} NaN, "
            f"{int(bad.sum()) - n_nan} infinite); the first is at index {first}. "
            f"Remove or impute those entries before fitting."
        )


def check_data(X, name: str = "X", n_features: int | None = None):
    """Validate (N, D) data and convert it to the compute dtype.

    Args:
        X: array-like (N, D); integer, bool and float16 input is converted.
        name: the argument's name, for messages.
        n_features: if given, the D the data must have (e.g. the D seen at fit time).

    Returns:
        The data as a JAX array (concrete input) or the tracer (traced input), in the
        compute dtype (see :func:`compute_dtype`).
    """
    if is_traced(X):
        _check_numeric_dtype(X.dtype, name)
        array = X
    else:
        if isinstance(X, (str, bytes)):
            raise TypeError(f"{name} must be a 2-D array of numbers, got a string.")
        try:
            array = np.asarray(X)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{name} could not be read as an array of numbers: {err}") from None
        _check_numeric_dtype(array.dtype, name)
    if array.ndim != 2:
        hint = " Use X.reshape(-1, 1) for a single feature." if array.ndim == 1 else ""
        raise ValueError(
            f"{name} must be 2-D with shape (n_samples, n_features), got shape "
            f"{tuple(array.shape)}.{hint}"
        )
    n_samples, d = array.shape
    if n_samples == 0 or d == 0:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}; it needs at least one sample and one feature."
        )
    if n_features is not None and d != n_features:
        raise ValueError(
            f"{name} has {d} features, but the model was fitted on {n_features}. Pass data "
            f"with the same columns as at fit time."
        )
    dtype = compute_dtype(array.dtype)
    if not is_traced(array):
        array = array.astype(dtype, copy=False)
        _check_finite(array, name)
    return jax.numpy.asarray(array, dtype=dtype)


def check_options(n_components, covariance_type, tol, reg_covar, max_iter, n_init, init) -> None:
    """Validate the scalar fit options; raises ValueError/TypeError with a fix."""
    _check_int(n_components, "n_components", minimum=1)
    _check_int(max_iter, "max_iter", minimum=0)
    _check_int(n_init, "n_init", minimum=1)
    _check_real(tol, "tol", minimum=0.0)
    _check_real(reg_covar, "reg_covar", minimum=0.0)
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}."
        )
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}.")


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _check_real(value, name: str, minimum: float) -> None:
    if is_traced(value):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value}.")


def check_n_samples(n_samples: int, n_components: int) -> None:
    """At least as many points as components."""
    if n_samples < n_components:
        raise ValueError(
            f"Expected n_samples >= n_components, got n_samples = {n_samples} and "
            f"n_components = {n_components}. Use fewer components or more data."
        )


def check_sample_weight(sample_weight, n_samples: int, dtype, n_components: int):
    """Validate per-point weights (N,); None means all ones. Returns a JAX array."""
    if sample_weight is None:
        return jax.numpy.ones(n_samples, dtype)
    if not is_traced(sample_weight):
        sample_weight = np.asarray(sample_weight)
        _check_numeric_dtype(sample_weight.dtype, "sample_weight")
    if sample_weight.shape != (n_samples,):
        raise ValueError(
            f"sample_weight must have shape ({n_samples},), one weight per row of X, got "
            f"shape {tuple(sample_weight.shape)}."
        )
    if not is_traced(sample_weight):
        sample_weight = sample_weight.astype(dtype)
        _check_finite(sample_weight, "sample_weight")
        if (sample_weight < 0).any():
            raise ValueError(
                f"sample_weight has {int((sample_weight < 0).sum())} negative value(s); "
                f"weights must be >= 0."
            )
        n_positive = int((sample_weight > 0).sum())
        if n_positive == 0:
            raise ValueError("sample_weight is all zero; at least one point needs weight > 0.")
        if n_positive < n_components:
            raise ValueError(
                f"Only {n_positive} point(s) have positive sample_weight, fewer than "
                f"n_components = {n_components}. Use fewer components or more data."
            )
    return jax.numpy.asarray(sample_weight, dtype)


def _covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


def _as_checked_array(value, name: str, shape: tuple, dtype):
    if not is_traced(value):
        value = np.asarray(value)
        _check_numeric_dtype(value.dtype, name)
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}.")
    if not is_traced(value):
        value = value.astype(np.float64)
        _check_finite(value, name)
    return value


def check_initial_params(
    weights_init,
    means_init,
    precisions_init,
    covariance_type,
    n_components,
    n_features,
    dtype,
):
    """Validate user-given initial parameters (scikit-learn's meaning and shapes).

    Returns:
        (weights_init, means_init, precisions_init) as JAX arrays in ``dtype`` or None.
    """
    out = []
    if weights_init is not None:
        w = _as_checked_array(weights_init, "weights_init", (n_components,), dtype)
        if not is_traced(w):
            if (w < 0).any() or (w > 1).any():
                raise ValueError(
                    f"weights_init must lie in [0, 1], got min {w.min()} and max {w.max()}."
                )
            if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError(
                    f"weights_init must sum to 1, got sum {w.sum():.8f}. Divide it by its sum."
                )
        out.append(w)
    else:
        out.append(None)
    if means_init is not None:
        out.append(_as_checked_array(means_init, "means_init", (n_components, n_features), dtype))
    else:
        out.append(None)
    if precisions_init is not None:
        shape = _covariance_shape(covariance_type, n_components, n_features)
        p = _as_checked_array(precisions_init, f"precisions_init ({covariance_type})", shape, dtype)
        if not is_traced(p):
            _check_precisions(p, covariance_type)
        out.append(p)
    else:
        out.append(None)
    return tuple(None if v is None else jax.numpy.asarray(v, dtype) for v in out)


def _check_precisions(precisions: np.ndarray, covariance_type: str) -> None:
    if covariance_type in ("diag", "spherical"):
        if (precisions <= 0).any():
            raise ValueError(
                f"precisions_init ({covariance_type}) must be strictly positive; "
                f"{int((precisions <= 0).sum())} value(s) are <= 0."
            )
        return
    matrices = precisions[None] if covariance_type == "tied" else precisions
    for k, matrix in enumerate(matrices):
        if not np.allclose(matrix, matrix.T, rtol=1e-7, atol=1e-10):
            raise ValueError(
                f"precisions_init ({covariance_type}) matrix {k} is not symmetric; "
                f"pass (P + P.T) / 2."
            )
        if np.linalg.eigvalsh(matrix).min() <= 0:
            raise ValueError(
                f"precisions_init ({covariance_type}) matrix {k} is not positive definite; "
                f"every precision matrix must have strictly positive eigenvalues."
            )
