"""Numerics of the fused E-step kernels (``jaxgmm._covariance``): agreement with the
generic log_prob/statistics path, and float32 accuracy for far-apart components."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm._covariance import covariance_model
from jaxgmm._em import e_step, log_resp_and_norm, m_step
from jaxgmm._rows import IN_MEMORY, split_rows
from jaxgmm._stats import chunk_stats


def _rows(X, weights, chunk_size):
    """Rows in chunks of ``chunk_size``, the last one padded with zero-weight zero rows."""
    n_rows = -(-len(X) // chunk_size) * chunk_size
    X = np.pad(np.asarray(X), ((0, n_rows - len(X)), (0, 0)))
    weights = np.pad(np.asarray(weights, float), (0, n_rows - len(weights)))
    return split_rows(jnp.asarray(X), jnp.asarray(weights), jnp.arange(n_rows), chunk_size)


def _generic_e_step(rows, params):
    """The unfused E-step: log_prob, responsibilities, then statistics."""
    shift = covariance_model(params.covariance_type).shift(params.means)

    def one_chunk(X, w, index):
        log_resp, log_norm = log_resp_and_norm(X, params)
        log_lik = jnp.sum(jnp.where(w > 0, w * log_norm, 0.0))
        return chunk_stats(X, jnp.exp(log_resp), w, shift, params.covariance_type, log_lik)

    return IN_MEMORY.sum(one_chunk, rows)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_fused_e_step_matches_generic_path(covariance_type):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(700, 4)), rng.normal(size=(600, 4)) * 0.5 + 3.0])
    weights = rng.uniform(0.5, 2.0, size=len(X))
    params = jaxgmm.fit(X, 3, covariance_type=covariance_type, max_iter=2, tol=0.0).params
    # chunk of 400 rows -> 4 chunks, the last one padded with zero-weight rows
    rows = _rows(X, weights, 400)
    fused = e_step(rows, params)
    generic = _generic_e_step(rows, params)
    reg = jnp.asarray(1e-6)
    new_fused = m_step(fused, reg, covariance_type)
    new_generic = m_step(generic, reg, covariance_type)
    np.testing.assert_allclose(fused.n_k, generic.n_k, rtol=1e-10)
    np.testing.assert_allclose(fused.log_lik_sum, generic.log_lik_sum, rtol=1e-10)
    np.testing.assert_allclose(fused.n, generic.n, rtol=1e-12)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(
            getattr(new_fused, name), getattr(new_generic, name), rtol=1e-8, atol=1e-10
        )


def test_full_statistics_are_symmetric_and_around_the_means():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5))
    params = jaxgmm.fit(X, 2, max_iter=1, tol=0.0).params
    stats = e_step(_rows(X, np.ones(len(X)), 128), params)
    np.testing.assert_array_equal(stats.shift, params.means)
    np.testing.assert_array_equal(stats.s_xx, np.swapaxes(np.asarray(stats.s_xx), 1, 2))


def _numpy_em_step(X, weights, means, covariances, reg_covar):
    """One float64 EM step (E-step then M-step) for full covariances, in numpy."""
    n_components, n_features = means.shape
    log_prob = np.empty((len(X), n_components))
    for k in range(n_components):
        diff = X - means[k]
        chol = np.linalg.cholesky(covariances[k])
        z = np.linalg.solve(chol, diff.T)
        log_prob[:, k] = (
            np.log(weights[k])
            - 0.5 * (n_features * np.log(2 * np.pi) + np.sum(z * z, axis=0))
            - np.sum(np.log(np.diag(chol)))
        )
    top = log_prob.max(axis=1, keepdims=True)
    resp = np.exp(log_prob - top)
    resp /= resp.sum(axis=1, keepdims=True)
    n_k = resp.sum(axis=0)
    new_means = resp.T @ X / n_k[:, None]
    new_cov = np.empty_like(covariances)
    for k in range(n_components):
        diff = X - new_means[k]
        new_cov[k] = (resp[:, k, None] * diff).T @ diff / n_k[k] + reg_covar * np.eye(n_features)
    return n_k / n_k.sum(), new_means, new_cov


@pytest.mark.parametrize("separation", [10.0, 1e3])
def test_full_float32_exact_for_far_apart_components(separation):
    """float32 covariances of tight components far from the data's centre stay within
    1e-3 (relative) of a float64 reference: statistics are taken around each
    component's mean, not as sum r x x^T - n m m^T."""
    rng = np.random.default_rng(2)
    n_features, n_per = 3, 2000
    scale = rng.normal(size=(n_features, n_features)) * 0.3 + np.eye(n_features)
    true_cov = scale @ scale.T
    sd = np.sqrt(np.max(np.diag(true_cov)))
    offset = np.array([separation * sd / 2, 0.0, 0.0])
    chol = np.linalg.cholesky(true_cov)
    X64 = (
        np.concatenate(
            [
                rng.normal(size=(n_per, n_features)) @ chol.T - offset,
                rng.normal(size=(n_per, n_features)) @ chol.T + offset,
            ]
        )
        + 1e4 * sd
    )  # far from the origin too: the driver centres the data first
    X32 = X64.astype(np.float32)
    means0 = np.stack([X64[:n_per].mean(0), X64[n_per:].mean(0)]) + 0.1 * sd
    cov0 = np.stack([true_cov * 1.3, true_cov * 0.8])
    weights0 = np.array([0.4, 0.6])
    result = jaxgmm.fit(
        X32,
        2,
        max_iter=1,
        tol=0.0,
        reg_covar=0.0,
        weights_init=weights0.astype(np.float32),
        means_init=means0.astype(np.float32),
        precisions_init=np.linalg.inv(cov0).astype(np.float32),
        chunk_size=512,
    )
    assert result.params.covariances.dtype == jnp.float32
    # Reference on exactly the float32 data, in float64.
    ref_w, ref_means, ref_cov = _numpy_em_step(X32.astype(np.float64), weights0, means0, cov0, 0.0)
    got = np.asarray(result.params.covariances, np.float64)
    for k in range(2):
        rel = np.linalg.norm(got[k] - ref_cov[k]) / np.linalg.norm(ref_cov[k])
        assert rel < 1e-3, (k, rel)
    np.testing.assert_allclose(result.params.weights, ref_w, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(result.params.means, np.float64), ref_means, rtol=0, atol=1e-2 * sd
    )


@pytest.mark.parametrize("separation", [10.0, 1e3])
def test_tied_float32_exact_for_far_apart_components(separation):
    """The fused tied kernel sums moments around zero (sum w x x^T - sum n xbar xbar^T);
    for tight components far apart that cancels in float32, and the solver must then
    take the exact pass: the shared covariance stays within 1e-3 of a float64 step."""
    rng = np.random.default_rng(4)
    n_features, n_per = 3, 2000
    scale = rng.normal(size=(n_features, n_features)) * 0.3 + np.eye(n_features)
    true_cov = scale @ scale.T
    sd = np.sqrt(np.max(np.diag(true_cov)))
    offset = np.array([separation * sd / 2, 0.0, 0.0])
    noise = rng.normal(size=(2 * n_per, n_features)) @ np.linalg.cholesky(true_cov).T
    X64 = noise + np.repeat([-offset, offset], n_per, axis=0) + 1e4 * sd
    X32 = X64.astype(np.float32)
    means0 = np.stack([X64[:n_per].mean(0), X64[n_per:].mean(0)]) + 0.1 * sd
    cov0 = true_cov * 1.3
    weights0 = np.array([0.4, 0.6])
    result = jaxgmm.fit(
        X32,
        2,
        covariance_type="tied",
        max_iter=1,
        tol=0.0,
        reg_covar=0.0,
        weights_init=weights0.astype(np.float32),
        means_init=means0.astype(np.float32),
        precisions_init=np.linalg.inv(cov0).astype(np.float32),
        chunk_size=512,
    )
    # Reference: a float64 full-covariance step from the same shared covariance; the
    # tied M-step is the weighted average of the per-component scatter matrices.
    ref_w, ref_means, ref_cov = _numpy_em_step(
        X32.astype(np.float64), weights0, means0, np.stack([cov0, cov0]), 0.0
    )
    ref_tied = np.einsum("k,kde->de", ref_w, ref_cov)
    got = np.asarray(result.params.covariances, np.float64)
    assert np.linalg.norm(got - ref_tied) / np.linalg.norm(ref_tied) < 1e-3
    np.testing.assert_allclose(result.params.weights, ref_w, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(result.params.means, np.float64), ref_means, rtol=0, atol=1e-2 * sd
    )


def test_fused_e_step_under_vmap_matches_loop():
    rng = np.random.default_rng(3)
    X = jnp.asarray(rng.normal(size=(3, 300, 2)))
    results = jaxgmm.fit_many(X, 2, max_iter=5, tol=0.0)
    for b in range(3):
        key = jax.random.fold_in(jax.random.key(0), b)
        single = jaxgmm.fit(X[b], 2, max_iter=5, tol=0.0, key=key)
        np.testing.assert_allclose(
            results.params.covariances[b], single.params.covariances, rtol=1e-6
        )


def _numpy_variance_m_step(X, weights, means, variances, covariance_type, reg_covar):
    """One EM step for diag/spherical parameters in float64 NumPy; -> (means, covariances)."""
    X = X.astype(np.float64)
    var = np.broadcast_to(np.asarray(variances, np.float64).reshape(len(means), -1), means.shape)
    log_prob = np.log(weights) - 0.5 * np.sum(
        np.log(2 * np.pi * var)[None] + (X[:, None, :] - means[None]) ** 2 / var[None], axis=2
    )
    resp = np.exp(log_prob - np.logaddexp.reduce(log_prob, axis=1, keepdims=True))
    n_k = resp.sum(axis=0)
    new_means = resp.T @ X / n_k[:, None]
    spread = np.einsum("ck,ckd->kd", resp, (X[:, None, :] - new_means[None]) ** 2) / n_k[:, None]
    if covariance_type == "spherical":
        spread = spread.mean(axis=1)
    return new_means, spread + reg_covar


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_expanded_e_step_is_accurate_in_float32_around_a_tight_far_component(covariance_type):
    """A component far from the data's centre and tight in every feature (like digits'
    blank pixels, constant within a class): expanded around the precision-weighted
    origin, the float32 fused E- and M-step match a float64 NumPy step, and the exact
    pass is not needed; expanded around the centre, the same step is far off."""
    from jaxgmm._em import expansion_origin, needs_exact_e_step
    from jaxgmm._params import GaussianMixtureParams

    rng = np.random.default_rng(7)
    tight = np.array([40.0, 5.0, 5.0, 5.0]) + 0.01 * rng.normal(size=(600, 4))
    loose = np.array([-40.0, -5.0, -5.0, -5.0]) + rng.normal(size=(600, 4))
    X = np.concatenate([tight, loose]).astype(np.float32)
    X = X - X.mean(axis=0)  # the engine works on centred rows
    means = np.stack([X[:600].mean(axis=0), X[600:].mean(axis=0)]).astype(np.float64)
    variances = np.stack([X[:600].var(axis=0), X[600:].var(axis=0)]).astype(np.float64)
    if covariance_type == "spherical":
        variances = variances.mean(axis=1)
    weights = np.array([0.5, 0.5])
    params = GaussianMixtureParams(
        weights=jnp.asarray(weights, jnp.float32),
        means=jnp.asarray(means, jnp.float32),
        covariances=jnp.asarray(variances, jnp.float32),
        precisions_cholesky=jnp.asarray(1.0 / np.sqrt(variances), jnp.float32),
        covariance_type=covariance_type,
    )
    rows = split_rows(jnp.asarray(X), jnp.ones(len(X), jnp.float32), jnp.arange(len(X)), 400)
    reg = 1e-6
    ref_means, ref_covariances = _numpy_variance_m_step(
        X, weights, means, variances, covariance_type, reg
    )
    origin = expansion_origin(params)
    assert not needs_exact_e_step(params, origin)
    assert needs_exact_e_step(params)  # around the centre, the fallback would be taken
    shifted = m_step(
        e_step(rows, params, origin=origin), jnp.asarray(reg, jnp.float32), covariance_type
    )
    np.testing.assert_allclose(shifted.means, ref_means, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(shifted.covariances, ref_covariances, rtol=1e-3)
    centred = m_step(e_step(rows, params), jnp.asarray(reg, jnp.float32), covariance_type)
    tight_error = np.abs(np.asarray(centred.covariances)[0] / ref_covariances[0] - 1.0)
    assert np.max(tight_error) > 1e-2
