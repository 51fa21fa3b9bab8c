"""``jaxgmm.GaussianMixture`` against scikit-learn's ``GaussianMixture``.

Reference values come from scikit-learn (run on the same data and starting
parameters), from NumPy, or from closed forms; never from jaxgmm itself. To keep the
suite fast, tests share a few data shapes and options so compiled programs are reused.
Set ``JAXGMM_FULL_ESTIMATOR_TESTS=1`` to run every covariance type with every init
method (the default runs a Latin square: each type and each method twice).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import jaxgmm  # noqa: E402
from jaxgmm import GaussianMixture  # noqa: E402
from jaxgmm import _estimator as estimator_module  # noqa: E402

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
K = 3
ATTRIBUTES = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


def _pairs(shift: int) -> list[tuple[str, str]]:
    """Covariance type x init method: every pair, or a Latin square (cyclic shift)."""
    if os.environ.get("JAXGMM_FULL_ESTIMATOR_TESTS"):
        return [(c, i) for c in COVARIANCE_TYPES for i in INIT_METHODS]
    return [(c, INIT_METHODS[(n + shift) % 4]) for n, c in enumerate(COVARIANCE_TYPES)]


def _clusters(centers, scale: float, seed: int, n_per: int = 100) -> np.ndarray:
    """Three anisotropic, correlated 2-D clusters of n_per points each; -> (3 n_per, 2)."""
    rng = np.random.RandomState(seed)
    shapes = [np.array([[1.0, 0.6], [0.0, 0.5]]), np.array([[0.5, 0.0], [0.3, 1.2]]), np.eye(2)]
    return np.vstack(
        [scale * rng.randn(n_per, 2) @ a + c for a, c in zip(shapes, centers, strict=True)]
    )


@pytest.fixture(scope="module", name="X_overlap")
def fixture_x_overlap() -> np.ndarray:
    """(300, 2) overlapping clusters: EM needs many iterations."""
    return _clusters([[0.0, 0.0], [2.5, 2.5], [0.0, 4.0]], 1.0, seed=0)


@pytest.fixture(scope="module", name="X_blobs")
def fixture_x_blobs() -> np.ndarray:
    """(300, 2) well-separated clusters: one clear optimum, unambiguous labels."""
    return _clusters([[0.0, 0.0], [8.0, 8.0], [0.0, 14.0]], 1.0, seed=1)


def _starting_params(covariance_type: str) -> dict[str, np.ndarray]:
    """Deliberately poor starting weights, means and precisions for K=3, D=2."""
    precisions = {
        "full": np.array([[[1.0, 0.2], [0.2, 1.0]], [[2.0, -0.3], [-0.3, 0.5]], np.eye(2)]),
        "tied": np.array([[1.0, 0.2], [0.2, 1.5]]),
        "diag": np.array([[1.0, 2.0], [0.5, 1.0], [1.0, 1.0]]),
        "spherical": np.array([1.0, 0.5, 2.0]),
    }[covariance_type]
    return dict(
        weights_init=np.array([0.2, 0.3, 0.5]),
        means_init=np.array([[-1.0, 0.5], [3.0, 1.0], [1.0, 3.0]]),
        precisions_init=precisions,
    )


def _same_start(**options) -> dict:
    """Options of the fits that share one compiled program: K=3, full, given start."""
    return dict(n_components=K, random_state=0, **_starting_params("full"), **options)


def _assert_fitted_like(ours: GaussianMixture, ref, rtol: float, atol: float) -> None:
    """Every fitted attribute of ``ours`` matches the scikit-learn estimator ``ref``."""
    for name in ATTRIBUTES:
        np.testing.assert_allclose(
            getattr(ours, name), getattr(ref, name), rtol=rtol, atol=atol, err_msg=name
        )
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_
    assert ours.n_features_in_ == ref.n_features_in_
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=rtol, atol=atol)
    np.testing.assert_allclose(
        ours.lower_bounds_, np.asarray(ref.lower_bounds_), rtol=rtol, atol=atol
    )


def _order(means: np.ndarray) -> np.ndarray:
    """Component order by position (first coordinate + 10 x second)."""
    return np.argsort(means[:, 0] + 10.0 * means[:, 1])


def _sorted_params(model, covariance_type: str) -> dict[str, np.ndarray]:
    """Parameters with components in position order, to compare up to relabelling."""
    order = _order(model.means_)
    covariances = model.covariances_ if covariance_type == "tied" else model.covariances_[order]
    return dict(weights=model.weights_[order], means=model.means_[order], covariances=covariances)


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize(("covariance_type", "init_params"), _pairs(0))
def test_same_start_agrees_with_sklearn(X_overlap, covariance_type, init_params) -> None:
    """Given the same starting parameters, every attribute and method output agrees (f64)."""
    options = dict(
        n_components=K,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=0,
        **_starting_params(covariance_type),
    )
    ref = SkGaussianMixture(**options).fit(X_overlap)
    ours = GaussianMixture(**options).fit(X_overlap)
    assert ref.n_iter_ > 5  # a real EM run, not an immediate stop
    _assert_fitted_like(ours, ref, rtol=1e-8, atol=1e-10)
    assert ours.means_.dtype == np.float64
    np.testing.assert_array_equal(ours.predict(X_overlap), ref.predict(X_overlap))
    np.testing.assert_allclose(
        ours.predict_proba(X_overlap), ref.predict_proba(X_overlap), rtol=1e-7, atol=1e-10
    )
    np.testing.assert_allclose(
        ours.score_samples(X_overlap), ref.score_samples(X_overlap), rtol=1e-9
    )
    assert ours.score(X_overlap) == pytest.approx(ref.score(X_overlap), rel=1e-10)
    assert ours.bic(X_overlap) == pytest.approx(ref.bic(X_overlap), rel=1e-10)
    assert ours.aic(X_overlap) == pytest.approx(ref.aic(X_overlap), rel=1e-10)
    assert ours._n_parameters() == ref._n_parameters()


@pytest.mark.parametrize(("covariance_type", "init_params"), _pairs(1))
def test_init_method_reaches_sklearn_optimum(X_blobs, covariance_type, init_params) -> None:
    """From each init method's own start, both libraries find the same optimum and labels."""
    options = dict(
        n_components=K,
        covariance_type=covariance_type,
        init_params=init_params,
        n_init=4,
        tol=1e-9,
        max_iter=2000,
        random_state=0,
    )
    ref = SkGaussianMixture(**options).fit(X_blobs)
    ours = GaussianMixture(**options).fit(X_blobs)
    assert ours.converged_ and ref.converged_
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6)
    for name, value in _sorted_params(ours, covariance_type).items():
        expected = _sorted_params(ref, covariance_type)[name]
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=name)
    # Same partition of the points, up to the components' labels.
    ours_labels = np.argsort(_order(ours.means_))[ours.predict(X_blobs)]
    ref_labels = np.argsort(_order(ref.means_))[ref.predict(X_blobs)]
    np.testing.assert_array_equal(ours_labels, ref_labels)
    true_labels = np.repeat(np.arange(K), 100)
    np.testing.assert_array_equal(ours_labels, true_labels)


def test_float32_input_computes_in_float32(X_overlap) -> None:
    """float32 data: float32 attributes and outputs, close to scikit-learn's float32 fit."""
    X32 = X_overlap.astype(np.float32)
    options = _same_start()
    ref = SkGaussianMixture(**options).fit(X32)
    ours = GaussianMixture(**options).fit(X32)
    for name in ATTRIBUTES:
        assert getattr(ours, name).dtype == np.float32, name
    assert ours.lower_bound_.dtype == np.float32
    assert ours.lower_bounds_.dtype == np.float32
    assert ours.score_samples(X32).dtype == np.float32
    assert ours.predict_proba(X32).dtype == np.float32
    _assert_fitted_like(ours, ref, rtol=2e-3, atol=2e-4)


def test_float64_is_exact_without_global_x64(X_overlap) -> None:
    """With jax_enable_x64 off, float64 input is still fitted in float64; config untouched."""
    options = _same_start()
    ref = SkGaussianMixture(**options).fit(X_overlap)
    with jax.enable_x64(False):
        ours = GaussianMixture(**options).fit(X_overlap)
        labels = ours.predict(X_overlap)
        log_lik = ours.score_samples(X_overlap)
        assert not jax.config.jax_enable_x64
        assert jnp.asarray(1.0).dtype == jnp.float32
        assert ours.params_.means.dtype == jnp.float32  # params_ follows the user's config
    _assert_fitted_like(ours, ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(labels, ref.predict(X_overlap))
    np.testing.assert_allclose(log_lik, ref.score_samples(X_overlap), rtol=1e-9)
    assert log_lik.dtype == np.float64


def test_integer_input_is_fitted_as_float64(X_overlap) -> None:
    """Integer data is converted to float64, as scikit-learn does."""
    X_int = np.round(X_overlap * 10).astype(np.int64)
    options = _same_start()
    options["means_init"] = options["means_init"] * 10
    options["precisions_init"] = options["precisions_init"] / 100
    ref = SkGaussianMixture(**options).fit(X_int)
    ours = GaussianMixture(**options).fit(X_int)
    assert ours.means_.dtype == np.float64
    _assert_fitted_like(ours, ref, rtol=1e-8, atol=1e-10)


def test_sample_weight_equals_repeated_rows(X_overlap) -> None:
    """Integer weights fit like repeated rows (scikit-learn on the repeated data)."""
    weights = np.random.RandomState(3).randint(0, 4, size=X_overlap.shape[0])
    options = _same_start()
    ref = SkGaussianMixture(**options).fit(np.repeat(X_overlap, weights, axis=0))
    ours = GaussianMixture(**options).fit(X_overlap, sample_weight=weights)
    _assert_fitted_like(ours, ref, rtol=1e-8, atol=1e-10)
    labels = GaussianMixture(**options).fit_predict(X_overlap, sample_weight=weights)
    np.testing.assert_array_equal(labels, ref.predict(X_overlap))


def test_fit_predict_equals_fit_then_predict(X_overlap) -> None:
    """fit_predict(X) == fit(X).predict(X), also when the fit stops before converging."""
    for max_iter in (100, 1):
        options = _same_start(max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = GaussianMixture(**options).fit_predict(X_overlap)
            expected = GaussianMixture(**options).fit(X_overlap).predict(X_overlap)
        np.testing.assert_array_equal(labels, expected)


def test_random_state_int_is_the_jax_key(X_overlap) -> None:
    """random_state=s fits exactly like jaxgmm.fit(..., key=s)."""
    ours = GaussianMixture(K, random_state=11).fit(X_overlap)
    result = jaxgmm.fit(X_overlap, K, key=11)
    np.testing.assert_array_equal(ours.means_, np.asarray(result.params.means))
    np.testing.assert_array_equal(ours.covariances_, np.asarray(result.params.covariances))
    assert ours.n_iter_ == int(result.n_iter)


# --------------------------------------------------------------------------- behaviour


def test_convergence_warning_like_sklearn(X_overlap) -> None:
    """A ConvergenceWarning when the best restart did not converge; none for max_iter=0."""
    for cls in (SkGaussianMixture, GaussianMixture):
        with pytest.warns(ConvergenceWarning):
            model = cls(**_same_start(max_iter=1)).fit(X_overlap)
        assert not model.converged_ and model.n_iter_ == 1
        options = _same_start(max_iter=0)
        if cls is SkGaussianMixture:
            # scikit-learn 1.9 fails on max_iter=0 with precisions_init (no covariances_).
            del options["precisions_init"]
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            model = cls(**options).fit(X_overlap)
        assert not model.converged_ and model.n_iter_ == 0
        assert model.lower_bound_ == -np.inf and len(model.lower_bounds_) == 0
        np.testing.assert_allclose(model.means_, options["means_init"], rtol=1e-14, atol=1e-14)


def test_ill_defined_covariance_raises_like_sklearn(X_overlap) -> None:
    """Collapsed components without regularisation: the same ValueError as scikit-learn."""
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]]), 100, axis=0)
    assert X.shape == X_overlap.shape  # reuses a compiled program
    for cls in (SkGaussianMixture, GaussianMixture):
        with pytest.raises(ValueError, match="ill-defined empirical covariance"):
            cls(K, reg_covar=0, random_state=0).fit(X)


def test_warm_start_follows_sklearn_call_by_call(X_overlap) -> None:
    """One EM iteration per call: every call matches scikit-learn, convergence included."""
    options = _same_start(max_iter=1, warm_start=True)
    ref, ours = SkGaussianMixture(**options), GaussianMixture(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(200):
            ref.fit(X_overlap)
            ours.fit(X_overlap)
            _assert_fitted_like(ours, ref, rtol=1e-8, atol=1e-10)
            if ref.converged_:
                break
    assert ref.converged_ and ours.converged_ and ours.n_iter_ == 1


def test_warm_start_from_converged_model_stops_at_once(X_overlap) -> None:
    """Refitting a converged warm model converges in its first iteration, as in sklearn."""
    options = _same_start(warm_start=True)
    ref, ours = SkGaussianMixture(**options), GaussianMixture(**options)
    ref.fit(X_overlap)
    ours.fit(X_overlap)
    _assert_fitted_like(ours, ref, rtol=1e-8, atol=1e-10)
    # A warm fit makes one restart whatever n_init says.
    ref.set_params(tol=1e-2, n_init=3).fit(X_overlap)
    ours.set_params(tol=1e-2, n_init=3).fit(X_overlap)
    assert ref.n_iter_ == 1 and ref.converged_
    _assert_fitted_like(ours, ref, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="warm_start"):
        ours.set_params(n_components=2).fit(X_overlap)


def test_sample_matches_model(X_blobs) -> None:
    """Samples: scikit-learn's shapes and dtypes, grouped labels, right moments."""
    model = GaussianMixture(K, random_state=0).fit(X_blobs)
    assert X_blobs.shape == (300, 2)  # same compiled fit as the X_overlap tests
    points, labels = model.sample(30000)
    assert points.shape == (30000, 2) and points.dtype == np.float64
    assert labels.dtype == np.int64 and np.all(np.diff(labels) >= 0)
    counts = np.bincount(labels, minlength=K)
    # Binomial counts: within 5 standard deviations of n * weight.
    sd = np.sqrt(30000 * model.weights_ * (1 - model.weights_))
    assert np.all(np.abs(counts - 30000 * model.weights_) < 5 * sd)
    for k in range(K):
        component = points[labels == k]
        np.testing.assert_allclose(component.mean(axis=0), model.means_[k], atol=0.05)
        np.testing.assert_allclose(np.cov(component.T), model.covariances_[k], atol=0.1)
    again, _ = model.sample(30000)
    np.testing.assert_array_equal(points, again)  # an int random_state: same draws
    model.set_params(random_state=np.random.RandomState(0))
    first, second = model.sample(5)[0], model.sample(5)[0]
    assert not np.array_equal(first, second)  # a RandomState advances
    with pytest.raises(ValueError, match="n_samples"):
        model.sample(0)


def test_params_and_fit_result_interoperate(X_overlap) -> None:
    """params_ feeds the functional API; from_fit_result wraps a jaxgmm.fit result."""
    model = GaussianMixture(K, random_state=0).fit(X_overlap)
    np.testing.assert_allclose(
        np.asarray(jaxgmm.score_samples(model.params_, X_overlap)),
        model.score_samples(X_overlap),
        rtol=1e-12,
    )
    assert model.params_.covariance_type == "full"
    result = jaxgmm.fit(X_overlap, K, key=0)
    wrapped = GaussianMixture.from_fit_result(result, random_state=0)
    assert wrapped.n_components == K and wrapped.n_features_in_ == 2
    assert wrapped.n_iter_ == model.n_iter_ and wrapped.converged_ == model.converged_
    for name in ATTRIBUTES:
        np.testing.assert_array_equal(getattr(wrapped, name), getattr(model, name))
    np.testing.assert_array_equal(wrapped.predict(X_overlap), model.predict(X_overlap))
    with pytest.raises(TypeError, match="FitResult"):
        GaussianMixture.from_fit_result(result.params)
    batched = jax.tree_util.tree_map(lambda a: a[None], result)
    with pytest.raises(ValueError, match="single fit"):
        GaussianMixture.from_fit_result(batched)
    with pytest.raises(NotFittedError):
        GaussianMixture().params_  # noqa: B018


def test_clone_and_pickle(X_overlap) -> None:
    """clone gives an unfitted copy; a pickled fitted model predicts identically."""
    model = GaussianMixture(K, covariance_type="full", random_state=0).fit(X_overlap)
    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    assert not hasattr(fresh, "means_")
    restored = pickle.loads(pickle.dumps(model))
    for name in (*ATTRIBUTES, "lower_bounds_"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(model, name))
    np.testing.assert_array_equal(restored.predict(X_overlap), model.predict(X_overlap))
    assert restored.score(X_overlap) == model.score(X_overlap)


def test_data_frame_feature_names(X_overlap) -> None:
    """feature_names_in_ from a data frame; other columns or a plain array are flagged."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X_overlap, columns=["a", "b"])
    model = GaussianMixture(K, random_state=0).fit(frame)
    np.testing.assert_array_equal(model.feature_names_in_, ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(frame)
    with pytest.warns(UserWarning, match="feature names"):
        model.predict(X_overlap)
    with pytest.raises(ValueError, match="Feature names"):
        model.predict(frame.rename(columns={"a": "c"}))


def test_verbose_messages(X_overlap, capsys) -> None:
    """verbose prints initialization and iteration messages every verbose_interval."""
    model = GaussianMixture(K, random_state=0, verbose=2, verbose_interval=1, n_init=1)
    model.fit(X_overlap)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Initialization 0"
    iterations = [line for line in lines if line.startswith("  Iteration")]
    assert len(iterations) == model.n_iter_
    change = model.lower_bounds_[-1] - model.lower_bounds_[-2]
    assert iterations[-1] == f"  Iteration {model.n_iter_}\t ll change {change:.5f}"
    assert lines[-1].startswith("Initialization converged.")
    model.set_params(verbose=1, verbose_interval=100).fit(X_overlap)
    assert capsys.readouterr().out.splitlines() == ["Initialization 0", "Initialization converged."]


# --------------------------------------------------------------------------- validation

_REJECTED = [
    ("n_components", 0),
    ("n_components", 1.5),
    ("n_components", "2"),
    ("covariance_type", "FULL"),
    ("tol", -1.0),
    ("tol", np.nan),
    ("tol", np.inf),
    ("tol", "a"),
    ("reg_covar", -0.1),
    ("max_iter", -1),
    ("max_iter", 1.0),
    ("n_init", 0),
    ("init_params", "KMEANS"),
    ("init_params", None),
    ("random_state", -1),
    ("random_state", 2**32),
    ("random_state", 1.5),
    ("random_state", np.random.default_rng(0)),
    ("warm_start", 0),
    ("warm_start", None),
    ("verbose", -1),
    ("verbose", 1.0),
    ("verbose_interval", 0),
    ("weights_init", "abc"),
    ("weights_init", 5),
    ("means_init", 3.0),
    ("precisions_init", "x"),
]

_ACCEPTED = [
    ("n_components", np.int64(2)),
    ("tol", 0),
    ("tol", True),
    ("tol", np.float32(0.1)),
    ("reg_covar", 0),
    ("max_iter", np.int32(3)),
    ("n_init", True),
    ("random_state", 2**32 - 1),
    ("random_state", np.int64(3)),
    ("random_state", np.random.RandomState(0)),
    ("warm_start", np.bool_(True)),
    ("verbose", np.bool_(False)),
    ("verbose_interval", True),
]


def _sklearn_rejects(name: str, value) -> bool:
    """Whether scikit-learn's own parameter validation rejects the value."""
    X = np.random.RandomState(0).randn(20, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SkGaussianMixture(**{"n_components": 2, name: value}).fit(X)
    except Exception as err:  # noqa: BLE001 - classify scikit-learn's error
        return type(err).__name__ == "InvalidParameterError"
    return False


@pytest.mark.parametrize(("name", "value"), _REJECTED, ids=lambda v: repr(v)[:20])
def test_rejects_what_sklearn_rejects(name, value, monkeypatch) -> None:
    """Invalid parameters: scikit-learn and we both raise, ours before any JAX work."""
    assert _sklearn_rejects(name, value)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the fit started before the parameters were validated")

    monkeypatch.setattr(estimator_module, "_fit", must_not_run)
    model = GaussianMixture(**{"n_components": 2, name: value})
    with pytest.raises(ValueError, match=name) as info:
        model.fit(np.random.RandomState(0).randn(20, 2))
    assert isinstance(info.value, TypeError)  # both, like scikit-learn's error


@pytest.mark.parametrize(("name", "value"), _ACCEPTED, ids=lambda v: repr(v)[:20])
def test_accepts_what_sklearn_accepts(name, value) -> None:
    """Unusual but valid parameters pass validation, as in scikit-learn."""
    assert not _sklearn_rejects(name, value)
    GaussianMixture(**{name: value})._check_constructor_parameters()


def test_data_errors_before_jax(monkeypatch) -> None:
    """Bad data: plain errors raised before anything is compiled."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("the fit started on invalid data")

    monkeypatch.setattr(estimator_module, "_fit", must_not_run)
    X = np.random.RandomState(0).randn(20, 2)
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        GaussianMixture(30).fit(X)
    with pytest.raises(ValueError, match="2D array"):
        GaussianMixture().fit(X[:, 0])
    with pytest.raises(ValueError, match="minimum of 2"):
        GaussianMixture().fit(X[:1])
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture().fit(np.where(X > 1.5, np.nan, X))
    with pytest.raises(NotFittedError):
        GaussianMixture().predict(X)


def test_bad_data_after_fit(X_overlap) -> None:
    """Feature-count mismatch after fit and invalid sample weights raise ValueError."""
    model = GaussianMixture(K, random_state=0).fit(X_overlap)
    with pytest.raises(ValueError, match="features"):
        model.predict(X_overlap[:, :1])
    with pytest.raises(ValueError, match="sample_weight"):
        GaussianMixture(K).fit(X_overlap, sample_weight=-np.ones(len(X_overlap)))
    with pytest.raises(ValueError, match="sample_weight"):
        GaussianMixture(K).fit(X_overlap, sample_weight=np.ones(3))


# --------------------------------------------------------------------------- ecosystem


def test_pipeline_grid_search_picks_sklearn_choice() -> None:
    """StandardScaler -> GaussianMixture in GridSearchCV picks what scikit-learn picks."""
    X = _clusters([[0.0, 0.0], [30.0, 60.0], [0.0, 100.0]], 10.0, seed=2)
    # Each configuration compiles its own programs, so the grid is kept small.
    grid = {"gmm__n_components": [2, 3], "gmm__covariance_type": ["full", "spherical"]}
    cv = KFold(3, shuffle=True, random_state=0)
    searches = {}
    for name, cls in (("sklearn", SkGaussianMixture), ("jaxgmm", GaussianMixture)):
        pipeline = Pipeline([("scale", StandardScaler()), ("gmm", cls(random_state=0))])
        searches[name] = GridSearchCV(pipeline, grid, cv=cv).fit(X)
    ref, ours = searches["sklearn"], searches["jaxgmm"]
    assert ours.best_params_ == ref.best_params_
    assert ours.best_params_ == {"gmm__covariance_type": "full", "gmm__n_components": 3}
    assert ours.best_score_ == pytest.approx(ref.best_score_, rel=1e-6)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-6)


def test_import_without_sklearn() -> None:
    """With scikit-learn unimportable, jaxgmm and its functional API still work."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["sklearn"] = None  # every `import sklearn...` now fails
        import numpy as np
        import jaxgmm
        from jaxgmm import *  # noqa: F403
        assert "GaussianMixture" not in jaxgmm.__all__
        X = np.random.RandomState(0).randn(40, 2)
        result = jaxgmm.fit(X, 2, max_iter=3, init="random")
        assert result.params.means.shape == (2, 2)
        try:
            jaxgmm.GaussianMixture
        except ImportError as err:
            assert 'pip install "jaxgmm[sklearn]"' in str(err), err
        else:
            raise AssertionError("expected an ImportError")
        print("ok")
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
