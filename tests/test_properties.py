"""Property tests of the EM engine (hypothesis), float64.

Shapes are drawn from small fixed sets so compiled programs are reused across examples.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxgmm

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def mixture_data(draw):
    """(60, 2) float64 data from a random 3-cluster mixture, varying scale and offset."""
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 5.0, -100.0]))
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(3, 2))
    labels = rng.integers(0, 3, size=60)
    X = centers[labels] + rng.normal(size=(60, 2)) * rng.uniform(0.3, 1.5, size=(3, 2))[labels]
    return (X * scale + offset * scale).astype(np.float64)


@SETTINGS
@given(
    X=mixture_data(), covariance_type=st.sampled_from(COVARIANCE_TYPES), key=st.integers(0, 1000)
)
def test_log_likelihood_never_decreases(X, covariance_type, key):
    # fit_many reports a collapse (possible with reg_covar = 0) as a status instead of
    # raising; monotonicity must hold for every iteration before it.
    result = jaxgmm.fit_many(
        X[None],
        3,
        covariance_type=covariance_type,
        reg_covar=0.0,
        tol=0.0,
        max_iter=25,
        init="random",
        key=key,
    )
    history = np.asarray(result.history[0])[: int(result.n_iter[0])]
    finite = history[np.isfinite(history)]
    if int(result.status[0]) != jaxgmm.Status.NON_FINITE:
        assert finite.size == history.size == 25
    assert finite.size >= 2
    # Exact-arithmetic EM is monotone; allow float64 round-off relative to the value.
    slack = 1e-9 * np.maximum(1.0, np.abs(finite[:-1]))
    assert np.all(np.diff(finite) >= -slack), np.diff(finite).min()


@SETTINGS
@given(
    X=mixture_data(),
    covariance_type=st.sampled_from(COVARIANCE_TYPES),
    perm_seed=st.integers(0, 2**31 - 1),
)
def test_invariant_to_row_permutation(X, covariance_type, perm_seed):
    """Same starting parameters, rows shuffled: the same fit."""
    rng = np.random.default_rng(perm_seed)
    precision = 1.0 / np.var(X, axis=0)
    precisions = {
        "full": np.stack([np.diag(precision)] * 3),
        "tied": np.diag(precision),
        "diag": np.stack([precision] * 3),
        "spherical": np.full(3, precision.mean()),
    }[covariance_type]
    start = dict(
        weights_init=np.full(3, 1 / 3),
        means_init=X[[0, 1, 2]],
        precisions_init=precisions,
        covariance_type=covariance_type,
        max_iter=10,
        tol=0.0,
    )
    a = jaxgmm.fit(X, 3, **start)
    b = jaxgmm.fit(X[rng.permutation(len(X))], 3, **start)
    np.testing.assert_allclose(b.params.means, a.params.means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.params.covariances, a.params.covariances, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(float(b.lower_bound), float(a.lower_bound), rtol=1e-10)


@SETTINGS
@given(
    X=mixture_data(), covariance_type=st.sampled_from(COVARIANCE_TYPES), key=st.integers(0, 1000)
)
def test_more_restarts_never_score_lower(X, covariance_type, key):
    one = jaxgmm.fit(X, 3, covariance_type=covariance_type, n_init=1, key=key, init="random")
    eight = jaxgmm.fit(X, 3, covariance_type=covariance_type, n_init=8, key=key, init="random")
    assert float(eight.lower_bound) >= float(one.lower_bound)
    # Restart 0 of the eight is the single run.
    np.testing.assert_allclose(
        float(eight.restart_lower_bounds[0]), float(one.lower_bound), rtol=1e-12
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_sample_weights_equal_repeated_rows(covariance_type):
    """Weight 3 on a point is the same as the point appearing three times."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + 4.0])
    counts = rng.integers(0, 4, size=len(X))
    counts[:3] = 1  # keep the starting means' rows present
    start = dict(
        weights_init=np.full(2, 0.5),
        means_init=X[[0, 45]],
        covariance_type=covariance_type,
        max_iter=20,
        tol=0.0,
    )
    weighted = jaxgmm.fit(X, 2, sample_weight=counts.astype(float), **start)
    repeated = jaxgmm.fit(np.repeat(X, counts, axis=0), 2, **start)
    np.testing.assert_allclose(weighted.params.means, repeated.params.means, rtol=1e-10)
    np.testing.assert_allclose(weighted.params.covariances, repeated.params.covariances, rtol=1e-10)
    np.testing.assert_allclose(weighted.params.weights, repeated.params.weights, rtol=1e-10)
    np.testing.assert_allclose(float(weighted.lower_bound), float(repeated.lower_bound), rtol=1e-10)
