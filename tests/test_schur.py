"""The missing-block kernel for full and tied covariances (jaxgmm/_schur.py).

References are NumPy computations that index each row's observed block directly
(log N(x_o; mu_o, Sigma_oo), E[x_m | x_o] and Cov[x_m | x_o] from Sigma), never the
precision-matrix identities the kernel uses. Shapes are small; one compilation each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgmm._covariance import covariance_model
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._schur import _LOOSE_TIERS, invert, schur_partials, tier_plan


def reference_sums(X, mask, weight, weights, means, covs, covariance_type):
    """(n_k, s_x, s_xx around the means, summed log-likelihood) by observed blocks."""
    N, D = X.shape
    K = len(weights)
    n_k, s_x, s_xx, total = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D)), 0.0
    for i in range(N):
        o, m = mask[i], ~mask[i]
        logp, b, B = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D))
        for k in range(K):
            S = covs[k]
            diff = X[i, o] - means[k, o]
            if o.any():
                Soo = S[np.ix_(o, o)]
                logdet = np.linalg.slogdet(Soo)[1]
                maha = diff @ np.linalg.solve(Soo, diff)
                gain = S[np.ix_(m, o)] @ np.linalg.inv(Soo)
                cond_cov = S[np.ix_(m, m)] - gain @ S[np.ix_(o, m)]
            else:
                logdet, maha = 0.0, 0.0
                gain, cond_cov = np.zeros((m.sum(), 0)), S
            logp[k] = np.log(weights[k]) - 0.5 * (maha + logdet + o.sum() * np.log(2 * np.pi))
            b[k, o] = diff
            b[k, m] = gain @ diff  # E[x_m | x_o] - mu_m
            B[k][np.ix_(m, m)] = cond_cov
        top = logp.max()
        log_norm = top + np.log(np.exp(logp - top).sum())
        g = weight[i] * np.exp(logp - log_norm)
        total += weight[i] * log_norm
        n_k += g
        s_x += g[:, None] * b
        s_xx += g[:, None, None] * (b[:, :, None] * b[:, None, :] + B)
    if covariance_type == "tied":
        s_xx = s_xx.sum(axis=0)
    return n_k, s_x, s_xx, total


def _problem(rng, N, D, K, fraction, covariance_type, condition=None):
    X = rng.normal(0, 1.5, (N, D)) + rng.normal(0, 2, (1, D))
    mask = rng.random((N, D)) >= fraction
    weights = rng.dirichlet(np.ones(K) * 5)
    means = rng.normal(0, 2, (K, D))
    A = rng.normal(0, 0.5, (K, D, D))
    covs = A @ np.swapaxes(A, 1, 2) + np.eye(D)
    if condition is not None:  # eigenvalues spread over `condition`, random eigenvectors
        Q = np.linalg.qr(rng.normal(size=(K, D, D)))[0]
        spectrum = np.geomspace(1.0, 1.0 / condition, D)
        covs = Q @ (spectrum[:, None] * np.swapaxes(Q, 1, 2))
    if covariance_type == "tied":
        covs = np.broadcast_to(covs[0], (K, D, D)).copy()
    return X, mask, weights, means, covs


def _params(weights, means, covs, covariance_type, dtype):
    model = covariance_model(covariance_type)
    cov = covs[0] if covariance_type == "tied" else covs
    cov = jnp.asarray(cov, dtype)
    return GaussianMixtureParams(
        jnp.asarray(weights, dtype),
        jnp.asarray(means, dtype),
        cov,
        model.precisions_cholesky(cov),
        covariance_type,
    )


def _fits_tiers(mask, weight, *tiers):
    """Independently: whether the sorted missing counts fit tier_plan's blocks."""
    counts = np.sort(np.where(weight > 0, (~mask).sum(axis=1), 0))
    return all(counts[stop - 1] <= block for _, stop, block in tier_plan(*mask.shape, *tiers))


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
@pytest.mark.parametrize("fraction, tiered", [(0.12, True), (0.6, False)])
def test_chunk_sums_match_observed_block_reference(covariance_type, fraction, tiered):
    """Tiered rows (few missing) and the all-rows fallback (many) give the exact sums."""
    rng = np.random.default_rng(3)
    N, D, K = 96, 6, 3
    X, mask, weights, means, covs = _problem(rng, N, D, K, fraction, covariance_type)
    mask[0] = False  # a row without observed entries contributes log-density 0
    weight = rng.uniform(0.5, 2.0, N)
    weight[-4:] = 0.0  # padding rows, all missing: they must not take tier room
    mask[-4:] = False
    assert _fits_tiers(mask, weight) == tiered
    x = np.where(mask, X, 123.0)  # missing entries are never read
    with jax.enable_x64(True):
        params = _params(weights, means, covs, covariance_type, jnp.float64)
        got = jax.jit(schur_partials)(jnp.asarray(x), jnp.asarray(weight), mask, params)
    n_k, s_x, s_xx, total = reference_sums(X, mask, weight, weights, means, covs, covariance_type)
    np.testing.assert_allclose(got.moments[0], n_k, rtol=1e-10)
    np.testing.assert_allclose(got.moments[1], s_x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.moments[2], s_xx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.log_lik_sum, total, rtol=1e-11)
    np.testing.assert_allclose(got.n, weight.sum())


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_rows_beyond_the_tiers_take_the_loose_tiers_exactly(covariance_type):
    """Uneven missing counts (few patterns) that miss the tiers but fit the loose ones."""
    rng = np.random.default_rng(5)
    N, D, K = 96, 6, 3
    X, _, weights, means, covs = _problem(rng, N, D, K, 0.0, covariance_type)
    counts = rng.permutation(np.repeat([0, 1, 2, 3, 5], [8, 12, 40, 32, 4]))
    mask = np.ones((N, D), bool)
    for row, count in enumerate(counts):
        mask[row, rng.choice(D, count, replace=False)] = False
    weight = rng.uniform(0.5, 2.0, N)
    assert not _fits_tiers(mask, weight) and _fits_tiers(mask, weight, _LOOSE_TIERS)
    with jax.enable_x64(True):
        params = _params(weights, means, covs, covariance_type, jnp.float64)
        got = jax.jit(schur_partials)(jnp.asarray(X), jnp.asarray(weight), mask, params)
    n_k, s_x, s_xx, total = reference_sums(X, mask, weight, weights, means, covs, covariance_type)
    np.testing.assert_allclose(got.moments[0], n_k, rtol=1e-10)
    np.testing.assert_allclose(got.moments[1], s_x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.moments[2], s_xx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.log_lik_sum, total, rtol=1e-11)


def test_float32_stays_accurate_for_ill_conditioned_covariances():
    """Condition number 1e3: float32 sums within 1e-3 of the float64 reference."""
    rng = np.random.default_rng(4)
    N, D, K = 128, 8, 2
    X, mask, weights, means, covs = _problem(rng, N, D, K, 0.25, "full", condition=1e3)
    X = means[0] + rng.multivariate_normal(np.zeros(D), covs[0], N)  # data that fits
    weight = np.ones(N)
    params = _params(weights, means, covs, "full", jnp.float32)
    got = jax.jit(schur_partials)(
        jnp.asarray(np.where(mask, X, 0.0), jnp.float32),
        jnp.asarray(weight, jnp.float32),
        mask,
        params,
    )
    n_k, s_x, s_xx, total = reference_sums(X, mask, weight, weights, means, covs, "full")
    scale = np.abs(s_xx).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(got.log_lik_sum / N, total / N, atol=1e-3)
    np.testing.assert_allclose(got.moments[0], n_k, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(got.moments[2]) / scale, s_xx / scale, atol=1e-3)


@pytest.mark.parametrize("size", [1, 3, 9])
def test_invert_gives_log_determinant_and_inverse(size):
    """The batched sweep against NumPy, matrix axes leading."""
    rng = np.random.default_rng(size)
    A = rng.normal(size=(5, size, size))
    H = A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(size)
    with jax.enable_x64(True):
        log_det, H_inv = jax.jit(invert)(jnp.asarray(np.moveaxis(H, 0, -1)))
    np.testing.assert_allclose(log_det, np.linalg.slogdet(H)[1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.moveaxis(np.asarray(H_inv), -1, 0), np.linalg.inv(H), rtol=1e-8)


def test_tier_plan_covers_the_chunk_with_growing_blocks():
    plan = tier_plan(1024, 16)
    assert plan[0][0] == 0 and plan[-1][1] == 1024 and plan[-1][2] == 16
    assert all(a[1] == b[0] and a[2] <= b[2] for a, b in zip(plan[:-1], plan[1:], strict=True))
    assert tier_plan(10, 16) == ((0, 10, 16),)
