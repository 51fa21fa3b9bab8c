"""Initialisation methods: scikit-learn's meaning, computed inside the compiled program."""

import numpy as np
import pytest

import jaxgmm

sklearn_cluster = pytest.importorskip("sklearn.cluster")


def _blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    return np.concatenate([rng.normal(size=(50, 2)) + c for c in centers])


@pytest.mark.parametrize("init", ["k-means++", "random_from_data"])
def test_seed_point_inits_put_means_on_distinct_data_points(init):
    X = _blobs()
    start = jaxgmm.fit(X, 4, init=init, max_iter=0, key=3, reg_covar=1e-3).params
    means = np.asarray(start.means)
    rows = [np.flatnonzero(np.all(np.isclose(X, m, rtol=0, atol=1e-12), axis=1)) for m in means]
    assert all(len(r) == 1 for r in rows), "every initial mean is a data point"
    assert len({int(r[0]) for r in rows}) == 4, "and the points are distinct"
    # Responsibility one on a single point: the covariance is just reg_covar.
    np.testing.assert_allclose(
        start.covariances, np.broadcast_to(np.eye(2) * 1e-3, (4, 2, 2)), atol=1e-12
    )
    np.testing.assert_allclose(start.weights, 0.25, rtol=1e-12)


def test_kmeans_plusplus_spreads_seeds_over_separated_clusters():
    X = _blobs(1)
    for key in range(5):
        means = np.asarray(jaxgmm.fit(X, 4, init="k-means++", max_iter=0, key=key).params.means)
        clusters = {(int(m[0] > 5), int(m[1] > 5)) for m in means}
        assert len(clusters) == 4


def test_kmeans_init_matches_sklearn_kmeans():
    X = _blobs(2)
    start = jaxgmm.fit(X, 4, init="kmeans", max_iter=0, key=0).params
    reference = sklearn_cluster.KMeans(4, n_init=1, random_state=0).fit(X)
    ours = np.asarray(start.means)
    ours = ours[np.lexsort(ours.T)]
    ref = reference.cluster_centers_[np.lexsort(reference.cluster_centers_.T)]
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    # One M-step on the one-hot labels: weights are the cluster fractions.
    np.testing.assert_allclose(np.sort(start.weights), np.full(4, 0.25), atol=1e-12)


def test_random_init_weights_are_near_uniform_and_means_near_data_mean():
    X = _blobs(3)
    start = jaxgmm.fit(X, 4, init="random", max_iter=0, key=5, covariance_type="diag").params
    np.testing.assert_allclose(start.weights.sum(), 1.0, rtol=1e-12)
    assert np.all(np.abs(np.asarray(start.weights) - 0.25) < 0.05)
    assert np.all(np.abs(np.asarray(start.means) - X.mean(axis=0)) < 1.5)


def test_user_inits_override_method():
    X = _blobs(4)
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    means = np.array([[1.0, 1.0], [9.0, 1.0], [1.0, 9.0], [9.0, 9.0]])
    precisions = np.array([1.0, 2.0, 3.0, 4.0])
    start = jaxgmm.fit(
        X,
        4,
        covariance_type="spherical",
        max_iter=0,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    ).params
    np.testing.assert_allclose(start.weights, weights)
    np.testing.assert_allclose(start.means, means, rtol=1e-12)
    np.testing.assert_allclose(start.covariances, 1.0 / precisions, rtol=1e-12)
    np.testing.assert_allclose(start.precisions_cholesky, np.sqrt(precisions), rtol=1e-12)


def test_prefix_sums_match_numpy_and_repeat_across_zeros_within_blocks():
    import jax.numpy as jnp

    from jaxgmm._init import prefix_sums

    rng = np.random.default_rng(1)
    values = rng.random(10_007).astype(np.float32)
    values[rng.integers(0, values.size, 2_000)] = 0.0
    sums = np.asarray(prefix_sums(jnp.asarray(values)))
    reference = np.cumsum(values.astype(np.float64))
    np.testing.assert_allclose(sums, reference, rtol=0, atol=1e-6 * reference[-1])
    inside = np.nonzero((values == 0) & (np.arange(values.size) % 64 != 0))[0]
    np.testing.assert_array_equal(sums[inside], sums[inside - 1])


def test_inverse_cdf_picks_never_land_on_zero_potential():
    """u at the end of every block of prefix sums: where a rounding sliver can give a
    zero-potential row at the next block's start a share (checked to happen here)."""
    import jax
    import jax.numpy as jnp

    from jaxgmm._init import _last_positive, pick_rows, prefix_sums

    rng = np.random.default_rng(0)
    potential = rng.random(200_000).astype(np.float32)
    potential[::64] = 0.0
    potential[1::64] = 0.0
    potential[rng.integers(0, potential.size, 5_000)] = 0.0
    sums = np.asarray(prefix_sums(jnp.asarray(potential)))
    u = sums[np.arange(64, potential.size, 64) - 1][:2_000].reshape(500, 4)
    plain = np.minimum(np.searchsorted(sums, u, side="right"), int(_last_positive(potential)))
    assert (potential[plain] == 0).any()  # the slivers exist: the test can fail
    picks = np.asarray(jax.jit(jax.vmap(pick_rows, in_axes=(None, 0)))(potential, u))
    assert (potential[picks] > 0).all()
    unbatched = np.asarray(jax.jit(pick_rows)(potential, u[0]))
    np.testing.assert_array_equal(unbatched, picks[0])
    kept = potential[plain] > 0
    np.testing.assert_array_equal(picks[kept], plain[kept])


def test_chunked_draws_follow_the_potential_and_skip_zeros():
    """Many chunks: a chunk by the chunk totals, then a row in it. Draws at every
    chunk boundary (and just around it) land on rows with potential, whole zero
    chunks are never chosen, and random draws follow the potential."""
    import jax
    import jax.numpy as jnp

    from jaxgmm._init import _pick_in_chunks, prefix_sums

    rng = np.random.default_rng(2)
    n_chunks, chunk = 40, 128
    potential = rng.random((n_chunks, chunk)).astype(np.float32)
    potential[:, :3] = 0.0  # zeros at every chunk start and end
    potential[:, -2:] = 0.0
    potential[[0, 7, 8, 39]] = 0.0  # whole chunks without potential
    potential[rng.random(potential.shape) < 0.2] = 0.0
    totals = jnp.asarray(potential.sum(axis=1))
    pick = jax.jit(_pick_in_chunks)
    bounds = np.asarray(prefix_sums(totals))
    u = np.concatenate([bounds, np.nextafter(bounds, 0), np.nextafter(bounds, np.inf), [0.0]])
    picks = np.asarray(pick(jnp.asarray(potential), totals, jnp.asarray(u, jnp.float32)))
    assert (potential.reshape(-1)[picks] > 0).all()
    u = jax.random.uniform(jax.random.key(1), (100_000,), jnp.float32) * bounds[-1]
    picks = np.asarray(pick(jnp.asarray(potential), totals, u))
    assert (potential.reshape(-1)[picks] > 0).all()
    per_chunk = np.bincount(picks // chunk, minlength=n_chunks)
    expected = 100_000 * potential.sum(axis=1) / potential.sum()
    # ~2,700 draws per non-empty chunk: 10 % is more than 5 standard deviations.
    np.testing.assert_allclose(per_chunk, expected, rtol=0.1, atol=0)
    # Within chunks: quarters of every chunk (~650 draws each) within 6 sigma.
    quarters = np.bincount(picks // (chunk // 4), minlength=4 * n_chunks)
    expected = 100_000 * potential.reshape(-1, chunk // 4).sum(axis=1) / potential.sum()
    assert (np.abs(quarters - expected) <= 6 * np.sqrt(expected) + 1).all()
