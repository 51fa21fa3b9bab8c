"""Fuzz tests (hypothesis) over data content, dtypes, covariance types, weights and scales.

Every example has the shape (60, 2) and K = 3, so the compiled programs (one per dtype
and covariance type) are shared by all examples and with test_robustness.py. The
profile is derandomized and has no example database, so CI is reproducible.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxgmm

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
N, D, K = 60, 2, 3
ILL_DEFINED = "ill-defined empirical covariance"
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mixture_problems(draw, dtypes=("float32", "float64")):
    """(X, sample_weight or None, covariance_type) with awkward but valid content."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(dtypes))
    covariance_type = draw(st.sampled_from(COVARIANCE_TYPES))
    n_clusters = draw(st.integers(1, 4))
    centres = rng.normal(scale=4.0, size=(n_clusters, D))
    labels = rng.integers(0, n_clusters, size=N)
    spreads = rng.uniform(0.05, 2.0, size=(n_clusters, D))
    X = centres[labels] + rng.normal(size=(N, D)) * spreads[labels]
    if draw(st.booleans()):  # some rows duplicated
        n_dup = draw(st.integers(1, N // 2))
        X[rng.choice(N, n_dup, replace=False)] = X[rng.integers(0, N)]
    if draw(st.booleans()):  # a constant feature
        X[:, draw(st.integers(0, D - 1))] = rng.normal()
    if draw(st.booleans()):  # one far outlier
        X[rng.integers(0, N)] += rng.normal(size=D) * 50
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 10.0, 300.0]))  # in units of the data's scale
    X = ((X + offset) * scale).astype(dtype)
    kind = draw(st.sampled_from(["none", "uniform", "integer", "sparse", "wide"]))
    weights = {
        "none": None,
        "uniform": rng.uniform(0.1, 1.0, size=N),
        "integer": rng.integers(1, 5, size=N).astype(float),
        "sparse": np.where(rng.uniform(size=N) < 0.5, 0.0, 1.0),
        "wide": 10.0 ** rng.uniform(-3, 3, size=N),
    }[kind]
    if weights is not None and np.count_nonzero(weights) < K:
        weights[:K] = 1.0
    return X, weights, covariance_type


REG_COVAR = 1e-6  # jaxgmm's default


def _fit_or_documented_error(X, weights, covariance_type):
    """Fit with the default reg_covar; the documented error only where float32 explains it.

    In float64 the default never fails on these data. In float32 a covariance can only be
    positive definite to rounding if its condition number stays below about 1 / eps; the
    default reg_covar bounds it by (largest variance) / 1e-6, which float32 cannot hold
    once features vary by more than ~1e-3 * (1 / eps) * 1e-6. There the documented error
    may come, and its advice (reg_covar relative to the features' variance) must work.
    """
    try:
        return jaxgmm.fit(X, K, covariance_type=covariance_type, sample_weight=weights)
    except ValueError as err:
        assert ILL_DEFINED in str(err) and "reg_covar = 1e-06 was too small" in str(err)
        assert X.dtype == np.float32, "float64 fits must not fail with the default reg_covar"
        variance = float(np.max(np.var(X.astype(np.float64), axis=0)))
        assert REG_COVAR < 1e3 * np.finfo(np.float32).eps * variance
        return jaxgmm.fit(
            X, K, covariance_type=covariance_type, sample_weight=weights, reg_covar=1e-4 * variance
        )


@settings(max_examples=150, **SETTINGS)
@given(problem=mixture_problems())
def test_fit_and_predict_outputs_are_finite_and_consistent(problem):
    """No error but the documented one; finite parameters; probabilities that sum to one."""
    X, weights, covariance_type = problem
    result = _fit_or_documented_error(X, weights, covariance_type)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        value = np.asarray(getattr(result.params, name))
        assert np.all(np.isfinite(value)), name
        assert value.dtype == X.dtype
    assert np.isfinite(float(result.lower_bound))
    assert int(result.status) != jaxgmm.Status.NON_FINITE
    np.testing.assert_allclose(float(np.sum(result.params.weights)), 1.0, rtol=1e-5)
    proba = np.asarray(jaxgmm.predict_proba(result, X), np.float64)
    assert proba.shape == (N, K) and np.all(np.isfinite(proba)) and np.all(proba >= 0)
    atol = 1e-5 if X.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=atol)
    labels = np.asarray(jaxgmm.predict(result, X))
    assert labels.shape == (N,) and labels.min() >= 0 and labels.max() < K
    np.testing.assert_array_equal(labels, np.argmax(proba, axis=1))
    log_lik = np.asarray(jaxgmm.score_samples(result, X))
    assert np.all(np.isfinite(log_lik))


@settings(max_examples=25, **SETTINGS)
@given(problem=mixture_problems(dtypes=("float64",)))
def test_log_likelihood_never_decreases_without_regularisation(problem):
    """float64, reg_covar = 0: EM is monotone, or the fit stops with the documented error."""
    X, weights, covariance_type = problem
    try:
        result = jaxgmm.fit(
            X, K, covariance_type=covariance_type, sample_weight=weights, reg_covar=0.0, tol=0.0
        )
    except ValueError as err:
        assert ILL_DEFINED in str(err)
        return
    history = np.asarray(result.history)[: int(result.n_iter)]
    assert np.all(np.isfinite(history))
    slack = 1e-9 * np.maximum(1.0, np.abs(history[:-1]))
    assert np.all(np.diff(history) >= -slack), np.diff(history).min()
    for leaf in (result.params.weights, result.params.means, result.params.covariances):
        assert np.all(np.isfinite(np.asarray(leaf)))
