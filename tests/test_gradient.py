"""Gradient fitting with optax, the unconstrained parametrisation, and differentiable scores.

References: round trips, central finite differences in float64, and EM's optimum
from the same start.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxgmm

MATRIX_TYPES = ("full", "tied")


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    means = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    return means[labels] + rng.normal(size=(n, 2)) * 0.8


def _random_params(covariance_type, seed=0, k=2, d=2):
    """Random valid parameters built in NumPy (covariances from random factors)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": np.einsum("kdd->kd", full),
        "spherical": np.einsum("kdd->k", full) / d,
    }[covariance_type]
    if covariance_type in MATRIX_TYPES:
        precisions = np.linalg.inv(covariances)
        # Upper U with U U^T = precision (flip trick).
        flip = precisions[..., ::-1, ::-1]
        chol = np.linalg.cholesky(flip)[..., ::-1, ::-1]
    else:
        chol = 1.0 / np.sqrt(covariances)
    return jaxgmm.GaussianMixtureParams(
        weights=jnp.asarray(weights),
        means=jnp.asarray(means),
        covariances=jnp.asarray(covariances),
        precisions_cholesky=jnp.asarray(chol),
        covariance_type=covariance_type,
    )


@pytest.mark.parametrize("covariance_type", jaxgmm.COVARIANCE_TYPES)
def test_unconstrained_round_trip(covariance_type):
    params = _random_params(covariance_type)
    back = jaxgmm.from_unconstrained(jaxgmm.to_unconstrained(params), covariance_type)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(getattr(back, name), getattr(params, name), rtol=1e-12)
    # Any values describe a valid mixture, and coming back gives the same coordinates
    # (the strictly lower triangle of a matrix factor is not a coordinate).
    shape = params.precisions_cholesky.shape
    rng = np.random.default_rng(1)
    raw = jaxgmm.UnconstrainedParams(
        logits=jnp.asarray(rng.normal(size=2)),
        means=jnp.asarray(rng.normal(size=(2, 2))),
        cholesky=jnp.asarray(rng.normal(size=shape)),
    )
    made = jaxgmm.from_unconstrained(raw, covariance_type)
    np.testing.assert_allclose(np.sum(made.weights), 1.0, rtol=1e-14)
    again = jaxgmm.to_unconstrained(made)
    expected = np.asarray(raw.cholesky)
    if covariance_type in MATRIX_TYPES:
        expected = np.triu(expected)
        assert np.all(np.linalg.eigvalsh(np.asarray(made.covariances)) > 0)
    np.testing.assert_allclose(again.cholesky, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jax.nn.softmax(again.logits), jax.nn.softmax(raw.logits), rtol=1e-12)


def _central_differences(f, x, h=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (float(f(x + step)) - float(f(x - step))) / (2 * h)
    return grad


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_score_is_differentiable_in_parameters_and_data(covariance_type):
    params = _random_params(covariance_type, seed=2)
    X = _data(6, seed=3)
    raw = jaxgmm.to_unconstrained(params)

    def score_of(raw):
        return jaxgmm.score(jaxgmm.from_unconstrained(raw, covariance_type), X)

    grads = jax.grad(score_of)(raw)
    for field in raw._fields:

        def along(value, field=field):
            return score_of(raw._replace(**{field: jnp.asarray(value)}))

        reference = _central_differences(along, getattr(raw, field))
        if field == "cholesky" and reference.ndim == 3:  # lower triangle: not a coordinate
            reference = np.triu(reference)
            np.testing.assert_allclose(np.tril(np.asarray(grads.cholesky), -1), 0.0, atol=1e-12)
        np.testing.assert_allclose(getattr(grads, field), reference, rtol=1e-6, atol=1e-8)

    def total(X):
        return jnp.sum(jaxgmm.score_samples(params, X))

    reference = _central_differences(total, X)
    np.testing.assert_allclose(jax.grad(total)(jnp.asarray(X)), reference, rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def data():
    return _data()


GOOD_START = np.array([[0.3, -0.2], [3.3, 0.2], [-0.2, 2.7]])
POOR_START = np.array([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2]])  # all means together


def test_adam_reaches_em_optimum_from_the_same_start(data):
    start = jaxgmm.fit(data, 3, max_iter=0, means_init=GOOD_START).params
    result = jaxgmm.fit_gradient(
        data, 3, optimizer=optax.adam(0.02), n_steps=3000, means_init=GOOD_START
    )
    # EM's optimum from the same start, by scikit-learn.
    em = SkGaussianMixture(
        3,
        tol=1e-10,
        max_iter=1000,
        weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means),
        precisions_init=np.asarray(start.precisions),
    ).fit(data)
    assert abs(float(result.lower_bound) - em.score(data)) < 2e-3
    # The same start: the first loss is the starting parameters' negative score.
    np.testing.assert_allclose(result.history[0], -jaxgmm.score(start, data), rtol=1e-12)
    np.testing.assert_allclose(result.lower_bound, jaxgmm.score(result.params, data), rtol=1e-12)
    assert result.history.shape == (3000,)
    assert int(result.status) == jaxgmm.Status.MAX_ITER and not bool(result.converged)
    assert int(result.n_iter) == 3000


def test_minibatches_improve_the_fit(data):
    start = jaxgmm.fit(data, 3, max_iter=0, means_init=POOR_START).params
    result = jaxgmm.fit_gradient(data, 3, n_steps=300, batch_size=64, key=1, means_init=POOR_START)
    assert float(result.lower_bound) > float(jaxgmm.score(start, data)) + 0.1
    assert np.all(np.isfinite(result.history))


def test_a_non_finite_step_keeps_the_last_finite_parameters(data):
    def nan_updates(grads, state, params=None):
        return jax.tree_util.tree_map(lambda g: g * jnp.nan, grads), state

    poisoned = optax.GradientTransformation(lambda params: optax.EmptyState(), nan_updates)
    start = jaxgmm.fit(data, 3, max_iter=0, means_init=GOOD_START).params
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = jaxgmm.fit_gradient(data, 3, optimizer=poisoned, n_steps=4, means_init=GOOD_START)
    assert int(result.status) == jaxgmm.Status.NON_FINITE
    np.testing.assert_allclose(result.params.means, start.means, rtol=1e-12)
    np.testing.assert_allclose(result.params.weights, start.weights, rtol=1e-12)
    assert np.isfinite(result.history[0]) and np.all(np.isnan(result.history[1:]))


def test_invalid_input_raises_plain_errors(data):
    for bad, error in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="n_steps"):
            jaxgmm.fit_gradient(data, 3, n_steps=bad)
    for bad, error in ((0, ValueError), (len(data) + 1, ValueError), (8.0, TypeError)):
        with pytest.raises(error, match="batch_size"):
            jaxgmm.fit_gradient(data, 3, batch_size=bad)
    with pytest.raises(TypeError, match="optimizer"):
        jaxgmm.fit_gradient(data, 3, optimizer="adam")
    bad = data.copy()
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        jaxgmm.fit_gradient(bad, 3)
    with pytest.raises(ValueError, match="covariance_type"):
        jaxgmm.fit_gradient(data, 3, covariance_type="diagonal")


# ---------------------------------------------------------------- data read in chunks


def test_streamed_full_batch_steps_equal_in_memory_steps(data, tmp_path):
    """batch_size=None on a file: the exact gradient summed over chunks, step for step."""
    path = tmp_path / "data.npy"
    np.save(path, data)
    options = dict(optimizer=optax.adam(0.02), n_steps=40, means_init=GOOD_START)
    in_memory = jaxgmm.fit_gradient(data, 3, **options)
    streamed = jaxgmm.fit_gradient(str(path), 3, chunk_rows=128, **options)  # 3 chunks
    np.testing.assert_allclose(streamed.history, in_memory.history, rtol=1e-9)
    np.testing.assert_allclose(streamed.lower_bound, in_memory.lower_bound, rtol=1e-9)
    for field in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            getattr(streamed.params, field), getattr(in_memory.params, field), rtol=1e-7
        )
    np.testing.assert_allclose(streamed.lower_bound, jaxgmm.score(streamed.params, data))


def test_streamed_minibatches_from_a_callable_improve_the_fit(data):
    def chunks():
        return (data[i : i + 100] for i in range(0, len(data), 100))

    start = jaxgmm.fit(data, 3, max_iter=0, means_init=POOR_START).params
    result = jaxgmm.fit_gradient(chunks, 3, n_steps=300, batch_size=64, means_init=POOR_START)
    assert float(result.lower_bound) > float(jaxgmm.score(start, data)) + 0.1
    assert np.all(np.isfinite(result.history)) and result.history.shape == (300,)
    np.testing.assert_allclose(result.lower_bound, jaxgmm.score(result.params, data))


def test_a_non_finite_streamed_step_keeps_the_last_finite_parameters(data, tmp_path):
    def nan_updates(grads, state, params=None):
        return jax.tree_util.tree_map(lambda g: g * jnp.nan, grads), state

    poisoned = optax.GradientTransformation(lambda params: optax.EmptyState(), nan_updates)
    path = tmp_path / "data.npy"
    np.save(path, data)
    start = jaxgmm.fit(data, 3, max_iter=0, means_init=GOOD_START).params
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = jaxgmm.fit_gradient(
            path, 3, optimizer=poisoned, n_steps=4, batch_size=50, means_init=GOOD_START
        )
    assert int(result.status) == jaxgmm.Status.NON_FINITE
    np.testing.assert_allclose(result.params.means, start.means, rtol=1e-9)
    assert np.isfinite(result.history[0]) and np.all(np.isnan(result.history[1:]))
    with pytest.raises(ValueError, match="chunk_rows"):
        jaxgmm.fit_gradient(data, 3, chunk_rows=100)
    with pytest.raises(ValueError, match="batch_size"):
        jaxgmm.fit_gradient(path, 3, batch_size=0)


def test_minibatch_draws_never_pick_zero_weight_rows():
    """Adversarial draws (at every prefix sum, and at the total) land on rows with
    weight; plain searchsorted picks the zero-weight last row for u = total."""
    from jaxgmm._gradient import weighted_draw_tables, weighted_rows

    rng = np.random.default_rng(3)
    weight = rng.uniform(0.1, 3.0, size=3_000).astype(np.float32)
    weight[rng.uniform(size=weight.shape) < 0.3] = 0.0
    weight[:5] = 0.0  # zero rows before the first positive one
    weight[-7:] = 0.0  # and after the last (padding rows)
    cumulative, at_or_before = weighted_draw_tables(jnp.asarray(weight))
    c = np.asarray(cumulative)
    u = np.concatenate([c, np.nextafter(c, 0), np.nextafter(c, np.inf), [c[-1]]])
    u = jnp.asarray(u.astype(np.float32))
    rows = np.asarray(weighted_rows(cumulative, at_or_before, u))
    assert (weight[rows] > 0).all()
    plain = np.minimum(np.searchsorted(c, np.asarray(u), side="right"), weight.size - 1)
    assert (weight[plain] == 0).any()  # the lookup above is needed
    # Random draws follow the weights.
    u = jax.random.uniform(jax.random.key(0), (200_000,), jnp.float32) * cumulative[-1]
    counts = np.bincount(np.asarray(weighted_rows(cumulative, at_or_before, u)), minlength=3_000)
    expected = 200_000 * weight / weight.sum()
    # Blocks of 300 rows: ~20,000 draws each, so 5 % is more than 7 standard deviations.
    blocks = np.add.reduceat(counts, np.arange(0, 3_000, 300))
    np.testing.assert_allclose(
        blocks, np.add.reduceat(expected, np.arange(0, 3_000, 300)), rtol=0.05
    )
    assert counts[weight == 0].sum() == 0
