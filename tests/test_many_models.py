"""Many independent models in one program: jax.vmap over fit, and fit_many."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm


def _datasets(n_sets: int, n_points: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(n_sets, 3, 2))
    labels = rng.integers(0, 3, size=(n_sets, n_points))
    noise = rng.normal(size=(n_sets, n_points, 2))
    return np.take_along_axis(centers, labels[..., None], axis=1) + noise


def test_vmap_over_64_datasets_equals_separate_fits():
    X = _datasets(64, 50)
    keys = jax.random.split(jax.random.key(0), 64)
    batched = jax.vmap(lambda x, k: jaxgmm.fit(x, 3, key=k, max_iter=30))(jnp.asarray(X), keys)
    assert batched.params.means.shape == (64, 3, 2)
    for b in range(64):
        single = jaxgmm.fit(X[b], 3, key=keys[b], max_iter=30)
        np.testing.assert_allclose(
            batched.params.means[b], single.params.means, rtol=1e-9, atol=1e-9
        )
        np.testing.assert_allclose(
            batched.params.covariances[b], single.params.covariances, rtol=1e-9, atol=1e-9
        )
        np.testing.assert_allclose(batched.params.weights[b], single.params.weights, rtol=1e-9)
        assert int(batched.n_iter[b]) == int(single.n_iter)


def test_fit_many_ragged_equals_separate_fits():
    """Padding with zero-weight rows changes nothing."""
    X = _datasets(4, 60, seed=1)
    sizes = [60, 35, 48, 20]
    ragged = [X[b, :n] for b, n in enumerate(sizes)]
    many = jaxgmm.fit_many(ragged, 3, key=7, covariance_type="diag", max_iter=40)
    assert many.params.means.shape == (4, 3, 2)
    for b, data in enumerate(ragged):
        key = jax.random.fold_in(jax.random.key(7), b)
        single = jaxgmm.fit(data, 3, key=key, covariance_type="diag", max_iter=40)
        np.testing.assert_allclose(many.params.means[b], single.params.means, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(
            many.params.covariances[b], single.params.covariances, rtol=1e-8, atol=1e-9
        )
        np.testing.assert_allclose(
            float(many.lower_bound[b]), float(single.lower_bound), rtol=1e-10
        )


def test_fit_under_jit():
    X = _datasets(1, 80)[0]
    jitted = jax.jit(lambda x: jaxgmm.fit(x, 3, key=1, covariance_type="tied"))(jnp.asarray(X))
    eager = jaxgmm.fit(X, 3, key=1, covariance_type="tied")
    np.testing.assert_allclose(jitted.params.means, eager.params.means, rtol=1e-10)
