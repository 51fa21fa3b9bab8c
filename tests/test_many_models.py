"""Many independent models in one program: jax.vmap over fit, and fit_many."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm


def _datasets(n_sets: int, n_points: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(n_sets, 3, 2))
    labels = rng.integers(0, 3, size=(n_sets, n_points))
    noise = rng.normal(size=(n_sets, n_points, 2))
    return np.take_along_axis(centers, labels[..., None], axis=1) + noise


def test_vmap_over_16_datasets_equals_separate_fits():
    X = _datasets(16, 50)
    keys = jax.random.split(jax.random.key(0), 16)
    batched = jax.vmap(lambda x, k: jaxgmm.fit(x, 3, key=k, max_iter=30))(jnp.asarray(X), keys)
    assert batched.params.means.shape == (16, 3, 2)
    for b in range(16):
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
    # Padded to 60 rows in fit_many; the separate fits all pad to the same 64-row bucket
    # (one compiled program for the four).
    sizes = [60, 45, 52, 49]
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


def test_fit_many_centres_precise_input_per_data_set_like_fit():
    """x64 off: float64 data sets far from the origin (each its own offset, spread 1e-3)
    are centred in float64 before the float32 cast, as fit does; a cast first would round
    every point of a set to the same float32 number."""
    base = _datasets(2, 80, seed=3) * 1e-3
    offsets = np.array([[1e6, -2e6], [3e5, 7e5]])
    data = base + offsets[:, None, :]
    means_init = offsets[0] + 1e-3 * np.array([[-2.0, -2.0], [0.0, 0.0], [2.0, 2.0]])
    with jax.enable_x64(False):
        many = jaxgmm.fit_many(data, 3, key=4, max_iter=30, reg_covar=1e-12)
        seeded = jaxgmm.fit_many(data[:1], 3, means_init=means_init, max_iter=30, reg_covar=1e-12)
        with pytest.warns(UserWarning, match="resolves numbers near"):
            singles = [
                jaxgmm.fit(
                    data[b],
                    3,
                    key=jax.random.fold_in(jax.random.key(4), b),
                    max_iter=30,
                    reg_covar=1e-12,
                )
                for b in range(2)
            ]
            seeded_single = jaxgmm.fit(
                data[0],
                3,
                key=jax.random.fold_in(jax.random.key(0), 0),
                means_init=means_init,
                max_iter=30,
                reg_covar=1e-12,
            )
    assert many.params.means.dtype == np.float32
    for b, single in enumerate(singles):
        assert int(many.status[b]) == int(single.status)
        np.testing.assert_allclose(float(many.lower_bound[b]), float(single.lower_bound), rtol=1e-4)
        np.testing.assert_allclose(
            np.sort(many.params.weights[b]), np.sort(single.params.weights), atol=1e-4
        )
        spacing = np.spacing(np.float32(np.abs(offsets[b]).max()))
        np.testing.assert_allclose(
            np.sort(np.asarray(many.params.means[b], np.float64), axis=0),
            np.sort(np.asarray(single.params.means, np.float64), axis=0),
            rtol=0,
            atol=2 * spacing,
        )
    np.testing.assert_allclose(
        float(seeded.lower_bound[0]), float(seeded_single.lower_bound), rtol=1e-4
    )
