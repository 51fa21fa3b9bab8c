"""Shape buckets: nearby sizes share one compiled program, and padding changes nothing."""

import contextlib

import jax
import numpy as np
import pytest

import jaxgmm
import jaxgmm._fit
from jaxgmm._buckets import (
    FINE_STEPS,
    FINE_WORK,
    GROWTH,
    SMALL_ROW_WORK,
    TINY_ROW_WORK,
    component_bucket,
    history_length,
    row_layout,
)

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
INITS = ["kmeans", "k-means++", "random", "random_from_data"]


@contextlib.contextmanager
def count_compilations():
    """Count XLA backend compilations inside the block; yields a one-element list."""
    count = [0]
    active = [True]

    def listener(event, duration, **kwargs):
        if active[0] and event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        active[0] = False


def _data(n_rows: int, seed: int = 0, n_features: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    half = n_rows // 2
    return np.concatenate(
        [
            rng.normal(0.0, 1.0, (half, n_features)),
            rng.normal(4.0, 0.5, (n_rows - half, n_features)),
        ]
    )


@pytest.mark.parametrize("max_chunk", [64, 1000, 43690])
def test_row_grid_growth_and_alignment(max_chunk):
    for n in range(1, 40 * max_chunk, max(1, max_chunk // 7)):
        padded, chunk = row_layout(n, max_chunk)
        assert padded >= n and chunk <= max_chunk and padded % chunk == 0
        # padding never costs more than the growth factor (plus row alignment)
        assert padded <= GROWTH * n + 8 + padded // chunk


@pytest.mark.parametrize("max_chunk", [64, 1000, 43690])
def test_fits_of_much_work_take_the_fine_row_grid(max_chunk):
    for n in range(1, 40 * max_chunk, max(1, max_chunk // 7)):
        padded, chunk = row_layout(n, max_chunk, FINE_WORK)
        assert padded >= n and chunk <= max_chunk and padded % chunk == 0
        # at most 1/16 extra rows (plus row alignment and rounding to whole chunks)
        assert padded <= n + n / FINE_STEPS + 8 + padded // chunk
        # less work: the coarse grid
        assert row_layout(n, max_chunk, FINE_WORK - 1) == row_layout(n, max_chunk)
    # scikit-learn's digits: 1,797 rows pad to 1,800 + at most 1/16, not to 2,400
    assert row_layout(1797, 43690, FINE_WORK)[0] <= 1797 * (1 + 1 / FINE_STEPS)


def test_fit_gives_the_row_grid_its_work(monkeypatch):
    """fit and fit_many report (models x) rows x features x components x restarts to
    the row grid."""
    seen = []

    def record(n_rows, max_chunk, *work):
        seen.append(work)
        raise KeyboardInterrupt  # stop before anything is compiled

    monkeypatch.setattr(jaxgmm._fit, "row_layout", record)
    with pytest.raises(KeyboardInterrupt):
        jaxgmm.fit(_data(300, n_features=5), 3, n_init=7)
    with pytest.raises(KeyboardInterrupt):
        jaxgmm.fit_many(np.stack([_data(300, n_features=5)] * 4), 3, n_init=2)
    assert seen == [(300 * 5 * 3 * 7,), (4 * 300 * 5 * 3 * 2,)]


def test_row_grid_needs_six_programs_for_500_to_5000_rows():
    sizes = {row_layout(n, 43690) for n in range(500, 5001)}
    assert len(sizes) <= 6


def test_component_and_history_buckets():
    assert [component_bucket(k) for k in (1, 2, 3, 4, 5, 8, 9, 10, 12, 13, 31)] == [
        1,
        2,
        4,
        4,
        8,
        8,
        12,
        12,
        12,
        16,
        32,
    ]
    # Tiny problems pad K <= 8 to 8, small ones K <= 4 to 4; large ones keep the power of two.
    tiny, small, large = TINY_ROW_WORK, SMALL_ROW_WORK, SMALL_ROW_WORK + 1
    assert [component_bucket(k, tiny) for k in (1, 2, 3, 4, 5, 8, 9)] == [8, 8, 8, 8, 8, 8, 12]
    assert [component_bucket(k, tiny + 1) for k in (1, 4, 5)] == [4, 4, 8]
    assert [component_bucket(k, small) for k in (1, 2, 3, 4, 5, 9)] == [4, 4, 4, 4, 8, 12]
    assert [component_bucket(k, large) for k in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 4, 8, 12]
    assert [history_length(m) for m in (0, 1, 2, 3, 100, 128, 129)] == [1, 1, 2, 4, 128, 128, 256]


def test_fits_of_nearby_row_counts_compile_once():
    X = _data(1013, seed=1).astype(np.float32)
    jaxgmm.fit(X[:1000], 3, key=0)
    with count_compilations() as count:
        for n in (1001, 1013):
            jaxgmm.fit(X[:n], 3, key=0)
    assert count[0] == 0


def test_small_fits_with_one_to_four_components_compile_once():
    X = _data(600, seed=4).astype(np.float32)
    jaxgmm.fit(X, 1, key=0)
    with count_compilations() as count:
        results = [jaxgmm.fit(X, k, key=0) for k in (2, 3, 4)]
    assert count[0] == 0
    assert [r.params.means.shape[0] for r in results] == [2, 3, 4]


def test_new_max_iter_and_tol_do_not_compile_again():
    X = _data(300, seed=2).astype(np.float32)
    jaxgmm.fit(X, 2, max_iter=100, key=0)
    with count_compilations() as count:
        result = jaxgmm.fit(X, 2, max_iter=77, tol=1e-4, key=0)
    assert count[0] == 0
    assert result.history.shape == (77,)


def test_predictions_of_nearby_row_counts_compile_once():
    X = _data(700, seed=3).astype(np.float32)
    params = jaxgmm.fit(X, 3, key=0).params
    for fn in (jaxgmm.score_samples, jaxgmm.predict, jaxgmm.predict_proba, jaxgmm.score):
        fn(params, X[:600])
    with count_compilations() as count:
        for fn in (jaxgmm.score_samples, jaxgmm.predict, jaxgmm.predict_proba, jaxgmm.score):
            fn(params, X[:650])
    assert count[0] == 0


def _numpy_log_densities(params, X) -> np.ndarray:
    """(N, K) log w_k + log N(x; mu_k, Sigma_k) from the covariances, in float64 NumPy."""
    weights, means = np.asarray(params.weights, float), np.asarray(params.means, float)
    covariances = np.asarray(params.covariances, float)
    out = np.empty((X.shape[0], len(weights)))
    eye = np.eye(X.shape[1])
    for k in range(len(weights)):
        if params.covariance_type == "full":
            sigma = covariances[k]
        elif params.covariance_type == "tied":
            sigma = covariances
        elif params.covariance_type == "diag":
            sigma = np.diag(covariances[k])
        else:
            sigma = covariances[k] * eye
        diff = X - means[k]
        _, logdet = np.linalg.slogdet(sigma)
        mahalanobis = np.einsum("nd,nd->n", diff, np.linalg.solve(sigma, diff.T).T)
        out[:, k] = np.log(weights[k]) - 0.5 * (
            X.shape[1] * np.log(2 * np.pi) + logdet + mahalanobis
        )
    return out


def test_scoring_models_of_any_k_and_covariance_type_compiles_once():
    """Tiny models share the scoring programs: K = 1..4 (padded to one K bucket) and all
    four covariance types (scored as full matrices)."""
    X = _data(200, seed=6).astype(np.float64)
    models = [jaxgmm.fit(X, k, key=0).params for k in range(1, 5)] + [
        jaxgmm.fit(X, k, covariance_type=covariance_type, key=0).params
        for k, covariance_type in ((3, "spherical"), (2, "diag"), (4, "tied"))
    ]
    outputs = ("score_samples", "predict", "predict_proba", "score")
    for name in outputs:
        getattr(jaxgmm, name)(models[3], X[:150])
    with count_compilations() as count:
        results = [[getattr(jaxgmm, name)(m, X[:150]) for name in outputs] for m in models]
    assert count[0] == 0
    for params, (log_density, labels, proba, score) in zip(models, results, strict=True):
        reference = _numpy_log_densities(params, X[:150])
        log_norm = np.logaddexp.reduce(reference, axis=1)
        np.testing.assert_allclose(log_density, log_norm, rtol=1e-10)
        np.testing.assert_array_equal(labels, np.argmax(reference, axis=1))
        assert proba.shape == (150, params.n_components)
        np.testing.assert_allclose(proba, np.exp(reference - log_norm[:, None]), atol=1e-10)
        np.testing.assert_allclose(score, log_norm.mean(), rtol=1e-10)


def _unpadded(monkeypatch):
    """Make fit skip every bucket: rows, components and iteration counts exact."""
    monkeypatch.setattr(jaxgmm._fit, "row_layout", lambda n, chunk, *work: (n, min(n, chunk)))
    monkeypatch.setattr(jaxgmm._fit, "component_bucket", lambda k, *work: k)
    monkeypatch.setattr(jaxgmm._fit, "history_length", lambda m: m)


# A Latin square: every covariance type once and every init method once (padded rows must
# never be picked by an init; padded components must stay empty in every M-step), with one
# and with two restarts. Each case compiles its own padded and unpadded programs.
CASES = [
    ("full", "kmeans", 2),
    ("tied", "k-means++", 1),
    ("diag", "random", 2),
    ("spherical", "random_from_data", 1),
]


@pytest.mark.parametrize("covariance_type, init, n_init", CASES)
def test_padded_fit_equals_unpadded_fit(monkeypatch, covariance_type, init, n_init):
    """Rows 501 -> 712 and K 3 -> 4 (inactive component): the same fit, float64."""
    X = _data(501, seed=4)
    weights = np.random.default_rng(5).uniform(0.5, 2.0, len(X))
    options = dict(covariance_type=covariance_type, init=init, key=3, n_init=n_init, tol=1e-6)
    with jax.enable_x64(True):
        padded = jaxgmm.fit(X, 3, sample_weight=weights, **options)
        with monkeypatch.context() as patch:
            _unpadded(patch)
            plain = jaxgmm.fit(X, 3, sample_weight=weights, **options)
        assert int(padded.n_iter) == int(plain.n_iter)
        assert int(padded.status) == int(plain.status)
        for name in ("weights", "means", "covariances", "precisions_cholesky"):
            np.testing.assert_allclose(
                getattr(padded.params, name), getattr(plain.params, name), rtol=1e-9, atol=1e-12
            )
        np.testing.assert_allclose(padded.lower_bound, plain.lower_bound, rtol=1e-12)
        np.testing.assert_allclose(padded.history, plain.history, rtol=1e-12)
        np.testing.assert_allclose(
            padded.restart_lower_bounds, plain.restart_lower_bounds, rtol=1e-12
        )
        assert padded.params.weights.shape == (3,)
        np.testing.assert_allclose(
            jaxgmm.score_samples(padded, X), jaxgmm.score_samples(plain, X), rtol=1e-10
        )
        # BIC/AIC count the true N and K: compare with the formula on the unpadded fit
        n_params = jaxgmm.n_parameters(plain)
        log_lik = float(np.sum(np.asarray(jaxgmm.score_samples(plain, X))))
        assert float(jaxgmm.bic(padded, X)) == pytest.approx(
            -2 * log_lik + n_params * np.log(len(X)), rel=1e-10
        )
        assert float(jaxgmm.aic(padded, X)) == pytest.approx(-2 * log_lik + 2 * n_params, rel=1e-10)


def test_padded_user_init_equals_unpadded(monkeypatch):
    X = _data(200, seed=6)
    rng = np.random.default_rng(7)
    means = X[rng.choice(len(X), 3, replace=False)]
    precisions = np.stack([np.eye(3) * p for p in (1.0, 2.0, 0.5)])
    options = dict(weights_init=[0.2, 0.3, 0.5], means_init=means, precisions_init=precisions)
    with jax.enable_x64(True):
        padded = jaxgmm.fit(X, 3, **options)
        with monkeypatch.context() as patch:
            _unpadded(patch)
            plain = jaxgmm.fit(X, 3, **options)
    np.testing.assert_allclose(padded.params.means, plain.params.means, rtol=1e-10)
    assert int(padded.n_iter) == int(plain.n_iter)


def test_inactive_components_are_never_chosen_with_zero_reg_covar():
    """Padding components have weight exactly zero and stay finite even with reg_covar=0."""
    X = _data(90, seed=8)
    with jax.enable_x64(True):
        result = jaxgmm.fit(X, 3, reg_covar=0.0, key=1)  # K = 3 runs padded to 4
    assert result.params.weights.shape == (3,)
    np.testing.assert_allclose(np.sum(result.params.weights), 1.0, rtol=1e-12)
    assert np.all(np.asarray(jaxgmm.predict(result, X)) < 3)


def test_fit_many_compiles_its_program_and_nothing_else():
    """Keys, casts and the history cut happen on the host: one compiled program per call."""
    datasets = [_data(37, seed=s, n_features=2) for s in range(7)]  # float64, shapes unique here
    with count_compilations() as count:
        result = jaxgmm.fit_many(datasets, 2, max_iter=3, key=11)
    assert count[0] == 1
    assert result.history.shape == (7, 3)


def test_each_prediction_call_dispatches_one_program_and_nothing_else(monkeypatch):
    """A new row count in a known bucket compiles nothing: no eager op, no small jit.

    Any device operation besides the one compiled program (padding, checks, slicing)
    would compile anew for the unseen shape; the program itself runs once per call.
    """
    X = _data(300, seed=4).astype(np.float32)
    estimator = jaxgmm.GaussianMixture(3, random_state=0).fit(X)
    params = estimator.params_
    names = ("score_samples", "predict", "predict_proba", "score")
    for name in names:  # compile each output's program for the 140-row bucket
        getattr(jaxgmm, name)(params, X[:100])
    X_device = jax.numpy.asarray(X[:101])
    programs = []
    program = jaxgmm._inference._evaluate_program
    monkeypatch.setattr(
        jaxgmm._inference,
        "_evaluate_program",
        lambda *a, **k: programs.append(1) or program(*a, **k),
    )
    summaries = []  # value checks of the parameters (small ones: on the host, in NumPy)
    summary = jaxgmm._validation._host_params_summary
    monkeypatch.setattr(
        jaxgmm._validation,
        "_host_params_summary",
        lambda p: summaries.append(1) or summary(p),
    )
    with count_compilations() as count:
        for name in names:
            getattr(jaxgmm, name)(params, X[:99])
            getattr(jaxgmm, name)(params, X_device)
            getattr(estimator, name)(X[:98])
    assert count[0] == 0
    assert len(programs) == 3 * len(names)
    assert summaries == []  # fitted parameters were checked when they were made
    built = jaxgmm.GaussianMixtureParams(
        **{
            f: getattr(params, f)
            for f in ("weights", "means", "covariances", "precisions_cholesky")
        }
    )
    for _ in range(3):
        jaxgmm.predict(built, X[:99])
    assert summaries == [1]  # parameters made by hand: checked on first use only


def test_tiny_fits_of_every_covariance_type_share_one_program():
    """Tiny data: K = 1..6 of all four covariance types compile one fit program."""
    X = _data(400, seed=9).astype(np.float32)
    jaxgmm.fit(X, 2, covariance_type="full", key=0)
    with count_compilations() as count:
        results = {
            (covariance_type, k): jaxgmm.fit(X, k, covariance_type=covariance_type, key=0)
            for covariance_type in COVARIANCE_TYPES
            for k in (1, 3, 6)
        }
    assert count[0] == 0
    shapes = {"full": (6, 3, 3), "tied": (3, 3), "diag": (6, 3), "spherical": (6,)}
    for covariance_type in COVARIANCE_TYPES:
        params = results[covariance_type, 6].params
        assert params.covariance_type == covariance_type
        assert params.covariances.shape == shapes[covariance_type]
        assert params.precisions_cholesky.shape == shapes[covariance_type]


# Each type once; restarts with sample weights, or the user's initial parameters (whose
# precisions the shared program takes as full matrices). Each case compiles two programs.
SHARED_CASES = [("full", "restarts"), ("tied", "user"), ("diag", "restarts"), ("spherical", "user")]


@pytest.mark.parametrize("covariance_type, start", SHARED_CASES)
def test_shared_tiny_program_equals_each_types_own_program(monkeypatch, covariance_type, start):
    """The one program of tiny fits (all types as full matrices) gives each type's fit."""
    X = _data(250, seed=10)
    rng = np.random.default_rng(11)
    weights = rng.uniform(0.5, 2.0, len(X))
    precisions = {
        "full": np.stack([np.eye(3) * p for p in (1.0, 2.0, 0.5)]),
        "tied": np.eye(3) * 1.5 + 0.2,
        "diag": rng.uniform(0.5, 2.0, (3, 3)),
        "spherical": np.array([1.0, 2.0, 0.5]),
    }[covariance_type]
    starts = {
        "restarts": dict(key=2, n_init=2),
        "user": dict(means_init=X[[0, 130, 249]], precisions_init=precisions),
    }
    options = dict(covariance_type=covariance_type, tol=1e-8, reg_covar=1e-5, **starts[start])
    with jax.enable_x64(True):
        shared = jaxgmm.fit(X, 3, sample_weight=weights, **options)
        with monkeypatch.context() as patch:
            patch.setattr(jaxgmm._fit, "TINY_ROW_WORK", -1)  # each type's own program
            own = jaxgmm.fit(X, 3, sample_weight=weights, **options)
    assert shared.params.covariance_type == own.params.covariance_type
    assert int(shared.n_iter) == int(own.n_iter) > 5
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(
            getattr(shared.params, name), getattr(own.params, name), rtol=1e-8, atol=1e-11
        )
    np.testing.assert_allclose(shared.lower_bound, own.lower_bound, rtol=1e-12)
    np.testing.assert_allclose(shared.history, own.history, rtol=1e-12)


def test_fit_results_cross_back_to_the_device_once():
    """A fit finishes on the host: one transfer of its outputs back to the device (none
    for the estimator, whose attributes are NumPy arrays), same values either way."""
    X = _data(300, seed=12)  # float64 data fitted in float32: the centre is added back
    result = jaxgmm.fit(X, 3, covariance_type="diag", key=0)
    fields = ("weights", "means", "covariances", "precisions_cholesky")
    assert all(isinstance(getattr(result.params, f), jax.Array) for f in fields)
    assert isinstance(result.history, jax.Array)
    with jaxgmm._fit.host_results():
        host = jaxgmm.fit(X, 3, covariance_type="diag", key=0)
    assert all(type(getattr(host.params, f)) is np.ndarray for f in fields)
    for f in fields:
        np.testing.assert_array_equal(getattr(host.params, f), getattr(result.params, f))
    np.testing.assert_array_equal(host.history, result.history)
    assert host.params.means.shape == (3, 3) and host.history.shape == (100,)
    # every M-step keeps the weighted mean of the means at the data's mean
    centre = host.params.weights @ host.params.means
    np.testing.assert_allclose(centre, X.mean(axis=0), rtol=1e-4, atol=1e-4)

    estimator = jaxgmm.GaussianMixture(3, covariance_type="diag", random_state=0).fit(X)
    assert all(type(getattr(estimator, f + "_")) is np.ndarray for f in fields)
    params = estimator.params_
    assert all(isinstance(getattr(params, f), jax.Array) for f in fields)
    assert estimator.params_ is params  # moved once, then kept
    for f in fields:
        np.testing.assert_array_equal(getattr(params, f), getattr(estimator, f + "_"))
    estimator.means_ = estimator.means_ + 1.0  # a new attribute: params_ follow it
    np.testing.assert_array_equal(estimator.params_.means, estimator.means_)


@pytest.mark.parametrize("covariance_type", ["tied", "spherical"])
def test_estimator_scores_a_tiny_model_without_moving_its_parameters_first(covariance_type):
    """Scoring pads a tiny model on the host and moves only that copy: the fitted
    parameters stay NumPy arrays, and BIC / predictions equal a NumPy computation."""
    X = _data(300, seed=14)
    estimator = jaxgmm.GaussianMixture(3, covariance_type=covariance_type, random_state=0)
    estimator.fit(X)
    stored = estimator._fitted_params.stored()
    fields = ("weights", "means", "covariances", "precisions_cholesky")
    assert all(type(getattr(stored, f)) is np.ndarray for f in fields)

    # Reference: log N(x | mean_k, cov_k) from the fitted attributes, in NumPy.
    covs = estimator.covariances_
    if covariance_type == "tied":
        covs = np.repeat(covs[None], 3, axis=0)
    else:
        covs = covs[:, None, None] * np.eye(X.shape[1])
    log_dens = np.stack(
        [
            -0.5 * np.einsum("nd,de,ne->n", X - m, np.linalg.inv(c), X - m)
            - 0.5 * np.linalg.slogdet(2 * np.pi * c)[1]
            for m, c in zip(estimator.means_, covs, strict=True)
        ],
        axis=1,
    ) + np.log(estimator.weights_)
    top = log_dens.max(axis=1, keepdims=True)
    log_lik = (top[:, 0] + np.log(np.exp(log_dens - top).sum(axis=1))).sum()
    n_params = (
        3 * X.shape[1]
        + 2
        + (X.shape[1] * (X.shape[1] + 1) // 2 if covariance_type == "tied" else 3)
    )
    expected_bic = -2 * log_lik + n_params * np.log(X.shape[0])
    np.testing.assert_allclose(estimator.bic(X), expected_bic, rtol=1e-5)
    np.testing.assert_array_equal(estimator.predict(X), log_dens.argmax(axis=1))
    stored = estimator._fitted_params.stored()
    assert all(type(getattr(stored, f)) is np.ndarray for f in fields)


@pytest.mark.parametrize("covariance_type", ["diag"])
def test_tiny_fit_inside_the_callers_jit(covariance_type):
    """Host data fitted inside the caller's jit: the caller's program, same result."""
    X = _data(200, seed=13).astype(np.float32)
    eager = jaxgmm.fit(X, 3, covariance_type=covariance_type, key=1)
    staged = jax.jit(lambda: jaxgmm.fit(X, 3, covariance_type=covariance_type, key=1))()
    assert staged.params.covariances.shape == eager.params.covariances.shape
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            getattr(staged.params, name), getattr(eager.params, name), rtol=1e-4, atol=1e-5
        )
