"""Gradient fitting with optax: maximise the log-likelihood in unconstrained coordinates.

The mixture is written in coordinates where every value is allowed
(:class:`UnconstrainedParams`): weight logits, the means, and the precision Cholesky
factors with a log-diagonal (``full``, ``tied``) or their logs (``diag``,
``spherical``); each covariance model owns its part (``to_unconstrained`` /
``from_unconstrained`` in :mod:`jaxgmm._covariance`). The round trip is exact up to
the rounding of ``exp(log(.))``. :func:`fit_gradient` then runs any optax optimiser
on the negative mean log-likelihood, all steps in one compiled ``lax.scan``.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._covariance import covariance_model
from jaxgmm._fit import fit
from jaxgmm._init import positive_at_or_before
from jaxgmm._iterate import all_finite
from jaxgmm._jit import jit
from jaxgmm._keys import as_key
from jaxgmm._options import DEFAULTS, FitOptions
from jaxgmm._params import FitResult, GaussianMixtureParams, Status
from jaxgmm._validation import (
    _check_int,
    check_data,
    check_key,
    check_n_samples,
    check_params,
    check_sample_weight,
    is_traced,
)

DEFAULT_LEARNING_RATE = 0.02


class UnconstrainedParams(NamedTuple):
    """A mixture in coordinates where every real value is valid (an optax pytree).

    Attributes:
        logits: (K,) weights = softmax(logits).
        means: (K, D).
        cholesky: the precision Cholesky factors in the covariance model's
            unconstrained coordinates, shaped like ``precisions_cholesky``.
    """

    logits: jax.Array
    means: jax.Array
    cholesky: jax.Array


def to_unconstrained(params) -> UnconstrainedParams:
    """Unconstrained coordinates of a mixture (inverse of :func:`from_unconstrained`).

    Args:
        params: :class:`GaussianMixtureParams` (or a ``FitResult``) with positive weights.

    Returns:
        :class:`UnconstrainedParams` (logits = log weights).
    """
    params = check_params(params)
    model = covariance_model(params.covariance_type)
    return UnconstrainedParams(
        logits=jnp.log(params.weights),
        means=params.means,
        cholesky=model.to_unconstrained(params.precisions_cholesky),
    )


def from_unconstrained(raw: UnconstrainedParams, covariance_type: str) -> GaussianMixtureParams:
    """The mixture described by unconstrained coordinates.

    Args:
        raw: :class:`UnconstrainedParams`; any finite values.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.

    Returns:
        :class:`GaussianMixtureParams` with softmax weights and valid factors
        (covariances computed from them).
    """
    model = covariance_model(covariance_type)
    chol = model.from_unconstrained(raw.cholesky)
    return GaussianMixtureParams(
        weights=jax.nn.softmax(raw.logits),
        means=raw.means,
        covariances=model.covariances_from_precisions_cholesky(chol),
        precisions_cholesky=chol,
        covariance_type=covariance_type,
    )


def mean_log_likelihood(
    raw: UnconstrainedParams, X: jax.Array, sample_weight: jax.Array, covariance_type: str
) -> jax.Array:
    """() Weighted mean log-likelihood per point: :func:`weighted_log_likelihood_sum`
    (same arguments) over ``sum(sample_weight)``; differentiable in ``raw`` and ``X``."""
    total = weighted_log_likelihood_sum(raw, X, sample_weight, covariance_type)
    return total / jnp.sum(sample_weight)


def weighted_log_likelihood_sum(
    raw: UnconstrainedParams, X: jax.Array, sample_weight: jax.Array, covariance_type: str
) -> jax.Array:
    """Weighted log-likelihood summed over the rows; differentiable in ``raw`` and ``X``.

    Args:
        raw: unconstrained parameters; X: (N, D); sample_weight: (N,).
        covariance_type: the covariance model's name.

    Returns:
        () sum_n w_n log p(x_n).
    """
    model = covariance_model(covariance_type)
    log_prob = model.log_prob(X, raw.means, model.from_unconstrained(raw.cholesky))
    log_norm = jax.nn.logsumexp(log_prob + jax.nn.log_softmax(raw.logits), axis=1)
    return jnp.sum(sample_weight * log_norm)


def is_source(X) -> bool:
    """Whether ``X`` is read chunk by chunk: a path, a callable, or an array-like that
    is not a NumPy or JAX array (a zarr array, an h5py dataset)."""
    if isinstance(X, (str, os.PathLike)):
        return True
    if isinstance(X, (np.ndarray, jax.Array, list, tuple)):
        return False
    if all(hasattr(X, name) for name in ("shape", "dtype", "__getitem__")):
        return getattr(X, "ndim", len(X.shape)) == 2 and not hasattr(X, "__array_namespace__")
    return callable(X)


def _check_optimizer(optimizer):
    if optimizer is None:
        import optax

        return optax.adam(DEFAULT_LEARNING_RATE)
    methods = (getattr(optimizer, name, None) for name in ("init", "update"))
    if not all(callable(method) for method in methods):
        raise TypeError(
            "optimizer must be an optax GradientTransformation (with init and update), e.g. "
            f"optax.adam(0.02); got {type(optimizer).__name__}."
        )
    return optimizer


def weighted_draw_tables(weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """What :func:`weighted_rows` looks draws up in; (N,) -> ((N,), (N,) int32).

    Returns:
        The weights' prefix sums, and for each row the last row at or before it with
        positive weight (the first such row where none is before).
    """
    return jnp.cumsum(weight), positive_at_or_before(weight)


def weighted_rows(
    cumulative: jax.Array, positive_at_or_before: jax.Array, u: jax.Array
) -> jax.Array:
    """Inverse-CDF lookup of rows for ``u`` in [0, total); never a zero-weight row.

    Rounding can leave a zero-weight row a sliver of the prefix sums (``jnp.cumsum``'s
    outputs need not even be monotone), and ``u`` can round up to the total; such a
    draw goes to the last positive-weight row before it.

    Args:
        cumulative, positive_at_or_before: (N,) from :func:`weighted_draw_tables`;
        u: (T,) uniform draws times the total weight.

    Returns:
        (T,) int32 rows.
    """
    rows = jnp.searchsorted(cumulative, u, side="right")
    return positive_at_or_before[jnp.minimum(rows, cumulative.shape[0] - 1)]


def _optimise(optimizer, n_steps: int, batch_size: int | None, covariance_type: str):
    """The compiled optimisation: ``n_steps`` optax steps in one ``lax.scan``."""
    import optax

    def loss(raw, X, w):
        return -mean_log_likelihood(raw, X, w, covariance_type)

    value_and_grad = jax.value_and_grad(loss)

    @jit
    def run(raw, X, w, key):
        cumulative, positive_at_or_before = weighted_draw_tables(w)
        ones = jnp.ones((batch_size or 1,), X.dtype)

        def batch(step_key):
            if batch_size is None:
                return X, w
            # Rows drawn with replacement, with probability proportional to the weights.
            u = jax.random.uniform(step_key, (batch_size,), X.dtype) * cumulative[-1]
            return X[weighted_rows(cumulative, positive_at_or_before, u)], ones

        def step(carry, step_key):
            raw, opt_state, finite = carry
            value, grads = value_and_grad(raw, *batch(step_key))
            updates, new_opt_state = optimizer.update(grads, opt_state, raw)
            new_raw = optax.apply_updates(raw, updates)
            ok = finite & jnp.isfinite(value) & all_finite(new_raw)

            def keep(new, old):
                return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)

            carry = (keep(new_raw, raw), keep(new_opt_state, opt_state), ok)
            return carry, jnp.where(finite, value, jnp.nan)

        init = (raw, optimizer.init(raw), all_finite(raw))
        (raw, _, finite), history = jax.lax.scan(step, init, jax.random.split(key, n_steps))
        final = mean_log_likelihood(raw, X, w, covariance_type)
        return raw, finite, history, final

    return run


def fit_gradient(
    X,
    n_components: int,
    *,
    optimizer=None,
    n_steps: int = 1000,
    batch_size: int | None = None,
    covariance_type: str = DEFAULTS.covariance_type,
    reg_covar: float = DEFAULTS.reg_covar,
    init: str = DEFAULTS.init,
    key=0,
    weights_init=None,
    means_init=None,
    precisions_init=None,
    sample_weight=None,
    chunk_rows: int | None = None,
) -> FitResult:
    """Fit a Gaussian mixture by gradient ascent on the log-likelihood with optax.

    The start is :func:`jaxgmm.fit`'s initialisation with the same options (``init``,
    ``key``, ``reg_covar``, ``*_init``), so EM and gradient fitting from one start
    are comparable. The optimiser then minimises the negative (weighted) mean
    log-likelihood in unconstrained coordinates (:class:`UnconstrainedParams`),
    ``n_steps`` steps in one compiled ``lax.scan`` (compiled once per call: the
    optimiser is part of the program).

    Data larger than memory are read chunk by chunk when ``X`` is a source that
    :func:`jaxgmm.fit_stream` reads (a ``.npy`` path, an array-like with row slicing
    that is not a NumPy or JAX array, such as a zarr array or an h5py dataset, or a
    zero-argument callable returning an iterator of chunks): the start is
    ``fit_stream``'s initialisation, each step takes ``batch_size`` consecutive rows
    (in the source's order, cycling over it: shuffle a sorted file first) or, with
    ``batch_size=None``, the exact full-data gradient summed over one pass; only a
    few chunks are in memory at a time (:mod:`jaxgmm._gradient_stream`).

    Args:
        X: (N, D) data, fitted in float64 when x64 is enabled and X is float64,
            else float32; or a source, as above.
        n_components: K.
        optimizer: an optax ``GradientTransformation``; default ``optax.adam(0.02)``
            (a step of about 0.02 in the means' units and the log-factors: standardise X).
        n_steps: number of optimiser steps (>= 1).
        batch_size: None for full-batch gradients; else rows per step, drawn with
            replacement (probability proportional to ``sample_weight``) with keys
            derived from ``key``; at most N.
        covariance_type, reg_covar, init, key, weights_init, means_init,
            precisions_init, sample_weight: as in :func:`jaxgmm.fit`. ``reg_covar``
            only regularises the initialisation: gradient steps have no covariance
            floor.
        chunk_rows: for a source only: rows per chunk of its passes (initialisation,
            full-data steps, the final score); default as in :func:`jaxgmm.fit_stream`.

    Returns:
        A :class:`FitResult`: ``history`` (n_steps,) the loss (negative mean
        log-likelihood of that step's batch) before each step; ``lower_bound`` the
        weighted mean log-likelihood of the final parameters on all of X;
        ``n_iter`` = n_steps; ``converged`` False (there is no tolerance test);
        ``status`` ``MAX_ITER``, or ``NON_FINITE`` when a step produced non-finite
        values: the parameters are then the last finite ones, the later steps are
        skipped (their history entries NaN) and a warning is issued.

    Raises:
        ValueError, TypeError: invalid input, before anything is traced.
    """
    FitOptions(covariance_type, 0.0, reg_covar, 1, 1, init).check(n_components)
    _check_int(n_steps, "n_steps", minimum=1)
    optimizer = _check_optimizer(optimizer)
    check_key(key)
    # The start: fit's (or fit_stream's) initialisation with these options.
    start_options = dict(
        covariance_type=covariance_type,
        reg_covar=reg_covar,
        max_iter=0,
        init=init,
        key=key,
        weights_init=weights_init,
        means_init=means_init,
        precisions_init=precisions_init,
        sample_weight=sample_weight,
    )
    if is_source(X):
        if batch_size is not None:
            _check_int(batch_size, "batch_size", minimum=1)
        from jaxgmm._gradient_stream import fit_gradient_stream

        return fit_gradient_stream(
            X,
            n_components,
            optimizer=optimizer,
            n_steps=int(n_steps),
            batch_size=None if batch_size is None else int(batch_size),
            chunk_rows=chunk_rows,
            start_options=start_options,
        )
    if chunk_rows is not None:
        raise ValueError(
            "chunk_rows applies to sources read chunk by chunk (a .npy path, an array-like "
            "such as a zarr array, a callable); X here is an in-memory array."
        )
    data = check_data(X)
    if is_traced(data):
        raise TypeError("fit_gradient needs concrete X; it does not run under jit or vmap.")
    n_samples = data.shape[0]
    check_n_samples(n_samples, n_components)
    if batch_size is not None:
        _check_int(batch_size, "batch_size", minimum=1)
        if batch_size > n_samples:
            raise ValueError(
                f"batch_size must be at most the number of rows ({n_samples}), got "
                f"{batch_size}; use batch_size=None for full-batch gradients."
            )
    weights = check_sample_weight(sample_weight, n_samples, data.dtype, n_components)
    start = fit(X, n_components, **start_options).params
    dtype = start.means.dtype
    run = _optimise(optimizer, int(n_steps), batch_size, covariance_type)
    batch_key = jax.random.split(as_key(key))[1]
    # optax's own code is not written for strict dtype promotion (e.g. adam's bias
    # correction raises a float to an int32 power), so the user's setting is relaxed for
    # this trace; jaxgmm's part is strict-clean either way.
    with jax.default_matmul_precision("highest"), jax.numpy_dtype_promotion("standard"):
        X_device, weights = jnp.asarray(data, dtype), jnp.asarray(weights, dtype)
        raw, finite, history, final = run(to_unconstrained(start), X_device, weights, batch_key)
    params = from_unconstrained(raw, covariance_type)
    return gradient_result(params, final, history, n_steps, bool(finite))


def gradient_result(
    params, final, history, n_steps: int, finite: bool, stacklevel: int = 3
) -> FitResult:
    """The :class:`FitResult` of a gradient fit; warns when a step went non-finite.

    Args:
        params: the final (last finite) parameters; final: () their mean
            log-likelihood; history: (n_steps,) the loss before each step.
        n_steps: the steps asked for; finite: whether every step stayed finite.
        stacklevel: the warning's, pointing at the user's call of ``fit_gradient``.
    """
    if not finite:
        warnings.warn(
            "fit_gradient: a step produced non-finite values; the result holds the last "
            "finite parameters (status NON_FINITE). Lower the learning rate or standardise X.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return FitResult(
        params=params,
        lower_bound=final,
        n_iter=jnp.asarray(n_steps, jnp.int32),
        converged=jnp.asarray(False),
        status=jnp.asarray(Status.MAX_ITER if finite else Status.NON_FINITE, jnp.int32),
        history=history,
        restart_lower_bounds=final[None],
    )
