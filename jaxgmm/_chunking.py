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
    n_samples: int,
    n_components: int,
    n_features: int,
    covariance_type: str | None = None,
    incomplete: bool = False,
    missing_only: bool = False,
) -> int:
    """Rows per chunk so that the largest per-chunk intermediate stays around 2 MiB.

    Args:
        n_samples: N; n_components: K; n_features: D.
        covariance_type: the fitting kernel's covariance type; ``diag`` and
            ``spherical`` fits keep K + D values per row, everything else (and
            scoring, ``None``) K * D.
        incomplete: the incomplete-data kernel (:mod:`jaxgmm._incomplete`): K * D * D
            values per row for matrix covariances, K * D for variances.
        missing_only: with ``incomplete``, missing values without noise: full and tied
            take :mod:`jaxgmm._schur`, 2 K * D values per row (measured fastest on a
            CPU at K = D = 16: smaller chunks keep its many elementwise passes in cache).

    Returns:
        Rows per chunk C, at most N.
    """
    per_row = elements_per_row(n_components, n_features, covariance_type, incomplete, missing_only)
    size = max(_MIN_CHUNK, CHUNK_ELEMENTS // per_row)
    return int(min(n_samples, size))


def elements_per_row(
    n_components: int,
    n_features: int,
    covariance_type: str | None,
    incomplete: bool = False,
    missing_only: bool = False,
) -> int:
    """Values the largest per-chunk intermediate holds per data row (see chunk_size_for)."""
    row_sized = covariance_type is not None and covariance_model(covariance_type).row_sized
    if incomplete and missing_only and not row_sized:  # jaxgmm._schur
        return max(1, 2 * n_components * n_features)
    if incomplete:  # (C, K, D, D) factorisations, or (C, K, D) elementwise (row_sized types)
        per_component = (
            n_features if covariance_model(covariance_type).row_sized else (n_features * n_features)
        )
        return max(1, n_components * per_component)
    if covariance_type is not None and covariance_model(covariance_type).row_sized:
        return max(1, n_components + n_features)
    return max(1, n_components * n_features)


def _pad_and_split(X: jax.Array, chunk_size: int) -> jax.Array:
    """Pad (N, D) rows with zero rows and reshape into (N_chunks, C, D) chunks."""
    n_samples, n_features = X.shape
    n_chunks = -(-n_samples // chunk_size)
    X = jnp.pad(X, ((0, n_chunks * chunk_size - n_samples), (0, 0)))
    return X.reshape(n_chunks, chunk_size, n_features)


def chunked_map(fn: Callable, X: jax.Array, chunk_size: int):
    """Apply a row-wise ``fn`` to (N, D) data chunk by chunk; outputs keep N rows."""
    n_samples = X.shape[0]
    if n_samples <= chunk_size:
        return fn(X)
    out = jax.lax.map(fn, _pad_and_split(X, chunk_size))
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n_samples], out)
