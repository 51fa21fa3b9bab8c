"""Row chunking: bounded-memory sums and maps over the points of a data set."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgmm._covariance import covariance_model

# Target number of elements of the largest per-chunk intermediate: 2**19 float32 values
# (2 MiB) keep a chunk in a CPU's L2/L3 yet make its matrix products large enough to
# run on every core (measured on W1/W1d, benchmarks/README.md).
CHUNK_ELEMENTS = 2**19
_MIN_CHUNK = 256


def chunk_size_for(
    n_samples: int, n_components: int, n_features: int, covariance_type: str | None = None
) -> int:
    """Rows per chunk so that the largest per-chunk intermediate stays around 2 MiB.

    Args:
        n_samples: N; n_components: K; n_features: D.
        covariance_type: the fitting kernel's covariance type; ``diag`` and
            ``spherical`` fits keep K + D values per row, everything else (and
            scoring, ``None``) K * D.

    Returns:
        Rows per chunk C, at most N.
    """
    per_row = elements_per_row(n_components, n_features, covariance_type)
    size = max(_MIN_CHUNK, CHUNK_ELEMENTS // per_row)
    return int(min(n_samples, size))


def elements_per_row(n_components: int, n_features: int, covariance_type: str | None) -> int:
    """Values the largest per-chunk intermediate holds per data row (see chunk_size_for)."""
    if covariance_type is not None and covariance_model(covariance_type).row_sized:
        return max(1, n_components + n_features)
    return max(1, n_components * n_features)


def split_rows(
    X: jax.Array, sample_weight: jax.Array, chunk_size: int
) -> tuple[jax.Array, jax.Array]:
    """Pad with zero-weight rows and reshape into chunks.

    Args:
        X: (N, D) data.
        sample_weight: (N,) non-negative weights.
        chunk_size: rows per chunk C.

    Returns:
        X_chunks: (N_chunks, C, D) and weight_chunks: (N_chunks, C); padded rows are
        zero with weight zero, so they add nothing to any weighted sum.
    """
    n_samples, n_features = X.shape
    n_chunks = -(-n_samples // chunk_size)
    pad = n_chunks * chunk_size - n_samples
    if pad:
        X = jnp.pad(X, ((0, pad), (0, 0)))
        sample_weight = jnp.pad(sample_weight, (0, pad))
    return (
        X.reshape(n_chunks, chunk_size, n_features),
        sample_weight.reshape(n_chunks, chunk_size),
    )


def chunked_sum(fn: Callable, *chunks: jax.Array):
    """Sum the pytree ``fn(*chunk_slices)`` over all chunks with ``lax.scan``.

    Args:
        fn: maps one slice of each array, e.g. (C, D) rows and (C,) weights, to a
            pytree of arrays.
        *chunks: arrays with the chunk index first, e.g. (N_chunks, C, D), (N_chunks, C).

    Returns:
        The pytree summed over chunks.
    """
    if chunks[0].shape[0] == 1:
        return fn(*(c[0] for c in chunks))
    shapes = jax.eval_shape(fn, *(c[0] for c in chunks))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def add_chunk(total, chunk):
        return jax.tree_util.tree_map(jnp.add, total, fn(*chunk)), None

    total, _ = jax.lax.scan(add_chunk, zeros, chunks)
    return total


def chunked_map(fn: Callable, X: jax.Array, chunk_size: int):
    """Apply a row-wise ``fn`` to (N, D) data chunk by chunk; outputs keep N rows."""
    n_samples = X.shape[0]
    if n_samples <= chunk_size:
        return fn(X)
    X_chunks, _ = split_rows(X, jnp.zeros(n_samples, X.dtype), chunk_size)
    out = jax.lax.map(fn, X_chunks)
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n_samples], out)
