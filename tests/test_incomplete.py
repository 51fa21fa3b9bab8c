"""Missing values (nan_policy) and measurement noise: exact EM for incomplete data.

References are independent of jaxgmm's padded-Cholesky kernel: a NumPy E- and M-step
that indexes each row's observed block (Ghahramani & Jordan's formulas), closed forms
(Anderson's monotone-pattern MLE, the K = 1 deconvolution), and limits.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxgmm
from jaxgmm._rows import split_rows
from jaxgmm._solver import EM

TYPES = ("full", "tied", "diag", "spherical")


# ----------------------------------------------------------------- NumPy reference


def _full_covariances(covariances, covariance_type, K, D):
    c = np.asarray(covariances, np.float64)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (K, D, D))
    if covariance_type == "diag":
        return c[:, :, None] * np.eye(D)
    return c[:, None, None] * np.eye(D)


def reference_e_step(X, weights, means, covs, noise=None):
    """Per-row log-likelihood, responsibilities, b (N, K, D), B (N, K, D, D).

    Observed block o of row i: y_o ~ N(mu_o, Sigma_oo + S_oo); the noise-free x has
    E[x | y_o] = mu + Sigma[:, o] (Sigma_oo + S_oo)^-1 (y_o - mu_o) and
    Cov = Sigma - Sigma[:, o] (Sigma_oo + S_oo)^-1 Sigma[o, :].
    """
    N, D = X.shape
    K = len(weights)
    log_lik = np.zeros(N)
    resp = np.zeros((N, K))
    b = np.zeros((N, K, D))
    B = np.zeros((N, K, D, D))
    for i in range(N):
        o = ~np.isnan(X[i])
        logp = np.zeros(K)
        for k in range(K):
            S = covs[k] + (0.0 if noise is None else _noise_matrix(noise[i], D))
            Soo = S[np.ix_(o, o)]
            diff = X[i, o] - means[k, o]
            if o.any():
                sign, logdet = np.linalg.slogdet(Soo)
                maha = diff @ np.linalg.solve(Soo, diff)
                gain = covs[k][:, o] @ np.linalg.inv(Soo)
            else:
                logdet, maha, gain = 0.0, 0.0, np.zeros((D, 0))
            logp[k] = np.log(weights[k]) - 0.5 * (maha + logdet + o.sum() * np.log(2 * np.pi))
            b[i, k] = means[k] + gain @ diff
            B[i, k] = covs[k] - gain @ covs[k][o, :]
        top = logp.max()
        log_lik[i] = top + np.log(np.exp(logp - top).sum())
        resp[i] = np.exp(logp - log_lik[i])
    return log_lik, resp, b, B


def _noise_matrix(s, D):
    return np.diag(s) if np.ndim(s) == 1 else s


def reference_m_step(resp, b, B, sample_weight, covariance_type, reg_covar):
    """(weights, means, covariances) from expected statistics."""
    g = resp * sample_weight[:, None]
    n_k = g.sum(axis=0)
    means = np.einsum("nk,nkd->kd", g, b) / n_k[:, None]
    diff = b - means[None]
    scatter = np.einsum("nk,nkd,nke->kde", g, diff, diff) + np.einsum("nk,nkde->kde", g, B)
    D = b.shape[2]
    if covariance_type == "full":
        cov = scatter / n_k[:, None, None] + reg_covar * np.eye(D)
    elif covariance_type == "tied":
        cov = scatter.sum(axis=0) / n_k.sum() + reg_covar * np.eye(D)
    elif covariance_type == "diag":
        cov = np.diagonal(scatter, axis1=1, axis2=2) / n_k[:, None] + reg_covar
    else:
        cov = np.trace(scatter, axis1=1, axis2=2) / (D * n_k) + reg_covar
    return n_k / n_k.sum(), means, cov


def _initial(covariance_type, K, D, rng):
    weights = rng.dirichlet(np.ones(K) * 5)
    means = rng.normal(0, 2, (K, D))
    A = rng.normal(0, 0.4, (K, D, D))
    full = A @ np.swapaxes(A, 1, 2) + np.eye(D)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": np.diagonal(full, axis1=1, axis2=2).copy(),
        "spherical": np.trace(full, axis1=1, axis2=2) / D,
    }[covariance_type]
    precisions = np.linalg.inv(cov) if cov.ndim >= 2 and covariance_type != "diag" else 1 / cov
    return weights, means, cov, precisions


def _params(weights, means, cov, covariance_type):
    return jaxgmm.GaussianMixtureParams(
        weights=jnp.asarray(weights),
        means=jnp.asarray(means),
        covariances=jnp.asarray(cov),
        precisions_cholesky=jnp.asarray(_precisions_cholesky(cov, covariance_type)),
        covariance_type=covariance_type,
    )


@jax.jit
def _engine_step(x, weight, mask, noise, params, reg_covar):
    rows = split_rows(x, weight, jnp.arange(x.shape[0]), x.shape[0] // 2, mask, noise)
    return EM(reg_covar=reg_covar).step(rows, params)


def engine_step(X, params, sample_weight=None, noise=None, reg_covar=0.0):
    """One EM iteration of the engine's solver on incomplete rows: (params, objective)."""
    mask = ~np.isnan(X)
    weight = np.ones(len(X)) if sample_weight is None else sample_weight
    x = np.where(mask, X, 0.0)
    return _engine_step(x, weight, mask, noise, params, jnp.asarray(reg_covar))


def _one_iteration(X, K, covariance_type, inits, **kwargs):
    weights, means, _, precisions = inits
    return jaxgmm.fit(
        X,
        K,
        covariance_type=covariance_type,
        max_iter=1,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        nan_policy="marginalize",
        init="random_from_data",  # overridden by the initial parameters; compiles fast
        **kwargs,
    )


def _incomplete_data(rng, N=40, D=3, fraction=0.3):
    X = np.concatenate([rng.normal(0, 1, (N // 2, D)), rng.normal(3, 1.5, (N - N // 2, D))])
    X[rng.random(X.shape) < fraction] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.5  # every row keeps an entry here
    return X


def test_fit_one_iteration_matches_numpy_reference():
    """Through the public fit: weights, the empty row (weight 0), the lower bound."""
    rng = np.random.default_rng(1)
    K, D, covariance_type = 2, 3, "full"
    X = _incomplete_data(rng)
    X[3] = np.nan  # a row with no observed entry: weight 0, nothing learnt from it
    w = rng.uniform(0.5, 2.0, X.shape[0])
    inits = _initial(covariance_type, K, D, rng)
    result = _one_iteration(X, K, covariance_type, inits, sample_weight=w, reg_covar=1e-3)
    log_lik, resp, b, B = reference_e_step(X, inits[0], inits[1], inits[2])
    keep = ~np.isnan(X).all(axis=1)
    ref = reference_m_step(resp[keep], b[keep], B[keep], w[keep], covariance_type, 1e-3)
    p = result.params
    np.testing.assert_allclose(float(result.lower_bound), w @ log_lik / w[keep].sum(), rtol=1e-10)
    np.testing.assert_allclose(p.weights, ref[0], rtol=1e-9)
    np.testing.assert_allclose(p.means, ref[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.covariances, ref[2], rtol=1e-9, atol=1e-12)
    scores = jaxgmm.score_samples(p, X, nan_policy="marginalize")
    ref_scores, ref_resp, _, _ = reference_e_step(
        X, np.asarray(p.weights), np.asarray(p.means), np.asarray(p.covariances)
    )
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-10, atol=1e-12)
    assert float(scores[3]) == 0.0
    proba = jaxgmm.predict_proba(p, X, nan_policy="marginalize")
    np.testing.assert_allclose(proba, ref_resp, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_engine_em_step_matches_numpy_reference(covariance_type):
    rng = np.random.default_rng(12)
    K, D = 3, 3
    X = _incomplete_data(rng)
    w = rng.uniform(0.5, 2.0, X.shape[0])
    weights, means, cov, _ = _initial(covariance_type, K, D, rng)
    params, objective = engine_step(X, _params(weights, means, cov, covariance_type), w, None, 1e-3)
    covs = _full_covariances(cov, covariance_type, K, D)
    log_lik, resp, b, B = reference_e_step(X, weights, means, covs)
    ref = reference_m_step(resp, b, B, w, covariance_type, 1e-3)
    np.testing.assert_allclose(float(objective), w @ log_lik / w.sum(), rtol=1e-10)
    np.testing.assert_allclose(params.weights, ref[0], rtol=1e-9)
    np.testing.assert_allclose(params.means, ref[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(params.covariances, ref[2], rtol=1e-9, atol=1e-12)
    scores = jaxgmm.score_samples(params, X, nan_policy="marginalize")
    new = _full_covariances(params.covariances, covariance_type, K, D)
    ref_scores = reference_e_step(X, np.asarray(params.weights), np.asarray(params.means), new)[0]
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-10)


@pytest.mark.parametrize(
    ("covariance_type", "noise_kind"),
    [("full", "diagonal"), ("full", "full"), ("diag", "diagonal")],
)
def test_engine_step_with_noise_and_missing_matches_numpy(covariance_type, noise_kind):
    rng = np.random.default_rng(2)
    K, D = 2, 3
    X = _incomplete_data(rng, fraction=0.2)
    N = X.shape[0]
    if noise_kind == "diagonal":
        noise = rng.uniform(0.0, 0.5, (N, D))
    else:
        A = rng.normal(0, 0.4, (N, D, D))
        noise = A @ np.swapaxes(A, 1, 2)
    weights, means, cov, _ = _initial(covariance_type, K, D, rng)
    params, objective = engine_step(X, _params(weights, means, cov, covariance_type), None, noise)
    covs = _full_covariances(cov, covariance_type, K, D)
    log_lik, resp, b, B = reference_e_step(X, weights, means, covs, noise)
    ref = reference_m_step(resp, b, B, np.ones(N), covariance_type, 0.0)
    np.testing.assert_allclose(float(objective), log_lik.mean(), rtol=1e-10)
    np.testing.assert_allclose(params.means, ref[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(params.covariances, ref[2], rtol=1e-9, atol=1e-12)
    scores = jaxgmm.score_samples(params, X, nan_policy="marginalize", noise_covariances=noise)
    new = _full_covariances(params.covariances, covariance_type, K, D)
    ref_scores = reference_e_step(
        X, np.asarray(params.weights), np.asarray(params.means), new, noise
    )[0]
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-10)


def test_shared_data_incomplete_e_step_matches_numpy(shared_data):
    """The course's 20 x 5 ratings matrix (0 = missing)."""
    path = shared_data / "test_incomplete.txt"
    if not path.exists():
        pytest.skip("test_incomplete.txt is not available")
    X = np.loadtxt(path)
    X[X == 0] = np.nan
    rng = np.random.default_rng(4)
    K, D = 3, X.shape[1]
    for covariance_type in ("full", "spherical"):
        weights, means, cov, precisions = _initial(covariance_type, K, D, rng)
        means = means + 3.0
        params = jaxgmm.GaussianMixtureParams(
            weights=weights,
            means=means,
            covariances=cov,
            precisions_cholesky=_precisions_cholesky(cov, covariance_type),
            covariance_type=covariance_type,
        )
        covs = _full_covariances(cov, covariance_type, K, D)
        log_lik, resp, _, _ = reference_e_step(X, weights, means, covs)
        np.testing.assert_allclose(
            jaxgmm.score_samples(params, X, nan_policy="marginalize"), log_lik, rtol=1e-10
        )
        np.testing.assert_allclose(
            jaxgmm.predict_proba(params, X, nan_policy="marginalize"), resp, rtol=1e-8, atol=1e-14
        )


def _precisions_cholesky(cov, covariance_type):
    if covariance_type in ("full", "tied"):
        prec = np.linalg.inv(cov)
        flip = np.linalg.cholesky(prec[..., ::-1, ::-1])
        return flip[..., ::-1, ::-1]
    return 1 / np.sqrt(cov)


# --------------------------------------------------------------- closed forms, limits


def test_monotone_pattern_k1_full_matches_anderson_closed_form():
    """Y1 always observed, Y2 observed in the first n2 rows: the MLE regresses Y2 on Y1."""
    rng = np.random.default_rng(5)
    n, n2, p1 = 60, 35, 2
    Y = rng.multivariate_normal([1.0, -1.0, 2.0, 0.5], np.eye(4) + 0.6, size=n)
    X = Y.copy()
    X[n2:, p1:] = np.nan
    result = jaxgmm.fit(
        X, 1, nan_policy="marginalize", reg_covar=0.0, tol=0.0, max_iter=1000, init="random"
    )
    Y1, Yc = Y[:, :p1], Y[:n2]
    mu1 = Y1.mean(axis=0)
    S11 = np.cov(Y1.T, bias=True)
    mc = Yc.mean(axis=0)
    Sc = np.cov(Yc.T, bias=True)
    beta = np.linalg.solve(Sc[:p1, :p1], Sc[:p1, p1:])
    resid = Sc[p1:, p1:] - Sc[p1:, :p1] @ beta
    mu2 = mc[p1:] + beta.T @ (mu1 - mc[:p1])
    S12 = S11 @ beta
    S22 = resid + beta.T @ S11 @ beta
    cov = np.block([[S11, S12], [S12.T, S22]])
    np.testing.assert_allclose(result.params.means[0], np.concatenate([mu1, mu2]), atol=1e-7)
    np.testing.assert_allclose(result.params.covariances[0], cov, atol=1e-7)


def test_k1_deconvolution_with_shared_noise_is_sample_covariance_minus_noise():
    rng = np.random.default_rng(6)
    N, D = 400, 2
    S = np.array([[0.3, 0.1], [0.1, 0.2]])
    Y = rng.multivariate_normal([0.0, 1.0], [[2.0, 0.5], [0.5, 1.0]], size=N)
    Y = Y + rng.multivariate_normal([0, 0], S, size=N)
    noise = np.broadcast_to(S, (N, D, D))
    result = jaxgmm.fit(
        Y,
        1,
        noise_covariances=noise,
        reg_covar=0.0,
        tol=0.0,
        max_iter=400,
        init="random",
    )
    np.testing.assert_allclose(result.params.means[0], Y.mean(axis=0), atol=1e-8)
    np.testing.assert_allclose(result.params.covariances[0], np.cov(Y.T, bias=True) - S, atol=1e-6)


def test_zero_noise_and_complete_marginalize_equal_the_plain_fit():
    rng = np.random.default_rng(7)
    X = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(4, 1, (50, 3))])
    options = dict(key=3, tol=1e-8, init="random_from_data")
    plain = jaxgmm.fit(X, 2, **options)
    zero_noise = jaxgmm.fit(X, 2, noise_covariances=np.zeros((100, 3)), **options)
    complete = jaxgmm.fit(X, 2, nan_policy="marginalize", **options)
    for other in (zero_noise, complete):
        assert int(other.n_iter) == int(plain.n_iter)
        np.testing.assert_allclose(other.params.means, plain.params.means, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(
            other.params.covariances, plain.params.covariances, rtol=1e-8, atol=1e-10
        )
        np.testing.assert_allclose(float(other.lower_bound), float(plain.lower_bound), rtol=1e-10)


def test_huge_noise_on_a_coordinate_is_that_coordinate_missing():
    rng = np.random.default_rng(8)
    X = _incomplete_data(rng, fraction=0.0)
    hidden = rng.random(len(X)) < 0.3
    missing = X.copy()
    missing[hidden, 1] = np.nan
    noise = np.zeros(X.shape)
    noise[hidden, 1] = 1e9
    params = _params(*_initial("full", 2, 3, rng)[:3], "full")
    a, _ = engine_step(missing, params)
    b, _ = engine_step(X, params, noise=noise)
    np.testing.assert_allclose(b.means, a.means, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.covariances, a.covariances, rtol=1e-6, atol=1e-6)
    # The density of a row with a huge-noise coordinate is the marginal one, divided by
    # the width of that coordinate's noise: log-likelihoods differ by -1/2 log(2 pi 1e9).
    sa = jaxgmm.score_samples(a, missing, nan_policy="marginalize")
    sb = jaxgmm.score_samples(a, X, noise_covariances=noise)
    np.testing.assert_allclose(sb[hidden], sa[hidden] - 0.5 * np.log(2 * np.pi * 1e9), atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    covariance_type=st.sampled_from(TYPES),
    fraction=st.floats(0.05, 0.5),
)
def test_log_likelihood_never_decreases(seed, covariance_type, fraction):
    """Engine EM steps (float64, reg_covar = 0) from random parameters."""
    rng = np.random.default_rng(seed)
    X = _incomplete_data(rng, N=40, D=3, fraction=fraction)
    params = _params(*_initial(covariance_type, 3, 3, rng)[:3], covariance_type)
    history = []
    for _ in range(6):
        params, objective = engine_step(X, params)
        history.append(float(objective))
    history = np.array(history)
    assume(np.isfinite(history).all())
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))


# -------------------------------------------------------------------------- policies


def test_omit_drops_rows_with_a_warning_and_equals_fitting_the_complete_rows():
    rng = np.random.default_rng(9)
    X = _incomplete_data(rng, N=60, fraction=0.05)
    complete = X[~np.isnan(X).any(axis=1)]
    n_dropped = len(X) - len(complete)
    with pytest.warns(UserWarning, match=f"dropped {n_dropped} of 60 rows"):
        omitted = jaxgmm.fit(X, 2, nan_policy="omit", key=1, init="random_from_data")
    reference = jaxgmm.fit(complete, 2, key=1, init="random_from_data")
    np.testing.assert_allclose(omitted.params.means, reference.params.means)
    with pytest.warns(UserWarning):
        score = jaxgmm.score(reference.params, X, nan_policy="omit")
    np.testing.assert_allclose(score, jaxgmm.score(reference.params, complete))
    with pytest.warns(UserWarning):
        labels = np.asarray(jaxgmm.predict(reference.params, X, nan_policy="omit"))
    assert (labels[np.isnan(X).any(axis=1)] == -1).all()


def test_fit_many_and_estimator_marginalize():
    rng = np.random.default_rng(10)
    X1, X2 = _incomplete_data(rng, N=40), _incomplete_data(rng, N=40)
    options = dict(nan_policy="marginalize", max_iter=20, init="random_from_data")
    many = jaxgmm.fit_many([X1, X2], 2, key=2, **options)
    one = jaxgmm.fit(X2, 2, key=jax_fold(2, 1), **options)
    np.testing.assert_allclose(many.params.means[1], one.params.means, rtol=1e-6, atol=1e-8)
    model = jaxgmm.GaussianMixture(
        2, nan_policy="marginalize", random_state=0, max_iter=20, init_params="random_from_data"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        model.fit(X1)
    np.testing.assert_allclose(
        model.score(X1), jaxgmm.score(model.params_, X1, nan_policy="marginalize")
    )
    assert model.predict(X1).shape == (40,)
    assert model.__sklearn_tags__().input_tags.allow_nan


def jax_fold(seed, b):
    return jax.random.fold_in(jax.random.key(seed), b)


# ------------------------------------------------------------------------ bad input


def test_bad_input_messages():
    rng = np.random.default_rng(11)
    X = _incomplete_data(rng)
    with pytest.raises(ValueError, match="nan_policy"):
        jaxgmm.fit(X, 2)
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        jaxgmm.fit(X, 2, nan_policy="ignore")
    bad = X.copy()
    bad[:, 2] = np.nan
    with pytest.raises(ValueError, match="column 2 has no observed entry"):
        jaxgmm.fit(bad, 2, nan_policy="marginalize")
    inf = X.copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        jaxgmm.fit(inf, 2, nan_policy="marginalize")
    N, D = X.shape
    full = np.broadcast_to(np.eye(D), (N, D, D)).copy()
    cases = [
        (np.ones((N, D + 1)), "must have shape"),
        (-np.ones((N, D)), "negative variance"),
        (np.where(np.arange(D) == 0, np.nan, 1.0) * np.ones((N, D)), "non-finite"),
    ]
    asym = full.copy()
    asym[0, 0, 1] = 0.5
    cases.append((asym, "not symmetric"))
    indefinite = full.copy()
    indefinite[1] = np.diag([1.0, -1.0, 1.0])
    cases.append((indefinite, "negative eigenvalue"))
    for noise, message in cases:
        with pytest.raises(ValueError, match=message):
            jaxgmm.fit(X, 2, noise_covariances=noise, nan_policy="marginalize")
    for covariance_type in ("spherical", "tied"):
        with pytest.raises(ValueError, match="not supported"):
            jaxgmm.fit(
                X,
                2,
                covariance_type=covariance_type,
                noise_covariances=np.ones((N, D)),
                nan_policy="marginalize",
            )
    with pytest.raises(ValueError, match="not supported"):
        jaxgmm.fit(X, 2, covariance_type="diag", noise_covariances=full, nan_policy="marginalize")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="Every row"):
            jaxgmm.fit(np.full((5, 2), np.nan), 1, nan_policy="omit")


# ------------------------------------------------------------------------ imputation


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_impute_mean_is_the_conditional_expectation(covariance_type):
    rng = np.random.default_rng(13)
    K, D = 2, 3
    X = _incomplete_data(rng)
    X[5] = np.nan  # no observed entry: the mixture's mean
    weights, means, cov, _ = _initial(covariance_type, K, D, rng)
    params = _params(weights, means, cov, covariance_type)
    filled = jaxgmm.impute(params, X)
    _, resp, b, _ = reference_e_step(
        X, weights, means, _full_covariances(cov, covariance_type, K, D)
    )
    expected = np.where(np.isnan(X), np.einsum("nk,nkd->nd", resp, b), X)
    np.testing.assert_allclose(filled, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(filled[5], weights @ means, rtol=1e-10)


def test_impute_sample_draws_from_the_conditional_gaussian():
    mean = np.array([1.0, -1.0, 0.5])
    cov = np.array([[2.0, 0.8, 0.3], [0.8, 1.0, 0.2], [0.3, 0.2, 0.5]])
    params = _params([1.0], mean[None], cov[None], "full")
    X = np.tile([[2.0, np.nan, np.nan]], (4000, 1))
    draws = jaxgmm.impute(params, X, method="sample", key=5)[:, 1:]
    gain = cov[1:, :1] / cov[0, 0]
    cond_mean = mean[1:] + gain[:, 0] * (2.0 - mean[0])
    cond_cov = cov[1:, 1:] - gain @ cov[:1, 1:]
    np.testing.assert_allclose(draws.mean(axis=0), cond_mean, atol=0.05)
    np.testing.assert_allclose(np.cov(draws.T), cond_cov, atol=0.05)
    assert (jaxgmm.impute(params, X[:3], method="sample", key=5)[:, 0] == 2.0).all()
    with pytest.raises(ValueError, match="method must be one of"):
        jaxgmm.impute(params, X, method="median")


def test_imputer_in_a_pipeline_with_feature_names():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(15)
    X = _incomplete_data(rng, N=40)
    imputer = jaxgmm.GaussianMixtureImputer(2, random_state=0, init_params="random_from_data")
    pipe = make_pipeline(imputer, StandardScaler()).fit(X)
    out = pipe.transform(X)
    assert out.shape == X.shape and np.isfinite(out).all()
    mixture = pipe[0].mixture_
    np.testing.assert_allclose(pipe[0].transform(X), jaxgmm.impute(mixture.params_, X))
    assert list(imputer.get_feature_names_out()) == ["x0", "x1", "x2"]


def test_sample_with_noise_has_covariance_plus_noise():
    params = _params([1.0], np.zeros((1, 2)), np.eye(2)[None], "full")
    S = np.array([[0.5, 0.2], [0.2, 0.3]])
    points, _ = jaxgmm.sample(params, 4000, key=1, noise_covariances=np.tile(S, (4000, 1, 1)))
    np.testing.assert_allclose(np.cov(np.asarray(points).T), np.eye(2) + S, atol=0.1)


def test_masked_kmeans_centers_are_a_fixed_point_of_numpy_masked_lloyd():
    """Lloyd on observed coordinates: partial distances scaled by D / n_obs, centers
    averaging each coordinate over the assigned rows that observe it."""
    from jaxgmm._init import kmeans_centers

    rng = np.random.default_rng(16)
    X = np.concatenate([rng.normal(-4, 1, (60, 3)), rng.normal(4, 1, (60, 3))])
    X[rng.random(X.shape) < 0.3] = np.nan
    X[np.isnan(X).all(axis=1), 2] = 0.0
    mask = ~np.isnan(X)
    x = np.where(mask, X, 0.0)
    rows = split_rows(jnp.asarray(x), jnp.ones(len(X)), jnp.arange(len(X)), 40, jnp.asarray(mask))
    centers = np.asarray(jax.jit(kmeans_centers, static_argnums=2)(jax.random.key(0), rows, 2))
    d = ((x[:, None, :] - centers[None]) ** 2 * mask[:, None, :]).sum(axis=2)
    labels = np.argmin(d * (3 / mask.sum(axis=1))[:, None], axis=1)
    onehot = np.eye(2)[labels]
    update = (onehot.T @ (x * mask)) / (onehot.T @ mask)
    np.testing.assert_allclose(update, centers, atol=1e-2)
    assert np.allclose(np.sort(centers[:, 0]), [-4, 4], atol=0.5)


def test_shipped_ratings_file_equals_a_fresh_generation():
    from jaxgmm import datasets, io

    path = datasets.data_dir()
    if path is None or not (path / "ratings.csv").exists():
        pytest.skip("data/ is not available")
    table = io.read_data(path / "ratings.csv")
    observed, complete, _ = datasets.ratings()
    np.testing.assert_array_equal(table.X, observed)
    assert table.columns == list(datasets.RATINGS_ITEMS)
    assert ((complete >= 1) & (complete <= 5)).all()
    assert 0.3 < np.isnan(observed).mean() < 0.4


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_expanded_and_elementwise_variance_kernels_agree(covariance_type):
    """The matrix-product form (fast path) and the elementwise form (exact fallback)."""
    from jaxgmm._incomplete import incomplete_e_step

    rng = np.random.default_rng(17)
    X = _incomplete_data(rng)
    mask = ~np.isnan(X)
    rows = split_rows(
        jnp.asarray(np.where(mask, X, 0.0)),
        jnp.ones(len(X)),
        jnp.arange(len(X)),
        20,
        jnp.asarray(mask),
    )
    params = _params(*_initial(covariance_type, 3, 3, rng)[:3], covariance_type)
    exact = incomplete_e_step(rows, params)
    fast = incomplete_e_step(rows, params, expanded=True)
    for name in ("n_k", "s_x", "s_xx", "log_lik_sum"):
        np.testing.assert_allclose(getattr(fast, name), getattr(exact, name), rtol=1e-10)
