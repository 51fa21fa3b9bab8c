"""Numerical robustness: degenerate, badly scaled and high-dimensional data.

Either the fit keeps working with finite parameters, or it stops with the documented
ValueError; it never returns NaN. Reference values come from closed forms, from a
float64 fit of the same values, or from numpy re-implementations.

Most tests share one data shape, (60, 2) with K = 3 and default options, so the
compiled programs are reused across tests (each new shape or static option compiles).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm import Status
from jaxgmm._iterate import select_restart

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
N, D, K = 60, 2, 3
REG_COVAR = 1e-6  # jaxgmm's default
ILL_DEFINED = "ill-defined empirical covariance"


def three_clusters(seed: int = 0) -> np.ndarray:
    """(60, 2) float64: three separated clusters of 20 points with different shapes."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]])
    scales = np.array([[1.0, 0.5], [0.6, 0.6], [0.4, 1.2]])
    return np.concatenate(
        [rng.normal(size=(20, D)) * s + c for c, s in zip(centres, scales, strict=True)]
    )


def duplicated_points(n_locations: int, scale: float = 1.0, seed: int = 1) -> np.ndarray:
    """(60, 2): ``n_locations`` distinct points, each repeated 60 / n_locations times."""
    locations = np.random.default_rng(seed).normal(size=(n_locations, D)) * scale
    return np.repeat(locations, N // n_locations, axis=0)


def assert_all_finite(result) -> None:
    for leaf in jax.tree_util.tree_leaves(result.params):
        assert np.all(np.isfinite(np.asarray(leaf))), leaf
    assert np.isfinite(float(result.lower_bound))


def sorted_by_mean(result, by_covariance: bool = False):
    """(weights, means, covariances) with components in a canonical order.

    Ordered by the means, or by each covariance's trace when the means cannot tell the
    components apart (float32 means at 1e6); tied covariances are left as they are.
    """
    p = result.params
    covariances = np.asarray(p.covariances, np.float64)
    if by_covariance and p.covariance_type != "tied":
        traces = covariances.reshape(len(covariances), -1).sum(axis=1)
        if p.covariance_type == "full":
            traces = np.trace(covariances, axis1=1, axis2=2)
        order = np.argsort(traces)
    else:
        order = np.lexsort(np.asarray(p.means, np.float64).T[::-1])
    if p.covariance_type != "tied":
        covariances = covariances[order]
    return (
        np.asarray(p.weights, np.float64)[order],
        np.asarray(p.means, np.float64)[order],
        covariances,
    )


def collapsed_log_likelihood(weight: float, reg_covar: float = REG_COVAR) -> float:
    """Closed form: log-likelihood of a point under a component collapsed onto it.

    A component whose points all coincide has covariance ``reg_covar * I``; other
    components (at distance ~1, variance 1e-6) contribute exp(-1e5), i.e. nothing.
    """
    return np.log(weight) - 0.5 * D * np.log(2 * np.pi * reg_covar)


# ------------------------------------------------------ far from the origin, scaled


@pytest.fixture(scope="module")
def centred_reference():
    """float64 fits of centred, 1e-3-scaled data, one per covariance type."""
    X = three_clusters() * 1e-3
    X = X - X.mean(axis=0)
    return {ct: jaxgmm.fit(X, K, covariance_type=ct, reg_covar=1e-12) for ct in COVARIANCE_TYPES}


OFFSET, SCALE = 1e6, 1e-3


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_offset_and_scaled_float64_matches_centred_fit(covariance_type, centred_reference):
    """Data at 1e6 with spread 1e-3 (float64): the fit of the centred data, translated."""
    X = three_clusters() * SCALE + OFFSET
    result = jaxgmm.fit(X, K, covariance_type=covariance_type, reg_covar=1e-12)
    reference = centred_reference[covariance_type]
    weights, means, covariances = sorted_by_mean(result)
    ref_weights, ref_means, ref_covariances = sorted_by_mean(reference)
    offset = X.mean(axis=0)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-6)
    np.testing.assert_allclose(means - offset, ref_means, rtol=0, atol=1e-6 * SCALE)
    np.testing.assert_allclose(covariances, ref_covariances, rtol=1e-5, atol=1e-5 * SCALE**2)
    np.testing.assert_allclose(float(result.lower_bound), float(reference.lower_bound), rtol=1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float64_data_fitted_in_float32_keep_their_spread(covariance_type, centred_reference):
    """x64 off: float64 data are centred in float64 before the float32 cast.

    Casting first would round every point at 1e6 to the same float32 number (spacing
    0.0625 > spread 1e-3) and the fit would see one point. Centred first, weights,
    covariances and log-likelihood match the float64 fit of centred data to float32
    accuracy. The means are returned in float32 and can be no finer than its spacing
    at 1e6, so jaxgmm warns.
    """
    X = three_clusters() * SCALE + OFFSET
    with jax.enable_x64(False):
        with pytest.warns(UserWarning, match="resolves numbers near"):
            result = jaxgmm.fit(X, K, covariance_type=covariance_type, reg_covar=1e-12)
    assert result.params.means.dtype == np.float32
    weights, means, covariances = sorted_by_mean(result, by_covariance=True)
    ref_weights, ref_means, ref_covariances = sorted_by_mean(
        centred_reference[covariance_type], by_covariance=True
    )
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-4)
    np.testing.assert_allclose(covariances, ref_covariances, rtol=1e-3, atol=1e-4 * SCALE**2)
    np.testing.assert_allclose(
        float(result.lower_bound), float(centred_reference[covariance_type].lower_bound), rtol=1e-5
    )
    # Means: the float32 number nearest to the exact mean (at most one spacing off).
    exact = (ref_means + X.mean(axis=0)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(means, exact, rtol=0, atol=np.spacing(np.float32(OFFSET)))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_data_far_from_origin_match_float64_fit_of_same_values(covariance_type):
    """float32 data at 1e6 with spread ~100: float32 arithmetic adds no error of its own.

    The reference is a float64 fit of exactly the float32 values jaxgmm receives, so
    only jaxgmm's arithmetic is compared, not the rounding of the input.
    """
    X32 = (three_clusters() * 100.0 + OFFSET).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # spacing 0.0625 << spread: no precision warning
        result = jaxgmm.fit(X32, K, covariance_type=covariance_type)
    reference = jaxgmm.fit(X32.astype(np.float64), K, covariance_type=covariance_type)
    assert result.params.means.dtype == np.float32
    weights, means, covariances = sorted_by_mean(result)
    ref_weights, ref_means, ref_covariances = sorted_by_mean(reference)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-4)
    np.testing.assert_allclose(means, ref_means, rtol=0, atol=2 * np.spacing(np.float32(OFFSET)))
    np.testing.assert_allclose(covariances, ref_covariances, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(float(result.lower_bound), float(reference.lower_bound), rtol=1e-5)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_data_rounded_to_one_value_give_a_finite_collapsed_fit(covariance_type):
    """Spread 1e-3 at 1e6 *as float32*: every value is already 1e6; the fit says so.

    float32 cannot hold the spread, so the data jaxgmm receives are 60 copies of one
    point. The honest fit is every component on that point with covariance
    ``reg_covar * I``, whose log-likelihood has a closed form.
    """
    X32 = (three_clusters() * SCALE + OFFSET).astype(np.float32)
    assert np.unique(X32).size == 1
    result = jaxgmm.fit(X32, K, covariance_type=covariance_type)
    assert_all_finite(result)
    assert int(result.status) == Status.CONVERGED
    np.testing.assert_allclose(float(result.lower_bound), collapsed_log_likelihood(1.0), rtol=1e-5)


def test_integer_and_float16_data_are_fitted(covariance_type="full"):
    """Converted, not rejected: the same fit as their float32 values."""
    X = three_clusters()
    reference = jaxgmm.fit(np.round(X * 10).astype(np.float32), K)
    as_int = jaxgmm.fit(np.round(X * 10).astype(np.int64), K)
    np.testing.assert_allclose(as_int.params.means, reference.params.means, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(as_int.lower_bound), float(reference.lower_bound), rtol=1e-5)
    X16 = X.astype(np.float16)
    as_half = jaxgmm.fit(X16, K)
    reference = jaxgmm.fit(X16.astype(np.float32), K)
    assert as_half.params.means.dtype == np.float32
    np.testing.assert_allclose(as_half.params.means, reference.params.means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(as_half.lower_bound), float(reference.lower_bound), rtol=1e-5)


# --------------------------------------------- duplicated, collapsing, empty components


@pytest.mark.parametrize("scale", [1.0, 10.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_duplicated_points_default_reg_covar(covariance_type, dtype, scale):
    """Three distinct points, K = 3: each component collapses onto one point.

    With reg_covar the fit goes on; each covariance is reg_covar * I and the mean
    log-likelihood per point is the closed form log(1/3) - D/2 log(2 pi reg_covar), a
    positive number (densities, not probabilities).
    """
    X = duplicated_points(3, scale).astype(dtype)
    result = jaxgmm.fit(X, K, covariance_type=covariance_type)
    assert_all_finite(result)
    assert int(result.status) == Status.CONVERGED
    rtol = 1e-6 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(
        float(result.lower_bound), collapsed_log_likelihood(1 / 3), rtol=rtol
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_duplicated_points_without_reg_covar_stop_with_a_clear_error(covariance_type, dtype):
    """reg_covar = 0: singular covariances; a ValueError, as scikit-learn raises."""
    X = duplicated_points(3).astype(dtype)
    with pytest.raises(ValueError, match=f"(?s){ILL_DEFINED}.*reg_covar = 0"):
        jaxgmm.fit(X, K, covariance_type=covariance_type, reg_covar=0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_empty_component(covariance_type, dtype):
    """Two distinct points, K = 3: one component gets no points at all.

    With reg_covar: finite, and the two occupied components give the closed form
    log(1/2) - D/2 log(2 pi reg_covar). Without: the documented error, no NaN.
    """
    X = duplicated_points(2).astype(dtype)
    result = jaxgmm.fit(X, K, covariance_type=covariance_type)
    assert_all_finite(result)
    assert int(result.status) == Status.CONVERGED
    assert np.sort(np.asarray(result.params.weights))[0] < 1e-6
    rtol = 1e-6 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(
        float(result.lower_bound), collapsed_log_likelihood(1 / 2), rtol=rtol
    )
    with pytest.raises(ValueError, match=ILL_DEFINED):
        jaxgmm.fit(X, K, covariance_type=covariance_type, reg_covar=0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_component_collapsing_onto_an_isolated_point(covariance_type, dtype):
    """One point far from the rest: its own component, covariance reg_covar * I.

    float32 must match the float64 fit of the same values.
    """
    X = np.concatenate([three_clusters()[: N - 1], [[40.0, 40.0]]]).astype(dtype)
    result = jaxgmm.fit(X, K, covariance_type=covariance_type)
    assert_all_finite(result)
    assert int(result.status) == Status.CONVERGED
    reference = jaxgmm.fit(X.astype(np.float64), K, covariance_type=covariance_type)
    np.testing.assert_allclose(float(result.lower_bound), float(reference.lower_bound), rtol=1e-5)
    if covariance_type == "tied":
        return
    means = np.asarray(result.params.means, np.float64)
    isolated = int(np.argmin(np.sum((means - [40.0, 40.0]) ** 2, axis=1)))
    np.testing.assert_allclose(float(result.params.weights[isolated]), 1 / N, rtol=1e-5)
    variances = np.asarray(result.params.covariances, np.float64)[isolated]
    if covariance_type == "full":
        variances = np.diag(variances)
    np.testing.assert_allclose(variances, REG_COVAR, rtol=1e-2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_constant_feature(covariance_type, dtype):
    """A feature with one value everywhere: its variance is reg_covar, the fit goes on.

    float32 must match the float64 fit of the same values.
    """
    rng = np.random.default_rng(5)
    separated = np.repeat([0.0, 5.0, 10.0], 20) + rng.normal(size=N) * np.repeat([0.5, 1, 0.7], 20)
    X = np.stack([separated, np.full(N, 2.5)], axis=1).astype(dtype)
    result = jaxgmm.fit(X, K, covariance_type=covariance_type)
    assert_all_finite(result)
    assert int(result.status) == Status.CONVERGED
    reference = jaxgmm.fit(X.astype(np.float64), K, covariance_type=covariance_type)
    np.testing.assert_allclose(float(result.lower_bound), float(reference.lower_bound), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_predict_proba_far_from_every_component(dtype):
    """|log p| ~ 1e6: probabilities still sum to one and keep the exact symmetry.

    The point (0.5, y) is equally far from both components, so the exact posterior is
    (1/2, 1/2); points nearer one component go to it.
    """
    params = jaxgmm.GaussianMixtureParams(
        weights=jnp.asarray([0.5, 0.5], dtype),
        means=jnp.asarray([[0.0, 0.0], [1.0, 0.0]], dtype),
        covariances=jnp.asarray([1e-4, 1e-4], dtype),
        precisions_cholesky=jnp.asarray([100.0, 100.0], dtype),
        covariance_type="spherical",
    )
    X = np.array([[0.5, 30.0], [0.5, 100.0], [0.25, 50.0], [0.75, 70.0]], dtype)
    proba = np.asarray(jaxgmm.predict_proba(params, X), np.float64)
    assert np.abs(np.asarray(jaxgmm.score_samples(params, X))).min() > 1e6
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(proba[:2], 0.5, rtol=1e-6)
    np.testing.assert_allclose(proba[2:], [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)


# -------------------------------------------------------------- high dimensions


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_dimension_close_to_number_of_points(covariance_type):
    """N = 100, D = 99: sample covariances are singular; reg_covar keeps the fit finite."""
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(50, 99)), rng.normal(size=(50, 99)) + 2.0])
    result = jaxgmm.fit(X, 2, covariance_type=covariance_type)
    assert_all_finite(result)
    assert int(result.status) != Status.NON_FINITE
    proba = np.asarray(jaxgmm.predict_proba(result, X))
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_high_dimension_diag_log_domain(dtype):
    """D = 500: every density underflows (log p < -800), the log-domain E-step does not.

    Scores are checked against a float64 numpy evaluation of the fitted parameters.
    """
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 500)) * 3
    X = np.concatenate([c + rng.normal(size=(40, 500)) * 1.5 for c in centres]).astype(dtype)
    result = jaxgmm.fit(X, 3, covariance_type="diag")
    assert_all_finite(result)
    assert int(result.status) == Status.CONVERGED
    log_lik = np.asarray(jaxgmm.score_samples(result, X), np.float64)
    assert np.all(np.isfinite(log_lik)) and log_lik.max() < -800
    p = result.params
    weights, means, variances = (
        np.asarray(a, np.float64) for a in (p.weights, p.means, p.covariances)
    )
    X64 = X.astype(np.float64)
    per_component = np.stack(
        [
            np.log(w) - 0.5 * np.sum(np.log(2 * np.pi * v) + (X64 - m) ** 2 / v, axis=1)
            for w, m, v in zip(weights, means, variances, strict=True)
        ],
        axis=1,
    )
    top = per_component.max(axis=1)
    reference = top + np.log(np.exp(per_component - top[:, None]).sum(axis=1))
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(log_lik, reference, rtol=rtol)
    np.testing.assert_allclose(float(result.lower_bound), reference.mean(), rtol=rtol * 10)
    proba = np.asarray(jaxgmm.predict_proba(result, X), np.float64)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------- status, restarts


def test_status_converged_and_history():
    result = jaxgmm.fit(three_clusters(), K)
    assert int(result.status) == Status.CONVERGED and bool(result.converged)
    n_iter = int(result.n_iter)
    history = np.asarray(result.history)
    assert 0 < n_iter < 100
    assert np.all(np.isfinite(history[:n_iter])) and np.all(np.isnan(history[n_iter:]))


def test_status_max_iter():
    result = jaxgmm.fit(three_clusters(), K, tol=0.0)
    assert int(result.status) == Status.MAX_ITER and not bool(result.converged)
    assert int(result.n_iter) == 100
    assert_all_finite(result)


def test_status_non_finite_under_jit():
    """Under jit fit cannot raise: the status says NON_FINITE, every restart scores -inf.

    (Here the initialisation itself is singular, so there are no finite parameters to
    keep; the result must not be used, which the status says.)
    """
    X = duplicated_points(3)
    result = jax.jit(lambda x: jaxgmm.fit(x, K, reg_covar=0.0))(X)
    assert int(result.status) == Status.NON_FINITE
    assert not bool(result.converged)
    assert np.all(np.isneginf(np.asarray(result.restart_lower_bounds)))
    with pytest.raises(ValueError, match="NaN or infinite.*result.status"):
        jaxgmm.predict(result, X)


def test_select_restart_never_prefers_a_non_finite_restart():
    ok, bad = Status.CONVERGED, Status.NON_FINITE
    cases = [
        # (statuses, lower bounds, expected best)
        ([bad, ok, ok], [5.0, 1.0, 2.0], 2),  # a non-finite restart's bound is ignored
        ([bad, ok], [-np.inf, -np.inf], 1),  # ties at -inf (max_iter = 0): the finite one
        ([ok, bad, Status.MAX_ITER], [1.0, np.nan, 3.0], 2),
        ([bad, bad], [1.0, 2.0], 0),  # all non-finite: fit raises on this
    ]
    for statuses, bounds, expected in cases:
        best, scores = select_restart(jnp.asarray(statuses), jnp.asarray(bounds))
        assert int(best) == expected, (statuses, bounds)
        finite = np.asarray(statuses) != bad
        np.testing.assert_array_equal(np.asarray(scores), np.where(finite, bounds, -np.inf))


def test_non_finite_restarts_are_never_chosen():
    """reg_covar = 0, K = 2, three clusters in a row, the left one flat (singular alone).

    By symmetry k-means splits the row either {left, middle} | {right} (finite) or
    {left} | {middle, right} (the flat cluster alone: singular), so restarts mix.
    """
    rng = np.random.default_rng(0)
    flat = np.stack([rng.normal(size=20) * 0.5, np.zeros(20)], axis=1)
    X = np.concatenate(
        [
            flat,
            rng.normal(size=(20, D)) * 0.5 + [5.0, 0.0],
            rng.normal(size=(20, D)) * 0.5 + [10.0, 0.0],
        ]
    )
    mixed = 0
    for key in range(8):
        try:
            result = jaxgmm.fit(X, 2, reg_covar=0.0, n_init=4, key=key)
        except ValueError as err:  # every restart collapsed
            assert ILL_DEFINED in str(err)
            continue
        bounds = np.asarray(result.restart_lower_bounds)
        assert int(result.status) != Status.NON_FINITE
        assert float(result.lower_bound) == bounds.max()
        assert_all_finite(result)
        mixed += bool(np.isneginf(bounds).any() and np.isfinite(bounds).any())
    assert mixed >= 4, f"only {mixed} of 8 keys mixed finite and non-finite restarts"
