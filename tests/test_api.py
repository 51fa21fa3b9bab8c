"""The functional API on fitted parameters, against numpy/scipy references."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import jaxgmm

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def _params(covariance_type: str, seed: int = 0) -> jaxgmm.GaussianMixtureParams:
    """A random 3-component mixture in 2-D built through fit(max_iter=0) from its parts."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(30, 2))
    a = rng.normal(size=(3, 2, 2))
    precisions = {
        "full": a @ np.swapaxes(a, 1, 2) + np.eye(2),
        "tied": a[0] @ a[0].T + np.eye(2),
        "diag": rng.uniform(0.5, 2.0, size=(3, 2)),
        "spherical": rng.uniform(0.5, 2.0, size=3),
    }[covariance_type]
    result = jaxgmm.fit(
        X,
        3,
        covariance_type=covariance_type,
        max_iter=0,
        weights_init=np.array([0.2, 0.3, 0.5]),
        means_init=rng.normal(size=(3, 2)) * 3,
        precisions_init=precisions,
    )
    return result.params


def _as_full(values, params) -> np.ndarray:
    """Covariance-type shaped matrices (covariances or precisions) -> (K, D, D)."""
    values = np.asarray(values)
    k, d = params.n_components, params.n_features
    if params.covariance_type == "full":
        return values
    if params.covariance_type == "tied":
        return np.broadcast_to(values, (k, d, d))
    if params.covariance_type == "diag":
        return np.stack([np.diag(v) for v in values])
    return values[:, None, None] * np.eye(d)


def _full_covariances(params) -> np.ndarray:
    return _as_full(params.covariances, params)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_scores_match_scipy(covariance_type):
    params = _params(covariance_type)
    covariances = _full_covariances(params)
    # Covariances are consistent with the precision Cholesky factors.
    np.testing.assert_allclose(
        np.linalg.inv(covariances), _as_full(params.precisions, params), rtol=1e-10
    )
    X = np.random.default_rng(1).normal(size=(40, 2)) * 2
    log_joint = np.stack(
        [
            np.log(w) + multivariate_normal(m, c).logpdf(X)
            for w, m, c in zip(params.weights, params.means, covariances, strict=True)
        ],
        axis=1,
    )
    expected = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(jaxgmm.score_samples(params, X), expected, rtol=1e-10)
    np.testing.assert_allclose(float(jaxgmm.score(params, X)), expected.mean(), rtol=1e-10)
    proba = np.asarray(jaxgmm.predict_proba(params, X))
    np.testing.assert_allclose(proba, np.exp(log_joint - expected[:, None]), atol=1e-12)
    np.testing.assert_array_equal(jaxgmm.predict(params, X), log_joint.argmax(axis=1))
    n, p = len(X), jaxgmm.n_parameters(params)
    np.testing.assert_allclose(float(jaxgmm.bic(params, X)), -2 * expected.sum() + p * np.log(n))
    np.testing.assert_allclose(float(jaxgmm.aic(params, X)), -2 * expected.sum() + 2 * p)


def test_weighted_score():
    params = _params("full")
    X = np.random.default_rng(2).normal(size=(10, 2))
    w = np.arange(10.0)
    expected = np.sum(w * np.asarray(jaxgmm.score_samples(params, X))) / w.sum()
    np.testing.assert_allclose(float(jaxgmm.score(params, X, sample_weight=w)), expected)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_moments(covariance_type):
    params = _params(covariance_type, seed=3)
    X, labels = jaxgmm.sample(params, 60_000, key=4)
    X, labels = np.asarray(X), np.asarray(labels)
    assert X.shape == (60_000, 2) and labels.shape == (60_000,)
    assert np.all(np.diff(labels) >= 0), "samples are grouped by component"
    covariances = _full_covariances(params)
    for k in range(3):
        part = X[labels == k]
        np.testing.assert_allclose(len(part) / len(X), params.weights[k], atol=0.01)
        # Standard errors: ~sqrt(var / n) for means, ~sqrt(2/n) relative for variances.
        np.testing.assert_allclose(
            part.mean(axis=0),
            params.means[k],
            atol=5 * np.sqrt(covariances[k].diagonal().max() / len(part)),
        )
        np.testing.assert_allclose(
            np.cov(part.T), covariances[k], rtol=0.06, atol=0.06 * covariances[k].diagonal().max()
        )


# The chunk loop is the same for every covariance type; each type's per-chunk statistics
# over several chunks (the last one padded) are checked in test_engine_numerics.py
# (test_fused_e_step_matches_generic_path). Here: a matrix type and tied (its fused kernel
# sums moments around zero).
@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_chunking_does_not_change_the_fit(covariance_type):
    X = np.random.default_rng(5).normal(size=(1000, 3))
    X[:400] += 5
    whole = jaxgmm.fit(X, 2, covariance_type=covariance_type, chunk_size=1000, key=3)
    chunked = jaxgmm.fit(X, 2, covariance_type=covariance_type, chunk_size=96, key=3)
    np.testing.assert_allclose(chunked.params.means, whole.params.means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        chunked.params.covariances, whole.params.covariances, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(float(chunked.lower_bound), float(whole.lower_bound), rtol=1e-12)


def test_dtypes_follow_the_input():
    X = np.random.default_rng(6).normal(size=(50, 2))
    assert jaxgmm.fit(X.astype(np.float32), 2).params.means.dtype == np.float32
    assert jaxgmm.fit(X.astype(np.int64) * 1.0, 2).params.means.dtype == np.float64
    assert jaxgmm.fit(X.astype(np.float16), 2).params.means.dtype == np.float32
    assert jaxgmm.fit((X * 10).astype(np.int32), 2).params.means.dtype == np.float32


def test_key_accepts_seed_and_jax_keys():
    X = np.random.default_rng(7).normal(size=(50, 2))
    a = jaxgmm.fit(X, 2, key=3, init="random")
    b = jaxgmm.fit(X, 2, key=jax.random.key(3), init="random")
    c = jaxgmm.fit(X, 2, key=jax.random.PRNGKey(3), init="random")
    np.testing.assert_array_equal(a.params.means, b.params.means)
    assert np.all(np.isfinite(c.params.means))


def test_result_fields():
    X = np.random.default_rng(8).normal(size=(80, 2))
    result = jaxgmm.fit(X, 2, max_iter=50, tol=1e-3)
    n_iter = int(result.n_iter)
    assert 1 <= n_iter <= 50
    history = np.asarray(result.history)
    assert history.shape == (50,)
    assert np.all(np.isfinite(history[:n_iter])) and np.all(np.isnan(history[n_iter:]))
    assert float(result.lower_bound) == history[n_iter - 1]
    assert bool(result.converged) == (int(result.status) == jaxgmm.Status.CONVERGED)
    capped = jaxgmm.fit(X, 2, max_iter=2, tol=0.0)
    assert int(capped.status) == jaxgmm.Status.MAX_ITER and not bool(capped.converged)
