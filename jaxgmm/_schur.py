"""Missing values under full and tied covariances, through each component's precision.

For a row with missing coordinates m and observed ones o, and Lambda = Sigma^-1
(``U U^T`` from ``precisions_cholesky``), the Schur complement gives everything the
incomplete-data E-step needs from the small missing block ``H = Lambda_mm`` alone::

    z = x - mu with missing entries 0        u = (Lambda z)_m        y = -H^-1 u
    delta = z + E^T y                        (the row filled with E[x_m | x_o], minus mu)
    r^T Sigma_oo^-1 r = delta^T Lambda delta = |U^T delta|^2
    log|Sigma_oo| = log|Sigma| + log|H|
    Cov[x_m | x_o] = H^-1

(E: the (|m|, D) selection of the missing coordinates.) The quadratic form is a sum of
squares of the filled row, not a difference of two large terms: ``delta`` minimises
``(z + E^T t)^T Lambda (z + E^T t)`` over t, so an error in y enters it squared. The
expected statistics around the means are ``s_x = sum g delta`` and
``s_xx = sum g (delta delta^T + E^T H^-1 E)``; the last term is summed in slot space
(the upper triangle of each H^-1, g-weighted) into D x D bins by a segment sum.

Each row's missing block is padded to a static size S (identity on the padding) and
inverted by the sweep operator, S vectorised pivot steps over all (row, component)
pairs of a chunk with the matrix axes leading: no per-matrix library call, and no
batches of tiny matrix products (both slow in XLA on a CPU). Slot-space arrays keep
the slots first and the components last, (S, S, R, K): the gathers of u and H fetch
K contiguous values per slot (a gather of single values, or one behind a transpose,
cost several times more), and the sweep runs along one flat (R * K) batch axis. A
chunk's rows are sorted by their number of missing entries and cut into static tiers
of growing S (:func:`tier_plan`: S = D/8, D/4, 3D/8, D/2 for 28, 46, 21, 4 % of the
rows, then D for the last 1 %), sized so that a 1024-row chunk of a table with 20 %
of its entries missing at random misses them with probability about 1e-5 (binomial
counts). A chunk that misses them tries looser tiers (S = D/4, D/2, D for 50, 45,
5 %: uneven counts, such as a few missingness patterns), and else runs at S = D for
every row (still exact, some 30 times slower for that chunk). The filled rows of all
tiers are put back together for the products that follow (quadratic forms,
responsibilities, second moments), and the H^-1 terms of all tiers go through one
segment sum.
Tied covariances invert one H per row, not per component. Rows with no observed
entry get log-density 0 (H = Lambda, delta = 0), as in :mod:`jaxgmm._incomplete`;
rows with weight zero (padding) take no tier room.

Cost per (row, component) is O(S^3 + D^2) elementwise work, against the general
kernel's D x D factorisation call; W6 (``benchmarks/bench_missing.py``) measures it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._covariance import (
    FusedPartials,
    _log_lik_sum,
    _weighted_responsibilities,
    covariance_model,
)
from jaxgmm._params import GaussianMixtureParams

_LOG_2PI = math.log(2.0 * math.pi)

# Tiers as (fraction of a chunk's rows, fraction of D for the padded block): rows
# sorted by missing count fill them in order; the last tier always takes S = D.
_TIERS = ((0.28, 0.125), (0.74, 0.25), (0.95, 0.375), (0.99, 0.5), (1.0, 1.0))
# When a chunk's rows do not fit _TIERS (more missing entries, or few missingness
# patterns with uneven counts), these are tried before S = D for every row.
_LOOSE_TIERS = ((0.5, 0.25), (0.95, 0.5), (1.0, 1.0))
_MIN_TIERED_ROWS = 64


def tier_plan(
    n_rows: int, n_features: int, tiers: tuple[tuple[float, float], ...] = _TIERS
) -> tuple[tuple[int, int, int], ...]:
    """Static tiers ((start, stop, S), ...) for a chunk of ``n_rows`` sorted rows.

    ``tiers``: (fraction of the rows, fraction of D for the padded block) pairs.
    """
    if n_rows < _MIN_TIERED_ROWS:
        return ((0, n_rows, n_features),)
    plan, start = [], 0
    for row_fraction, block_fraction in tiers:
        stop = n_rows if row_fraction >= 1.0 else int(row_fraction * n_rows)
        block = max(1, min(n_features, math.ceil(block_fraction * n_features)))
        if stop > start:
            plan.append((start, stop, block))
        start = stop
    return tuple(plan)


def _missing_slots(missing: jax.Array, block: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each row's missing coordinates in order, padded to ``block`` slots, slots first.

    Args:
        missing: (R, D) 1.0 where the entry is missing; block: S, at least every
            row's missing count.

    Returns:
        one_hot: (S, R, D) 1.0 at the coordinate each slot holds (rows of E);
        index: (S, R) int32 coordinate in each slot (0 on padding);
        real: (S, R) 1.0 on slots that hold a missing coordinate.
    """
    position = jnp.cumsum(missing, axis=1) - 1.0  # (R, D): slot of each missing entry
    slots = jnp.arange(block, dtype=missing.dtype)[:, None, None]
    one_hot = jnp.where(position[None] == slots, missing[None], 0.0)  # (S, R, D)
    index = jnp.sum(one_hot * jnp.arange(missing.shape[1], dtype=missing.dtype), axis=-1)
    return one_hot, index.astype(jnp.int32), jnp.sum(one_hot, axis=-1)


def invert(H: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log|H| and H^-1 of SPD matrices, batched without per-matrix library calls.

    The sweep operator, one pivot per loop step (Gaussian elimination without
    pivoting, stable for SPD matrices). The matrix axes lead so that each step is
    elementwise along the trailing batch, which XLA on a CPU runs far faster than
    batches of tiny matrices; the loop keeps the compiled program small.

    Args:
        H: (S, S, ...) symmetric positive definite in the leading two axes.

    Returns:
        log_det: (...); H_inv: (S, S, ...).
    """
    log_det, negative_inverse = sweep_all(H)
    return log_det, -negative_inverse


def sweep_all(H: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log|H| and -H^-1 (what sweeping every pivot leaves), shapes as :func:`invert`."""
    size = H.shape[0]
    batch = (1,) * (H.ndim - 2)

    def sweep(k, carry):
        A, log_det = carry
        pivot = A[k, k]
        scale = 1.0 / pivot
        is_pivot = jnp.arange(size) == k
        on_row = is_pivot.reshape((size, 1) + batch)
        on_col = is_pivot.reshape((1, size) + batch)
        rest = A - A[:, k][:, None] * (A[k, :][None, :] * scale)
        A = jnp.where(on_row & on_col, -scale, jnp.where(on_row | on_col, A * scale, rest))
        return A, log_det + jnp.log(pivot)

    A, log_det = jax.lax.fori_loop(0, size, sweep, (H, jnp.zeros(H.shape[2:], H.dtype)))
    return log_det, A


def _solve_tier(
    z_precision: jax.Array,
    missing: jax.Array,
    precision: jax.Array,
    rows: tuple[int, int],
    block: int,
):
    """The missing blocks of the chunk's ``rows``, each with at most ``block`` missing entries.

    Slot axes lead and the component axis trails: every gather below fetches K (or
    P) contiguous values, and the S x S algebra is elementwise along (R, P).

    Args:
        z_precision: (C, D, K) ``Lambda z`` of the chunk's centred rows (0 on missing
            entries); missing: (C, D) 1.0 where missing; precision: (D * D, P) the
            precision matrices' entries, P = K or 1; rows: static (start, stop) of the
            tier, R rows; block: S, static.

    Returns:
        fill: (K, R, D) ``E^T y``, what fills the missing entries (delta = z + fill);
        log_det: (R, P) log|H|; weighted_inverse: a function of g (R, P) giving the
        g-weighted upper triangles of H^-1 (pairs, R, P) and their flat D x D
        positions (pairs, R).
    """
    n_features = z_precision.shape[1]
    start, stop = rows
    one_hot, index, real = _missing_slots(missing[start:stop], block)  # slots lead
    row = jnp.arange(start, stop, dtype=jnp.int32) * n_features
    u = z_precision.reshape(-1, z_precision.shape[-1])[row + index] * real[..., None]  # (S, R, K)
    pairs = index[:, None, :] * n_features + index[None, :, :]  # (S, S, R)
    both = (real[:, None] * real[None, :])[..., None]  # (S, S, R, 1)
    eye = jnp.eye(block, dtype=z_precision.dtype)[:, :, None, None]
    H = precision[pairs] * both + (1.0 - real)[:, None, :, None] * eye  # identity on padding
    log_det, minus_inv = sweep_all(H.reshape(block, block, -1))  # one flat batch axis
    log_det, minus_inv = log_det.reshape(H.shape[2:]), minus_inv.reshape(H.shape)  # -H^-1
    # y = -H^-1 u (S, R, K); P broadcasts against K. Sums over the small axes are
    # written out: XLA's CPU reductions over them are far slower.
    y = sum(minus_inv[:, b] * u[b] for b in range(block))
    # computed once (not again for every d of fill), then components first
    y = jnp.swapaxes(jax.lax.optimization_barrier(y), 1, 2)  # (S, K, R)
    fill = sum(y[a][..., None] * one_hot[a] for a in range(block))  # (K, R, D)
    upper = np.flatnonzero(np.triu(np.ones((block, block), bool)))  # static slot pairs a <= b

    def weighted_inverse(g):
        parts = (-g * minus_inv * both).reshape((block * block,) + g.shape)[upper]
        return parts, pairs.reshape(block * block, -1)[upper]

    return fill, log_det, weighted_inverse


def tiers_partials(
    x: jax.Array,
    missing: jax.Array,
    weight: jax.Array,
    means: jax.Array,
    precisions_cholesky: jax.Array,
    log_weights: jax.Array,
    plan: tuple[tuple[int, int, int], ...],
    tied: bool,
) -> FusedPartials:
    """Log-likelihood and expected statistics of a chunk whose rows fit ``plan``'s tiers.

    Args:
        x: (C, D) centred rows (any value on missing entries); missing: (C, D) 1.0
            where missing; weight: (C,); means: (K, D);
        precisions_cholesky: (K, D, D) full or (1, D, D) tied upper factors U;
        log_weights: (K,); plan: static tiers ((start, stop, S), ...) covering the
            rows, each row of a tier with at most S missing entries; tied: shared
            covariance (static).

    Returns:
        :class:`FusedPartials` with ``moments = (n_k (K,), s_x (K, D), s_xx)``
        around the means, s_xx (K, D, D) full or (D, D) tied.
    """
    n_features = x.shape[1]
    observed = 1.0 - missing
    U = precisions_cholesky  # (P, D, D), P = K or 1
    precision = U @ jnp.swapaxes(U, -1, -2)
    log_det_cov = -2.0 * jnp.sum(jnp.log(jnp.diagonal(U, axis1=-2, axis2=-1)), axis=-1)  # (P,)
    z = observed[None] * (x[None] - means[:, None])  # (K, C, D)
    # Lambda z as (C, D, K) and the precisions as (D * D, P): components trail
    z_precision = jnp.transpose(z @ precision, (1, 2, 0))
    table = jnp.transpose(precision, (1, 2, 0)).reshape(n_features * n_features, -1)
    tiers = [_solve_tier(z_precision, missing, table, (a, b), S) for a, b, S in plan]
    delta = z + jnp.concatenate([t[0] for t in tiers], axis=1)  # (K, C, D) filled rows
    log_det_block = jnp.concatenate([t[1] for t in tiers]).T  # (P, C)
    white = delta @ U  # rows (U^T delta)^T
    n_obs = jnp.sum(observed, axis=1)  # (C,)
    log_prob = log_weights[:, None] - 0.5 * (
        jnp.sum(white * white, axis=-1) + log_det_cov[:, None] + log_det_block + n_obs * _LOG_2PI
    )  # (K, C)
    g, log_norm = _weighted_responsibilities(log_prob, weight)  # (K, C)
    weighted = g[..., None] * delta
    filled = jnp.einsum("krd,kre->kde", weighted, delta)
    # sum_r g E^T H^-1 E: every tier's g-weighted upper triangles, one segment sum
    g_block = jnp.sum(g, axis=0, keepdims=True) if tied else g  # (P, C)
    parts, positions = zip(
        *(t[2](g_block[:, a:b].T) for t, (a, b, _) in zip(tiers, plan, strict=True)), strict=True
    )
    spread = jax.ops.segment_sum(
        jnp.concatenate([p.reshape(-1, g_block.shape[0]) for p in parts]),
        jnp.concatenate([p.reshape(-1) for p in positions]),
        num_segments=n_features * n_features,
    )  # (D * D, P): the upper triangle of each component's sum
    spread = jnp.moveaxis(spread.reshape(n_features, n_features, -1), -1, 0)
    spread = spread + jnp.swapaxes(spread, -1, -2) - spread * jnp.eye(n_features, dtype=x.dtype)
    s_xx = jnp.sum(filled, axis=0) + spread[0] if tied else filled + spread
    return FusedPartials(
        moments=(jnp.sum(g, axis=1), jnp.sum(weighted, axis=1), s_xx),
        log_lik_sum=_log_lik_sum(log_norm, weight),
        n=jnp.sum(weight),
    )


def schur_partials(x, weight, mask, params: GaussianMixtureParams) -> FusedPartials:
    """Expected statistics of one chunk with missing entries, full or tied covariances.

    Sorts the chunk's rows by missing count and runs :func:`tiers_partials` on the
    static tiers of :func:`tier_plan`, or when the rows do not fit them on the looser
    tiers of ``_LOOSE_TIERS``, or else on all rows at S = D.

    Args:
        x: (C, D) centred rows; weight: (C,); mask: (C, D) bool, True where observed;
        params: current parameters (full or tied).

    Returns:
        :class:`FusedPartials` with ``moments = (n_k, s_x, s_xx)`` around the means.
    """
    n_rows, n_features = x.shape
    missing = 1.0 - mask.astype(x.dtype)
    U = params.precisions_cholesky
    tied = not covariance_model(params.covariance_type).per_component
    U = U[None] if tied else U
    log_weights = jnp.log(params.weights)

    def moments(x, missing, weight, plan):
        return tiers_partials(x, missing, weight, params.means, U, log_weights, plan, tied)

    plans = (tier_plan(n_rows, n_features), tier_plan(n_rows, n_features, _LOOSE_TIERS))
    whole = ((0, n_rows, n_features),)
    if len(plans[0]) == 1:
        return moments(x, missing, weight, whole)
    count = jnp.where(weight > 0, jnp.sum(missing, axis=1), 0.0)
    if (n_features + 1) * n_rows < 2**31:  # one sort of unique int32 keys (count, row)
        row = jnp.arange(n_rows, dtype=jnp.int32)
        order = jax.lax.sort(count.astype(jnp.int32) * n_rows + row) % n_rows
    else:
        order = jnp.argsort(count, stable=True)
    x, missing, weight, count = x[order], missing[order], weight[order], count[order]
    missing = jnp.where(weight[:, None] > 0, missing, 0.0)  # padding rows take no tier room
    fits = [jnp.all(jnp.stack([count[stop - 1] <= S for _, stop, S in plan])) for plan in plans]
    first_fitting = jnp.where(fits[0], 0, jnp.where(fits[1], 1, 2))
    return jax.lax.switch(
        first_fitting,
        [lambda *rows, plan=plan: moments(*rows, plan) for plan in (*plans, whole)],
        x,
        missing,
        weight,
    )
