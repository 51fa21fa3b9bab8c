"""Online (stepwise) EM: jaxgmm.online_em and GaussianMixture.partial_fit.

References are independent of the code under test: the true parameters of the
simulated mixture, scikit-learn's EM step, and a NumPy re-implementation of the running
averages of the statistics.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxgmm

TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])
TRUE_MEANS = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
TRUE_SCALE = 0.7


def draw(rng, n):
    labels = rng.choice(3, size=n, p=TRUE_WEIGHTS)
    return TRUE_MEANS[labels] + rng.normal(size=(n, 2)) * TRUE_SCALE


def matched(means, weights):
    """Components reordered to the true ones (nearest mean)."""
    order = [int(np.argmin(np.linalg.norm(np.asarray(means) - m, axis=1))) for m in TRUE_MEANS]
    assert sorted(order) == [0, 1, 2]
    return np.asarray(means)[order], np.asarray(weights)[order]


def starting_params(covariance_type):
    """A rough start: shifted means, equal weights, variances 0.6 (built in NumPy)."""
    shape = {"full": (3, 2, 2), "tied": (2, 2), "diag": (3, 2), "spherical": (3,)}
    shape = shape[covariance_type]
    if len(shape) >= 2 and shape[-1] == shape[-2] == 2:
        covariances = np.broadcast_to(0.6 * np.eye(2), shape)
    else:
        covariances = np.full(shape, 0.6)
    chol = np.where(covariances > 0, 1.0 / np.sqrt(np.where(covariances > 0, covariances, 1)), 0)
    return jaxgmm.GaussianMixtureParams(
        weights=jnp.full(3, 1.0 / 3.0),
        means=jnp.asarray(TRUE_MEANS + np.array([0.3, -0.2])),
        covariances=jnp.asarray(covariances),
        precisions_cholesky=jnp.asarray(chol),
        covariance_type=covariance_type,
    )


@pytest.fixture(scope="module")
def start():
    first = draw(np.random.default_rng(1), 500)
    return first, {ct: starting_params(ct) for ct in jaxgmm.COVARIANCE_TYPES}


def test_stream_of_300_batches_recovers_the_mixture(start):
    first, params = start
    rng = np.random.default_rng(2)
    online = jaxgmm.online_em(3)
    state = online.init(params["full"])
    update = jax.jit(online.update)
    for _ in range(300):
        fitted, state = update(draw(rng, 500), state)
    means, weights = matched(fitted.means, fitted.weights)
    assert int(state.count) == 300
    np.testing.assert_allclose(means, TRUE_MEANS, atol=0.05)
    np.testing.assert_allclose(weights, TRUE_WEIGHTS, atol=0.01)
    expected = np.broadcast_to(np.eye(2) * TRUE_SCALE**2, (3, 2, 2))
    np.testing.assert_allclose(fitted.covariances, expected, atol=0.05)


@pytest.mark.parametrize("covariance_type", jaxgmm.COVARIANCE_TYPES)
def test_unit_step_is_one_em_step_as_in_sklearn(start, covariance_type):
    """With rho = 1 an update is one EM iteration on the batch from the current parameters."""
    first, params = start
    p0 = params[covariance_type]
    batch = draw(np.random.default_rng(3), 500)
    online = jaxgmm.online_em(3, covariance_type=covariance_type, step_size=1.0)
    fitted, state = online.update(batch, online.init(p0))
    reference = SkGaussianMixture(
        3,
        covariance_type=covariance_type,
        max_iter=1,
        init_params="random_from_data",
        weights_init=np.asarray(p0.weights),
        means_init=np.asarray(p0.means),
        precisions_init=np.asarray(p0.precisions),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference.fit(batch)
    np.testing.assert_allclose(fitted.weights, reference.weights_, rtol=1e-9)
    np.testing.assert_allclose(fitted.means, reference.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fitted.covariances, reference.covariances_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        fitted.precisions_cholesky, reference.precisions_cholesky_, rtol=1e-7
    )
    # The batch's mean log-likelihood under the parameters before the update.
    before = SkGaussianMixture(3, covariance_type=covariance_type)
    before.weights_, before.means_ = np.asarray(p0.weights), np.asarray(p0.means)
    before.precisions_cholesky_ = np.asarray(p0.precisions_cholesky)
    np.testing.assert_allclose(state.log_likelihood, before.score(batch), rtol=1e-12)


def _numpy_log_resp(X, weights, means, covariances):
    """Log responsibilities for (K, D, D) covariance matrices."""
    log_dens = []
    for w, m, c in zip(weights, means, covariances, strict=True):
        diff = X - m
        maha = np.sum(diff @ np.linalg.inv(c) * diff, axis=1)
        _, log_det = np.linalg.slogdet(c)
        log_dens.append(np.log(w) - 0.5 * (maha + log_det + X.shape[1] * np.log(2 * np.pi)))
    log_dens = np.stack(log_dens, axis=1)
    top = log_dens.max(axis=1, keepdims=True)
    return log_dens - (top + np.log(np.exp(log_dens - top).sum(axis=1, keepdims=True)))


@pytest.mark.parametrize("covariance_type", ["full"])
def test_updates_average_normalised_statistics(start, covariance_type):
    """Three updates with rho = 0.5, 0.25, 0.4 against raw moments averaged in NumPy."""
    first, params = start
    reg = 1e-6
    rhos = [0.5, 0.25, 0.4]
    rng = np.random.default_rng(4)
    batches = [draw(rng, 500) for _ in rhos]
    p0 = params[covariance_type]
    as_matrices = np.diag if covariance_type == "diag" else np.asarray
    weights, means = np.asarray(p0.weights), np.asarray(p0.means)
    covs = np.stack([as_matrices(c) for c in np.asarray(p0.covariances)])
    # Raw moments of the initial parameters: n_k, sum x, sum x x^T (per unit weight).
    n_k = weights
    m1 = weights[:, None] * means
    m2 = weights[:, None, None] * (covs + np.einsum("kd,ke->kde", means, means))
    state = jaxgmm.online_em(3, covariance_type=covariance_type).init(p0)
    for rho, batch in zip(rhos, batches, strict=True):
        online = jaxgmm.online_em(3, covariance_type=covariance_type, step_size=rho)
        fitted, state = online.update(batch, state)
        resp = np.exp(_numpy_log_resp(batch, weights, means, covs)) / len(batch)
        n_k = (1 - rho) * n_k + rho * resp.sum(axis=0)
        m1 = (1 - rho) * m1 + rho * resp.T @ batch
        m2 = (1 - rho) * m2 + rho * np.einsum("nk,nd,ne->kde", resp, batch, batch)
        weights = n_k / n_k.sum()
        means = m1 / n_k[:, None]
        covs = m2 / n_k[:, None, None] - np.einsum("kd,ke->kde", means, means)
        if covariance_type == "diag":
            covs = np.stack([np.diag(np.diag(c)) for c in covs])
        covs = covs + reg * np.eye(2)
        np.testing.assert_allclose(fitted.weights, weights, rtol=1e-9)
        np.testing.assert_allclose(fitted.means, means, rtol=1e-9, atol=1e-12)
        got = np.stack([as_matrices(c) for c in np.asarray(fitted.covariances)])
        np.testing.assert_allclose(got, covs, rtol=1e-8, atol=1e-12)
    assert int(state.count) == 3


def test_integer_sample_weights_count_repeated_rows(start):
    first, params = start
    weights = np.random.default_rng(7).integers(0, 3, size=len(first))
    online = jaxgmm.online_em(3, step_size=0.5)
    state = online.init(params["full"])
    weighted, weighted_state = online.update(first, state, sample_weight=weights)
    repeated, repeated_state = online.update(np.repeat(first, weights, axis=0), state)
    np.testing.assert_allclose(weighted.means, repeated.means, rtol=1e-10)
    np.testing.assert_allclose(weighted.covariances, repeated.covariances, rtol=1e-10)
    np.testing.assert_allclose(
        weighted_state.log_likelihood, repeated_state.log_likelihood, rtol=1e-12
    )


def test_default_step_sizes_and_schedules(start):
    """(t + t0)^-kappa, a callable and an optax schedule give the steps they say."""
    first, params = start
    rng = np.random.default_rng(5)
    batches = [draw(rng, 500) for _ in range(3)]
    default = jaxgmm.online_em(3, kappa=0.7, t0=2.0)
    explicit = jaxgmm.online_em(3, step_size=lambda count: (count + 3.0) ** -0.7)
    schedule = optax.polynomial_schedule(1.0, 1.0 / 3.0, power=1, transition_steps=2)
    linear = jaxgmm.online_em(3, step_size=schedule)  # 1, 2/3, 1/3
    results = []
    for online in (default, explicit, linear):
        state = online.init(params["full"])
        for batch in batches:
            fitted, state = online.update(batch, state)
        results.append(fitted)
    np.testing.assert_allclose(results[0].means, results[1].means, rtol=1e-12)
    np.testing.assert_allclose(results[0].weights, results[1].weights, rtol=1e-12)
    steps = jnp.array([1.0, 2.0 / 3.0, 1.0 / 3.0])
    by_hand = jaxgmm.online_em(3, step_size=lambda count: steps[count])
    state = by_hand.init(params["full"])
    for batch in batches:
        fitted, state = by_hand.update(batch, state)
    # optax schedules compute in float32.
    np.testing.assert_allclose(results[2].means, fitted.means, rtol=1e-6)
    assert not np.allclose(results[2].means, results[0].means, rtol=1e-6)


def test_invalid_options_and_batches_raise_plain_errors(start):
    first, params = start
    for kappa in (0.5, 1.2, float("nan")):
        with pytest.raises(ValueError, match="kappa"):
            jaxgmm.online_em(3, kappa=kappa)
    with pytest.raises(TypeError, match="kappa"):
        jaxgmm.online_em(3, kappa="0.6")
    with pytest.raises(ValueError, match="t0"):
        jaxgmm.online_em(3, t0=-1.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="step_size"):
            jaxgmm.online_em(3, step_size=bad)
    with pytest.raises(TypeError, match="step_size"):
        jaxgmm.online_em(3, step_size="fast")
    with pytest.raises(ValueError, match="covariance_type"):
        jaxgmm.online_em(3, covariance_type="ful")
    online = jaxgmm.online_em(3)
    state = online.init(params["full"])
    with pytest.raises(ValueError, match="batch has 3 features"):
        online.update(np.zeros((10, 3)), state)
    bad = first[:10].copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="batch contains 1 non-finite"):
        online.update(bad, state)
    with pytest.raises(ValueError, match="sample_weight"):
        online.update(first[:10], state, sample_weight=-np.ones(10))
    with pytest.raises(TypeError, match="OnlineEMState"):
        online.update(first[:10], params["full"])
    with pytest.raises(ValueError, match="covariance_type 'diag'"):
        online.init(params["diag"])
    with pytest.raises(ValueError, match="components"):
        jaxgmm.online_em(2).init(params["full"])


@pytest.fixture(scope="module")
def partial():
    rng = np.random.default_rng(6)
    batches = [draw(rng, 500) for _ in range(4)]
    estimator = jaxgmm.GaussianMixture(3, random_state=0)
    previous = []
    for batch in batches:
        estimator.partial_fit(batch)
        previous.append(
            {k: getattr(estimator, k) for k in ("weights_", "means_", "precisions_cholesky_")}
        )
    return estimator, batches, previous


def test_partial_fit_first_call_is_fit_then_one_update(partial):
    estimator, batches, previous = partial
    fitted = jaxgmm.fit(batches[0], 3, key=0)
    online = jaxgmm.online_em(3)
    state = online.init(fitted.params)
    params, state = online.update(batches[0], state)
    for batch in batches[1:]:
        params, state = online.update(batch, state)
    np.testing.assert_allclose(estimator.means_, params.means, rtol=1e-10)
    np.testing.assert_allclose(estimator.weights_, params.weights, rtol=1e-10)
    assert estimator.n_iter_ == 4
    assert estimator.converged_ is False


def test_partial_fit_attributes_are_consistent(partial):
    estimator, batches, previous = partial
    np.testing.assert_allclose(
        estimator.precisions_, np.linalg.inv(estimator.covariances_), rtol=1e-8
    )
    chol = estimator.precisions_cholesky_
    np.testing.assert_allclose(chol @ np.swapaxes(chol, 1, 2), estimator.precisions_, rtol=1e-8)
    # lower_bound_: the last batch's mean log-likelihood under the previous parameters.
    reference = SkGaussianMixture(3)
    for name in ("weights_", "means_", "precisions_cholesky_"):
        setattr(reference, name, previous[-2][name])
    np.testing.assert_allclose(estimator.lower_bound_, reference.score(batches[-1]), rtol=1e-10)
    np.testing.assert_allclose(estimator.lower_bounds_, [estimator.lower_bound_])


def test_partial_fit_checks_width_and_fit_starts_afresh(partial):
    estimator, batches, previous = partial
    with pytest.raises(ValueError, match="features"):
        estimator.partial_fit(batches[0][:, :1])
    fresh = jaxgmm.GaussianMixture(3, random_state=0).partial_fit(batches[0])
    fresh.partial_fit(batches[1])
    assert fresh.n_iter_ == 2
    fresh.fit(batches[2])
    assert not hasattr(fresh, "_online_state")
    fresh.partial_fit(batches[3])
    assert fresh.n_iter_ == 1
