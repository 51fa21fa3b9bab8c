"""Initial parameters, computed inside the compiled program (scikit-learn's ``init_params``).

Every method first builds responsibilities, then applies one M-step, exactly as
scikit-learn does:

* ``kmeans``: one-hot responsibilities from k-means (k-means++ seeding, then Lloyd).
* ``k-means++``: responsibility one for each k-means++ seed point, zero elsewhere.
* ``random``: uniform random responsibilities, normalised per point.
* ``random_from_data``: responsibility one for K distinct random points.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxgmm._chunking import chunked_sum
from jaxgmm._covariance import SMALL_FEATURES, _dot_chunk, covariance_model
from jaxgmm._em import Stats, m_step
from jaxgmm._loops import compacting_while_loop
from jaxgmm._params import GaussianMixtureParams

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


def _n_local_trials(n_clusters) -> jax.Array:
    """2 + floor(log K) local trials per seed (scikit-learn's rule), for a traced K."""
    return 2 + jnp.floor(jnp.log(jnp.asarray(n_clusters, jnp.float32))).astype(jnp.int32)


def kmeans_plusplus_indices(
    key: jax.Array,
    X: jax.Array,
    sample_weight: jax.Array,
    n_clusters: int,
    n_active: jax.Array | int | None = None,
) -> jax.Array:
    """Greedy k-means++ seeding (2 + log K local trials per seed, as scikit-learn).

    Every draw comes from its own key (seed i, trial t: ``fold_in(fold_in(key, i), t)``)
    and inverse-CDF sampling over the weights, so neither zero-weight padding rows nor
    inactive padding seeds change the seeds that are chosen.

    Args:
        key: PRNG key.
        X: (N, D) rows; sample_weight: (N,) weights, rows with weight 0 never chosen.
        n_clusters: K (static), the number of seeds returned.
        n_active: None (all K), or the number of seeds actually drawn (traced);
            seeds after it are row 0, to be ignored.

    Returns:
        (K,) row indices of the seeds.
    """
    n_active = n_clusters if n_active is None else n_active
    max_trials = 2 + int(math.log(n_clusters))
    n_trials = _n_local_trials(n_active)
    first = jax.random.choice(
        jax.random.fold_in(key, 0), X.shape[0], p=sample_weight / jnp.sum(sample_weight)
    )
    closest = jnp.sum((X - X[first]) ** 2, axis=1)

    def add_seed(i, carry):
        indices, closest = carry
        potential = sample_weight * closest
        total = jnp.sum(potential)
        # All remaining mass on existing seeds (duplicated points): fall back to weights.
        p = jnp.where(
            total > 0,
            potential / jnp.where(total > 0, total, 1.0),
            sample_weight / jnp.sum(sample_weight),
        )
        candidates = jax.random.choice(
            jax.random.fold_in(key, i), X.shape[0], shape=(max_trials,), p=p
        )
        new_closest = jnp.minimum(closest[:, None], _squared_distances(X, X[candidates]))
        cost = jnp.sum(sample_weight[:, None] * new_closest, axis=0)
        best = jnp.argmin(
            jnp.where(jnp.arange(max_trials, dtype=jnp.int32) < n_trials, cost, jnp.inf)
        )
        return indices.at[i].set(candidates[best]), new_closest[:, best]

    indices = jnp.zeros(n_clusters, first.dtype).at[0].set(first)
    indices, _ = jax.lax.fori_loop(1, n_active, add_seed, (indices, closest))
    return indices


def _masked_distances(X: jax.Array, centers: jax.Array, active: jax.Array | None) -> jax.Array:
    """Squared distances (C, K), +inf to inactive (padding) centers."""
    distances = _squared_distances(X, centers)
    if active is None:
        return distances
    return jnp.where(active, distances, jnp.inf)


def kmeans_centers(
    key: jax.Array,
    X_chunks: jax.Array,
    weight_chunks: jax.Array,
    n_clusters: int,
    active: jax.Array | None = None,
) -> jax.Array:
    """Weighted k-means: k-means++ seeds, then Lloyd iterations; -> (K, D) centers.

    Stops when the summed squared center shift falls below 1e-4 times the mean
    per-feature variance (scikit-learn's rule) or after 300 iterations. Empty clusters
    keep their previous center. Inactive centers (``active`` False: padding) are
    never seeded, never nearest and never moved.
    """
    X = X_chunks.reshape(-1, X_chunks.shape[-1])
    w = weight_chunks.reshape(-1)
    n_active = None if active is None else jnp.sum(active, dtype=jnp.int32)
    centers = X[kmeans_plusplus_indices(key, X, w, n_clusters, n_active)]
    mean = jnp.sum(w[:, None] * X, axis=0) / jnp.sum(w)
    variance = jnp.sum(w[:, None] * (X - mean) ** 2, axis=0) / jnp.sum(w)
    tol = _LLOYD_TOL * jnp.mean(variance)

    # Everything the loop uses goes through consts: compacting_while_loop's batched
    # form must not close over traced values.
    def lloyd_step(state, consts):
        centers, _, it = state
        X_chunks, weight_chunks, _, active = consts

        def chunk_sums(Xc, wc):
            labels = jnp.argmin(_masked_distances(Xc, centers, active), axis=1)
            onehot = jax.nn.one_hot(labels, n_clusters, dtype=Xc.dtype) * wc[:, None]
            return jnp.sum(onehot, axis=0), _dot_chunk(onehot.T, Xc)

        counts, sums = chunked_sum(chunk_sums, X_chunks, weight_chunks)
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-30)[:, None], centers)
        return new, jnp.sum((new - centers) ** 2), it + 1

    def keep_going(state, consts):
        _, shift, it = state
        return (shift > consts[2]) & (it < _LLOYD_MAX_ITER)

    inf = jnp.asarray(jnp.inf, X.dtype)
    state = (centers, inf, jnp.asarray(0, jnp.int32))
    centers, _, _ = compacting_while_loop(
        keep_going, lloyd_step, state, (X_chunks, weight_chunks, tol, active)
    )
    return centers


def _stats_from_resp_fn(resp_fn, X_chunks, weight_chunks, shift, covariance_type):
    """Summed statistics around ``shift`` (K, D) for responsibilities ``resp_fn(X, rows)``."""
    n_chunks, chunk_size, _ = X_chunks.shape
    row_ids = jnp.arange(n_chunks * chunk_size).reshape(n_chunks, chunk_size)

    def chunk_stats(X, w, rows):
        resp_w = resp_fn(X, rows).astype(X.dtype) * w[:, None]
        s_x, s_xx = covariance_model(covariance_type).statistics(X, resp_w, shift)
        zero = jnp.zeros((), X.dtype)
        return Stats(jnp.sum(resp_w, axis=0), s_x, s_xx, None, zero, jnp.sum(w))

    stats = chunked_sum(chunk_stats, X_chunks, weight_chunks, row_ids)
    return stats._replace(shift=shift)


def initial_params(
    key: jax.Array,
    X_chunks: jax.Array,
    weight_chunks: jax.Array,
    n_components: int,
    covariance_type: str,
    init: str,
    reg_covar: jax.Array,
    active: jax.Array | None = None,
) -> GaussianMixtureParams:
    """Initial parameters by one of :data:`INIT_METHODS`.

    Random draws depend only on the key, a row's index and a component's index, so
    zero-weight padding rows and inactive padding components leave the initial
    parameters of the real ones unchanged.

    Args:
        key: PRNG key.
        X_chunks: (N_chunks, C, D) centred data; weight_chunks: (N_chunks, C).
        n_components: K; covariance_type: the covariance type; init: the method.
        reg_covar: () added to covariance diagonals.
        active: None (every component), or (K,) bool marking the real components;
            the others get zero responsibility (padding, see :mod:`jaxgmm._buckets`).

    Returns:
        :class:`GaussianMixtureParams` from one M-step on the initial responsibilities.
    """
    w = weight_chunks.reshape(-1)
    n_features = X_chunks.shape[-1]
    is_active = jnp.ones(n_components, bool) if active is None else active
    # Statistics are taken around a point near each component's initial mean (see
    # the exact per-type statistics); zero (the data's centre) for random responsibilities.
    shift = jnp.zeros((n_components, n_features), X_chunks.dtype)
    if init == "kmeans":
        centers = kmeans_centers(key, X_chunks, weight_chunks, n_components, active)
        shift = centers

        def resp_fn(X, rows):
            labels = jnp.argmin(_masked_distances(X, centers, active), axis=1)
            return jax.nn.one_hot(labels, n_components)

    elif init in ("k-means++", "random_from_data"):
        if init == "k-means++":
            X = X_chunks.reshape(-1, X_chunks.shape[-1])
            seeds = kmeans_plusplus_indices(
                key, X, w, n_components, jnp.sum(is_active, dtype=jnp.int32)
            )
        else:
            # Gumbel top-K over the rows: the first K_active of the top K are the
            # top K_active, so padding components do not change the real seeds.
            seeds = jax.random.choice(
                key, w.shape[0], shape=(n_components,), replace=False, p=w / jnp.sum(w)
            )

        shift = X_chunks.reshape(-1, n_features)[seeds]

        def resp_fn(X, rows):
            return (rows[:, None] == seeds[None, :]) & is_active

    elif init == "random":

        def resp_fn(X, rows):
            row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
            u = jax.vmap(lambda k: jax.random.uniform(k, (n_components,), X.dtype))(row_keys)
            u = jnp.where(is_active, u, 0.0)
            return u / jnp.sum(u, axis=1, keepdims=True)

    else:
        raise ValueError(f"unknown init {init!r}; expected one of {INIT_METHODS}")
    stats: Stats = _stats_from_resp_fn(resp_fn, X_chunks, weight_chunks, shift, covariance_type)
    return m_step(stats, reg_covar, covariance_type, active)
