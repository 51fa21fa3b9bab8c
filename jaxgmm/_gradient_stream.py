"""Gradient fitting with optax on data read chunk by chunk (:func:`jaxgmm.fit_gradient`).

The start is :func:`jaxgmm.fit_stream`'s initialisation (``max_iter=0``), so EM and
gradient fitting on a stream start alike. Rows are centred on the start's mixture
mean (in float64, before the cast), as the streamed EM does. Each optimiser step
then takes either one chunk of ``batch_size`` consecutive rows (minibatches in the
order the source gives them, cycling over it: shuffle a sorted file beforehand) or,
with ``batch_size=None``, the exact full-data gradient, summed over one pass of
chunks. Only a few chunks are in memory at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._gradient import (
    from_unconstrained,
    gradient_result,
    to_unconstrained,
    weighted_log_likelihood_sum,
)
from jaxgmm._iterate import all_finite
from jaxgmm._jit import jit
from jaxgmm._params import FitResult
from jaxgmm._sources import ChunkStream, read_ahead
from jaxgmm._stream import fit_stream, open_stream


@jit(static_argnames=("covariance_type",), data_argnum=1)
def _chunk_value_and_grad(raw, x, weight, *, covariance_type: str):
    """A chunk's weighted log-likelihood sum, its gradient in ``raw``, and its weight."""
    value, grads = jax.value_and_grad(weighted_log_likelihood_sum)(raw, x, weight, covariance_type)
    return value, grads, jnp.sum(weight)


@jit(static_argnames=("covariance_type",), data_argnum=1)
def _chunk_log_likelihood(raw, x, weight, *, covariance_type: str):
    """A chunk's weighted log-likelihood sum and its weight."""
    return weighted_log_likelihood_sum(raw, x, weight, covariance_type), jnp.sum(weight)


def _updater(optimizer):
    """One optax step from summed values and gradients (compiled per optimiser)."""
    import optax

    @jit
    def update(raw, opt_state, value_sum, grad_sum, weight_sum):
        loss = -value_sum / weight_sum
        grads = jax.tree_util.tree_map(lambda g: -g / weight_sum, grad_sum)
        updates, new_state = optimizer.update(grads, opt_state, raw)
        new_raw = optax.apply_updates(raw, updates)
        ok = jnp.isfinite(loss) & all_finite(new_raw)
        return new_raw, new_state, ok, loss

    return update


def _endless(stream: ChunkStream, dtype, offset) -> Iterator:
    """Chunks of pass after pass over the stream, read ahead on a background thread."""
    while True:
        yield from read_ahead(stream.chunks(dtype, offset))


def _pass_sums(chunk_fn, raw, stream: ChunkStream, dtype, offset, covariance_type: str):
    """``chunk_fn``'s outputs summed over one pass."""
    total = None
    for chunk in read_ahead(stream.chunks(dtype, offset)):
        out = chunk_fn(raw, chunk.x, chunk.weight, covariance_type=covariance_type)
        total = out if total is None else jax.tree_util.tree_map(jnp.add, total, out)
    return total


def fit_gradient_stream(
    source,
    n_components: int,
    *,
    optimizer,
    n_steps: int,
    batch_size: int | None,
    chunk_rows: int | None,
    start_options: dict,
) -> FitResult:
    """:func:`jaxgmm.fit_gradient` on a source that :func:`jaxgmm.fit_stream` reads.

    Args:
        source: a ``.npy`` path, an array-like with row slicing, or a callable (see
            :func:`jaxgmm.fit_stream`).
        n_components: K.
        optimizer: an optax ``GradientTransformation`` (checked by the caller).
        n_steps: optimiser steps.
        batch_size: rows per step (consecutive rows, cycling over the source), or
            None for the full-data gradient (one pass per step).
        chunk_rows: rows per chunk of the initialisation's and the final score's
            passes (and of full-data steps); None: :func:`jaxgmm.fit_stream`'s default.
        start_options: :func:`jaxgmm.fit_stream`'s keyword options of the start
            (``covariance_type``, ``reg_covar``, ``max_iter=0``, ``init``, ``key``, the
            ``*_init`` parameters, ``sample_weight``).

    Returns:
        A :class:`FitResult` as the in-memory :func:`jaxgmm.fit_gradient` returns
        (``lower_bound``: the weighted mean log-likelihood of the final parameters
        over one more pass).
    """
    start = fit_stream(source, n_components, chunk_rows=chunk_rows, **start_options).params
    covariance_type, sample_weight = start.covariance_type, start_options["sample_weight"]
    dtype = np.dtype(start.means.dtype)
    center = np.asarray(start.weights, np.float64) @ np.asarray(start.means, np.float64)
    centred_means = (np.asarray(start.means, np.float64) - center).astype(dtype)
    centred = dataclasses.replace(start, means=jax.device_put(centred_means))
    options = (sample_weight, "raise", None, n_components, covariance_type)
    passes, _ = open_stream(source, chunk_rows, *options)
    steps = passes if batch_size is None else open_stream(source, batch_size, *options)[0]
    update = _updater(optimizer)
    history = np.full(n_steps, np.nan)
    finite = True
    # optax's own code is not written for strict dtype promotion (see fit_gradient).
    with jax.default_matmul_precision("highest"), jax.numpy_dtype_promotion("standard"):
        raw = to_unconstrained(centred)
        opt_state = optimizer.init(raw)
        batches = None if batch_size is None else _endless(steps, dtype, center)
        try:
            for step in range(n_steps):
                if batches is None:
                    sums = _pass_sums(
                        _chunk_value_and_grad, raw, passes, dtype, center, covariance_type
                    )
                else:
                    chunk = next(batches)
                    sums = _chunk_value_and_grad(
                        raw, chunk.x, chunk.weight, covariance_type=covariance_type
                    )
                new_raw, new_state, ok, loss = update(raw, opt_state, *sums)
                history[step] = float(loss)
                if not bool(ok):
                    finite = False
                    break
                raw, opt_state = new_raw, new_state
        finally:
            if batches is not None:
                batches.close()
        value, weight = _pass_sums(
            _chunk_log_likelihood, raw, passes, dtype, center, covariance_type
        )
    params = from_unconstrained(raw, covariance_type)
    means = (np.asarray(params.means, np.float64) + center).astype(dtype)
    params = dataclasses.replace(params, means=jax.device_put(means))
    history = jnp.asarray(history, dtype)
    return gradient_result(params, value / weight, history, n_steps, finite, stacklevel=4)
