"""Initial parameters, computed inside the compiled program (scikit-learn's ``init_params``).

Every method first builds responsibilities, then applies one M-step, exactly as
scikit-learn does:

* ``kmeans``: one-hot responsibilities from k-means (k-means++ seeding, then Lloyd).
* ``k-means++``: responsibility one for each k-means++ seed point, zero elsewhere.
* ``random``: uniform random responsibilities, normalised per point.
* ``random_from_data``: responsibility one for K distinct random points.

Rows with missing entries (``Rows.mask``, ``nan_policy="marginalize"``): k-means++
and Lloyd use masked distances, over each row's observed coordinates only and scaled
by D / (observed count) (the partial-distance rule), and Lloyd's centers average each
coordinate over the assigned rows that observe it. Seeds are rows, whose missing
entries hold their column's mean; the first M-step then uses those filled rows (EM's
exact incomplete-data steps take over from the first iteration).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxgmm._batching import cond_any
from jaxgmm._covariance import SMALL_FEATURES, _dot_chunk
from jaxgmm._em import m_step
from jaxgmm._loops import compacting_while_loop
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._rows import IN_MEMORY, Rows
from jaxgmm._stats import assigned_stats

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
_LLOYD_MAX_ITER = 300
_LLOYD_TOL = 1e-4


def _squared_distances(X: jax.Array, centers: jax.Array) -> jax.Array:
    """||x - c||^2 for each row and center; (C, D), (K, D) -> (C, K)."""
    if X.shape[1] <= SMALL_FEATURES:  # unrolled: no tiny matrix products under vmap
        sq = (X[:, 0:1] - centers[None, :, 0]) ** 2
        for d in range(1, X.shape[1]):
            sq = sq + (X[:, d : d + 1] - centers[None, :, d]) ** 2
        return sq
    sq = jnp.sum(X * X, axis=1)[:, None] - 2.0 * X @ centers.T + jnp.sum(centers**2, axis=1)
    return jnp.maximum(sq, 0.0)


def _distances(X: jax.Array, mask: jax.Array | None, centers: jax.Array) -> jax.Array:
    """Squared distances (C, K); with a mask, over observed coordinates, scaled to D.

    ``mask``: None (plain :func:`_squared_distances`) or (C, D) bool. Rows with no
    observed coordinate are at distance 0 from every center.
    """
    if mask is None:
        return _squared_distances(X, centers)
    m = mask.astype(X.dtype)
    diff = (X[:, None, :] - centers[None]) * m[:, None, :]
    n_obs = jnp.sum(m, axis=1)
    scale = X.shape[1] / jnp.maximum(n_obs, 1.0)
    return jnp.sum(diff * diff, axis=2) * scale[:, None]


def _n_local_trials(n_clusters) -> jax.Array:
    """2 + floor(log K) local trials per seed (scikit-learn's rule), for a traced K."""
    return 2 + jnp.floor(jnp.log(jnp.asarray(n_clusters, jnp.float32))).astype(jnp.int32)


def _last_positive(values: jax.Array) -> jax.Array:
    """Index of the last entry > 0 (0 if none); (M,) -> () int."""
    positions = jnp.arange(values.shape[0], dtype=jnp.int32)
    return jnp.max(jnp.where(values > 0, positions, 0))


_PREFIX_BLOCK = 64


def prefix_sums(values: jax.Array) -> jax.Array:
    """Inclusive prefix sums of non-negative values; (M,) -> (M,).

    ``jnp.cumsum`` compiles on CPU to a reduce-window that took 0.43 ms for 26 x 2,000
    values under vmap (a k-means++ seed of a restart group). Here blocks of 64 are
    summed by one product with a triangular matrix of ones (0.08 ms), and only the
    block totals by ``cumsum``. Within a block the sums never decrease and a zero
    repeats its predecessor exactly; across a block boundary the totals' ``cumsum``
    may differ from the previous block's end by a rounding error (as ``jnp.cumsum``'s
    own outputs may anywhere), which :func:`pick_rows` corrects for.
    """
    n = values.shape[0]
    blocks = jnp.pad(values, (0, (-n) % _PREFIX_BLOCK)).reshape(-1, _PREFIX_BLOCK)
    upper = jnp.triu(jnp.ones((_PREFIX_BLOCK, _PREFIX_BLOCK), values.dtype))
    within = jnp.matmul(blocks, upper, precision=jax.lax.Precision.HIGHEST)
    before = jnp.cumsum(within[:, -1])
    offsets = jnp.concatenate([jnp.zeros((1,), values.dtype), before[:-1]])
    return (within + offsets[:, None]).reshape(-1)[:n]


def pick_rows(potential: jax.Array, u: jax.Array) -> jax.Array:
    """Inverse-CDF lookup: the row whose share of ``potential`` holds each ``u``.

    Rounding can leave a row of zero potential a sliver of the prefix sums; such a
    pick moves to the last positive row before it, so rows of zero potential are
    never picked.

    Args:
        potential: (M,) non-negative, positive somewhere; u: (T,) in [0, total).

    Returns:
        (T,) int32 row positions with positive potential.
    """
    position = jnp.searchsorted(prefix_sums(potential), u, side="right")
    position = jnp.minimum(position, _last_positive(potential)).astype(jnp.int32)
    return cond_any(
        jnp.any(potential[position] <= 0),
        _last_positive_at_or_before,
        lambda position, potential: position,
        position,
        potential,
    )


def _last_positive_at_or_before(position: jax.Array, potential: jax.Array) -> jax.Array:
    """Each position whose potential is 0 moved to the last positive row before it
    (the first positive row if none); (T,), (M,) -> (T,) int32."""
    return positive_at_or_before(potential)[position]


def positive_at_or_before(values: jax.Array) -> jax.Array:
    """For each position, the last position at or before it with a positive value (the
    first positive position where none is before); (M,) -> (M,) int32.

    A running maximum of the positive positions: O(M), no (T, M) intermediate however
    many draws look it up.
    """
    positions = jnp.arange(values.shape[0], dtype=jnp.int32)
    at_or_before = jax.lax.cummax(jnp.where(values > 0, positions, -1))
    first = jnp.argmax(values > 0).astype(jnp.int32)
    return jnp.where(at_or_before >= 0, at_or_before, first)


def draw_rows(key, potential, n_draws: int, rows: Rows, reducer=IN_MEMORY):
    """Rows drawn with probability proportional to ``potential``, over every shard.

    Inverse-CDF sampling: one uniform number per draw picks a shard by the shards'
    totals, then a chunk of rows by the shard's chunk totals, then a row within it by
    the chunk's cumulative sum (so nothing row-sized beyond ``potential`` is made);
    rows of zero potential are never drawn. Only the totals and the drawn rows cross
    devices.

    Args:
        key: PRNG key; potential: (M,) non-negative, positive somewhere, at the
            positions of ``rows.flat()``; n_draws: T (static); rows: this shard's rows.
        reducer: where the rows live.

    Returns:
        rows: (T, D) and their positions: (T,) int32.
    """
    chunks = potential.reshape(rows.weight.shape)
    chunk_totals = jnp.sum(chunks, axis=1)
    totals = reducer.all_gather(jnp.sum(chunk_totals))
    bounds = jnp.cumsum(totals)
    # float32 draws whatever the dtype: float32 and float64 fits start from the same rows.
    u = jax.random.uniform(key, (n_draws,), jnp.float32).astype(potential.dtype) * bounds[-1]
    shard = jnp.minimum(jnp.searchsorted(bounds, u, side="right"), _last_positive(totals))
    me = reducer.shard_index()
    local_u = u - (bounds[me] - totals[me])
    position = _pick_in_chunks(chunks, chunk_totals, local_u)
    mine = shard == me
    _, index = rows.flat()
    drawn = reducer.all_reduce(jnp.where(mine[:, None], rows.take(position), 0.0))
    return drawn, reducer.all_reduce(jnp.where(mine, index[position], 0))


def _pick_in_chunks(potential: jax.Array, totals: jax.Array, u: jax.Array) -> jax.Array:
    """:func:`pick_rows` over chunked potentials: a chunk by the chunks' totals, then
    a row within it; (N_chunks, C), (N_chunks,), (T,) -> (T,) int32 flat positions."""
    n_chunks, chunk = potential.shape
    if n_chunks == 1:
        return pick_rows(potential[0], u)
    chosen = pick_rows(totals, u)
    before = prefix_sums(totals) - totals
    within = jax.vmap(pick_rows)(potential[chosen], (u - before[chosen])[:, None])[:, 0]
    return chosen * chunk + within


def kmeans_plusplus(
    key: jax.Array,
    rows: Rows,
    n_clusters: int,
    n_active: jax.Array | int | None = None,
    reducer=IN_MEMORY,
) -> tuple[jax.Array, jax.Array]:
    """Greedy k-means++ seeding (2 + log K local trials per seed, as scikit-learn).

    Every draw comes from its own key (seed i: ``fold_in(key, i)``) and inverse-CDF
    sampling over the weights (:func:`draw_rows`), so neither zero-weight padding rows
    nor inactive padding seeds change the seeds that are chosen.

    Args:
        key: PRNG key.
        rows: the data; rows with weight 0 are never chosen.
        n_clusters: K (static), the number of seeds returned.
        n_active: None (all K), or the number of seeds actually drawn (traced);
            seeds after it repeat the first one, to be ignored.
        reducer: where the rows live.

    Returns:
        centers: (K, D) the seed rows and their positions: (K,) int32.
    """
    w, _ = rows.flat()
    n_active = n_clusters if n_active is None else n_active
    max_trials = 2 + int(math.log(n_clusters))
    n_trials = _n_local_trials(n_active)
    first, first_index = draw_rows(jax.random.fold_in(key, 0), w, 1, rows, reducer)
    first = rows.read(first)
    if rows.mask is None:
        closest = rows.map_chunks(lambda x: jnp.sum((x - first) ** 2, axis=1))
    else:
        closest = rows.map_chunks(lambda x, m: _distances(x, m, first)[:, 0], masked=True)

    def add_seed(i, carry):
        centers, indices, closest = carry
        potential = w * closest
        # All remaining mass on existing seeds (duplicated points): fall back to weights.
        potential = jnp.where(reducer.all_reduce(jnp.sum(potential)) > 0, potential, w)
        candidates, candidate_index = draw_rows(
            jax.random.fold_in(key, i), potential, max_trials, rows, reducer
        )
        candidates = rows.read(candidates)
        trials = jnp.arange(max_trials, dtype=jnp.int32)
        best, closest = _best_trial(rows, w, closest, candidates, trials < n_trials, reducer)
        return (
            centers.at[i].set(candidates[best]),
            indices.at[i].set(candidate_index[best]),
            closest,
        )

    centers = jnp.broadcast_to(first, (n_clusters, rows.n_features))
    indices = jnp.broadcast_to(first_index, (n_clusters,))
    centers, indices, _ = jax.lax.fori_loop(1, n_active, add_seed, (centers, indices, closest))
    return centers, indices


def _best_trial(
    rows: Rows, w: jax.Array, closest: jax.Array, candidates: jax.Array, usable, reducer
) -> tuple[jax.Array, jax.Array]:
    """The k-means++ trial that lowers the weighted potential most.

    Args:
        rows: the data; w: (M,) their weights and closest: (M,) squared distances to
            the nearest seed so far, at the positions of ``rows.flat()``;
        candidates: (T, D) trial seeds; usable: (T,) bool, trials that count.
        reducer: where the rows live.

    Returns:
        The best trial's index () and the rows' new ``closest`` (M,).
    """
    masked = rows.mask is not None
    if rows.weight.shape[0] == 1:  # one chunk: (rows, trials) distances are chunk-sized
        distances = rows.map_chunks(lambda x, m=None: _distances(x, m, candidates), masked=masked)
        new_closest = jnp.minimum(closest[:, None], distances)
        cost = reducer.all_reduce(jnp.sum(w[:, None] * new_closest, axis=0))
        best = jnp.argmin(jnp.where(usable, cost, jnp.inf))
        return best, new_closest[:, best]

    # Many chunks: each trial's cost chunk by chunk, then one pass for the best
    # trial's distances; nothing (rows, trials)-sized is stored (W4: 10M rows).
    def trial_costs(x, weight, index, *rest):
        mask, closest = (rest[0] if masked else None), rest[-1]
        distances = jnp.minimum(closest[:, None], _distances(x, mask, candidates))
        return jnp.sum(weight[:, None] * distances, axis=0)

    cost = reducer.sum(trial_costs, rows, incomplete=masked, per_row=(closest,))
    best = jnp.argmin(jnp.where(usable, cost, jnp.inf))
    chosen = candidates[best][None]

    def new_closest(x, *rest):
        mask, closest = (rest[0] if masked else None), rest[-1]
        return jnp.minimum(closest, _distances(x, mask, chosen)[:, 0])

    return best, rows.map_chunks(new_closest, masked=masked, per_row=(closest,))


def _top_rows_by_gumbel(key, rows: Rows, n_rows: int, reducer=IN_MEMORY):
    """K distinct rows drawn with probability proportional to their weights.

    Gumbel top-K: each row gets ``log w + G`` with G from a key of its own position,
    so the draw does not depend on padding or sharding; the first K' of the top K are
    the top K', so padding components do not change the real ones' rows.

    Returns:
        rows: (K, D) and their positions: (K,) int32.
    """
    w, index = rows.flat()
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (), jnp.float32))(row_keys).astype(w.dtype)
    score = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)) + gumbel, -jnp.inf)
    local = min(n_rows, w.shape[0])
    top, position = jax.lax.top_k(score, local)
    scores = reducer.all_gather(top).reshape(-1)
    candidates = reducer.all_gather(rows.take(position)).reshape(-1, rows.n_features)
    candidate_index = reducer.all_gather(index[position]).reshape(-1)
    _, best = jax.lax.top_k(scores, n_rows)
    return rows.read(candidates[best]), candidate_index[best]


def _masked_distances(
    X: jax.Array, centers: jax.Array, active: jax.Array | None, mask: jax.Array | None = None
) -> jax.Array:
    """Squared distances (C, K) (over observed coordinates with a ``mask``, see
    :func:`_distances`), +inf to inactive (padding) centers."""
    distances = _distances(X, mask, centers)
    if active is None:
        return distances
    return jnp.where(active, distances, jnp.inf)


def nearest_center(
    X: jax.Array, centers: jax.Array, active: jax.Array | None, mask: jax.Array | None = None
) -> jax.Array:
    """One-hot (C, K) assignment of each row to its nearest active center (over its
    observed coordinates with a ``mask``)."""
    labels = jnp.argmin(_masked_distances(X, centers, active, mask), axis=1)
    return jax.nn.one_hot(labels, centers.shape[0], dtype=X.dtype)


def lloyd_sums(X, weight, centers, active, mask=None) -> tuple[jax.Array, jax.Array]:
    """One chunk's part of a Lloyd step: (counts, sums (K, D)) per nearest center.

    Args:
        X: (C, D) rows; weight: (C,); centers: (K, D); active: None or (K,) bool;
        mask: None or (C, D) observed entries.

    Returns:
        counts: (K, 1) summed weights, or (K, D) per coordinate over observed entries
        only (with a ``mask``); sums: (K, D) the matching sums of the rows.
    """
    onehot = nearest_center(X, centers, active, mask) * weight[:, None]
    if mask is None:
        return jnp.sum(onehot, axis=0)[:, None], _dot_chunk(onehot.T, X)
    m = mask.astype(X.dtype)
    return _dot_chunk(onehot.T, m), _dot_chunk(onehot.T, X * m)


def lloyd_update(centers: jax.Array, counts: jax.Array, sums: jax.Array) -> jax.Array:
    """New centers (K, D) from summed :func:`lloyd_sums`; empty clusters (or
    coordinates no member observes) stay put."""
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1e-30), centers)


def lloyd_tolerance(mean_variance: jax.Array) -> jax.Array:
    """Lloyd's stopping threshold on the summed squared center shift."""
    return _LLOYD_TOL * mean_variance


def random_responsibilities(key, index, n_components: int, is_active, dtype) -> jax.Array:
    """Uniform random responsibilities (C, K) from per-row keys ``fold_in(key, index)``."""
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    u = jax.vmap(lambda k: jax.random.uniform(k, (n_components,), dtype))(row_keys)
    u = jnp.where(is_active, u, 0.0)
    return u / jnp.sum(u, axis=1, keepdims=True)


def kmeans_centers(
    key: jax.Array,
    rows: Rows,
    n_clusters: int,
    active: jax.Array | None = None,
    reducer=IN_MEMORY,
) -> jax.Array:
    """Weighted k-means: k-means++ seeds, then Lloyd iterations; -> (K, D) centers.

    Stops when the summed squared center shift falls below 1e-4 times the mean
    per-feature variance (scikit-learn's rule) or after 300 iterations. Empty clusters
    keep their previous center. Inactive centers (``active`` False: padding) are
    never seeded, never nearest and never moved.
    """
    n_active = None if active is None else jnp.sum(active, dtype=jnp.int32)
    centers, _ = kmeans_plusplus(key, rows, n_clusters, n_active, reducer)
    sum_x, total = reducer.sum(lambda x, w, i: (w @ x, jnp.sum(w)), rows)
    mean = sum_x / total
    sum_sq = reducer.sum(lambda x, w, i: w @ ((x - mean) ** 2), rows)
    tol = lloyd_tolerance(jnp.mean(sum_sq / total))

    # Everything the loop uses goes through consts: compacting_while_loop's batched
    # form must not close over traced values.
    def lloyd_step(state, consts):
        centers, _, it = state
        rows, _, active = consts

        def chunk_sums(Xc, wc, index, mask=None, noise=None):
            return lloyd_sums(Xc, wc, centers, active, mask)

        counts, sums = reducer.sum(chunk_sums, rows, incomplete=rows.mask is not None)
        new = lloyd_update(centers, counts, sums)
        return new, jnp.sum((new - centers) ** 2), it + 1

    def keep_going(state, consts):
        _, shift, it = state
        return (shift > consts[1]) & (it < _LLOYD_MAX_ITER)

    inf = jnp.asarray(jnp.inf, rows.x.dtype)
    state = (centers, inf, jnp.asarray(0, jnp.int32))
    centers, _, _ = compacting_while_loop(keep_going, lloyd_step, state, (rows, tol, active))
    return centers


def initial_params(
    key: jax.Array,
    rows: Rows,
    n_components: int,
    covariance_type: str,
    init: str,
    reg_covar: jax.Array,
    active: jax.Array | None = None,
    reducer=IN_MEMORY,
) -> GaussianMixtureParams:
    """Initial parameters by one of :data:`INIT_METHODS`.

    Random draws depend only on the key, a row's position and a component's index, so
    zero-weight padding rows, inactive padding components and the way rows are
    sharded leave the initial parameters of the real components unchanged.

    Args:
        key: PRNG key.
        rows: the centred data.
        n_components: K; covariance_type: the covariance type; init: the method.
        reg_covar: () added to covariance diagonals.
        active: None (every component), or (K,) bool marking the real components;
            the others get zero responsibility (padding, see :mod:`jaxgmm._buckets`).
        reducer: where the rows live.

    Returns:
        :class:`GaussianMixtureParams` from one M-step on the initial responsibilities.
    """
    is_active = jnp.ones(n_components, bool) if active is None else active
    # Statistics are taken around a point near each component's initial mean (see
    # the exact per-type statistics); zero (the data's centre) for random responsibilities.
    shift = jnp.zeros((n_components, rows.n_features), rows.x.dtype)
    if init == "kmeans":
        centers = kmeans_centers(key, rows, n_components, active, reducer)
        shift = centers

        def resp_fn(X, index, mask=None):
            return nearest_center(X, centers, active, mask)

    elif init in ("k-means++", "random_from_data"):
        if init == "k-means++":
            n_active = jnp.sum(is_active, dtype=jnp.int32)
            shift, seeds = kmeans_plusplus(key, rows, n_components, n_active, reducer)
        else:
            shift, seeds = _top_rows_by_gumbel(key, rows, n_components, reducer)

        def resp_fn(X, index, mask=None):
            return ((index[:, None] == seeds[None, :]) & is_active).astype(X.dtype)

    elif init == "random":

        def resp_fn(X, index, mask=None):
            return random_responsibilities(key, index, n_components, is_active, X.dtype)

    else:
        raise ValueError(f"unknown init {init!r}; expected one of {INIT_METHODS}")

    def one_chunk(X, w, index, mask=None, noise=None):
        # Hard assignments (or zero shift for "random"): one shift per row.
        return assigned_stats(X, resp_fn(X, index, mask), w, shift, covariance_type)

    stats = reducer.sum(one_chunk, rows, incomplete=rows.mask is not None)
    return m_step(stats, reg_covar, covariance_type, active)
