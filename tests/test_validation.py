"""Every bad input to the functional API raises a plain ValueError/TypeError early.

The ``engine_unreachable`` fixture replaces the compiled engine (fit, inference,
sampling) by functions that fail the test, so each error here is proven to be raised
by validation, before anything is traced or compiled.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm import GaussianMixtureParams
from jaxgmm._buckets import component_bucket, row_work
from jaxgmm._validation import (
    centre_and_cast,
    check_data,
    check_initial_params,
    check_sample_weight,
)

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
N, D, K = 12, 3, 2


def _engine_reached(*args, **kwargs):
    raise AssertionError("validation let a bad input through to the compiled engine")


@pytest.fixture(autouse=True)
def engine_unreachable(monkeypatch):
    """Make reaching the compiled engine a test failure."""
    monkeypatch.setattr(jaxgmm._fit, "fit_compiled", _engine_reached)
    monkeypatch.setattr(jaxgmm._fit, "fit_start", _engine_reached)
    monkeypatch.setattr(jaxgmm._inference, "_evaluate_program", _engine_reached)
    monkeypatch.setattr(jaxgmm._inference, "_sample", _engine_reached)


@pytest.fixture(name="X")
def data() -> np.ndarray:
    """(N, D) float64 data."""
    return np.random.default_rng(0).normal(size=(N, D))


def _params(covariance_type: str = "full", dtype=np.float64) -> GaussianMixtureParams:
    """Hand-made, valid parameters: K = 2 unit-variance components in D = 3."""
    eye = np.eye(D, dtype=dtype)
    cov = {
        "full": np.stack([eye, eye]),
        "tied": eye,
        "diag": np.ones((K, D), dtype),
        "spherical": np.ones(K, dtype),
    }[covariance_type]
    return GaussianMixtureParams(
        weights=jnp.asarray(np.full(K, 0.5, dtype)),
        means=jnp.asarray(np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]], dtype)),
        covariances=jnp.asarray(cov),
        precisions_cholesky=jnp.asarray(cov),
        covariance_type=covariance_type,
    )


def _raises(exc, *fragments: str):
    """pytest.raises for ``exc`` whose message contains every fragment (literally)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


# ----------------------------------------------------------------- X at fit time


def test_nan_in_x_names_count_position_and_what_to_do(X):
    X[4, 2] = np.nan
    X[7, 0] = np.nan
    X[9, 1] = np.inf
    with _raises(ValueError, "3 non-finite values", "2 NaN, 1 infinite", "row 4, column 2"):
        jaxgmm.fit(X, K)
    with _raises(ValueError, "nan_policy='omit'", "nan_policy='marginalize'"):
        jaxgmm.fit(X, K)


def test_nan_in_a_jax_array(X):
    """Device arrays are checked on the device; the message is the same."""
    X[5, 1] = np.nan
    with _raises(ValueError, "1 non-finite value", "row 5, column 1", "nan_policy"):
        jaxgmm.fit(jnp.asarray(X), K)
    with _raises(ValueError, "1 non-finite value", "row 5, column 1"):
        jaxgmm.predict(_params(), jnp.asarray(X, np.float32))
    with _raises(ValueError, "must be 2-D"):
        jaxgmm.fit(jnp.asarray(X[:, 0]), K)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_value_in_x(X, value):
    X[0, 1] = value
    with _raises(ValueError, "1 non-finite value", "0 NaN, 1 infinite", "row 0, column 1"):
        jaxgmm.fit(X, K)


def test_nan_in_float32_and_float16_x(X):
    X[3, 0] = np.nan
    for dtype in (np.float32, np.float16):
        with _raises(ValueError, "row 3, column 0"):
            jaxgmm.fit(X.astype(dtype), K)


def test_one_dimensional_x_suggests_reshape(X):
    with _raises(ValueError, "must be 2-D", f"({N},)", "reshape(-1, 1)"):
        jaxgmm.fit(X[:, 0], K)


@pytest.mark.parametrize("shape", [(), (2, N, D), (1, 1, 1, 1)])
def test_wrong_number_of_dimensions(shape):
    with _raises(ValueError, "must be 2-D", str(shape)):
        jaxgmm.fit(np.zeros(shape), 1)


@pytest.mark.parametrize("shape", [(0, D), (N, 0), (0, 0)])
def test_empty_data(shape):
    with _raises(ValueError, str(shape), "at least one sample"):
        jaxgmm.fit(np.zeros(shape), 1)


def test_fewer_points_than_components(X):
    with _raises(ValueError, "n_samples >= n_components", f"n_samples = {N}", "n_components = 13"):
        jaxgmm.fit(X, N + 1)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([["a", "b"], ["c", "d"]]),
        np.array([[b"1", b"2"]]),
        np.array([["2020-01-01"]], dtype="datetime64[D]"),
        np.array([[{"a": 1}, 2.0]], dtype=object),
    ],
    ids=["str", "bytes", "datetime", "object"],
)
def test_non_numeric_x(bad):
    with _raises(TypeError, "convert it to floating point"):
        jaxgmm.fit(bad, 1)


def test_string_and_ragged_x():
    with _raises(TypeError, "got a string"):
        jaxgmm.fit("1, 2, 3", 1)
    with _raises(TypeError, "could not be read", "different lengths"):
        jaxgmm.fit([[1.0, 2.0], [3.0]], 1)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_x(X, dtype):
    with _raises(TypeError, "complex", "real part"):
        jaxgmm.fit(X.astype(dtype), K)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.int8, np.float32),
        (np.int64, np.float32),
        (np.uint16, np.float32),
        (np.bool_, np.float32),
        (np.float16, np.float32),
        (np.float32, np.float32),
        (np.float64, np.float64),
    ],
)
def test_integer_bool_float16_are_converted_not_rejected(X, dtype, expected):
    """Validation converts (the end-to-end fit of such input is in test_robustness)."""
    raw = (X * 3).astype(dtype)
    converted = check_data(raw)
    assert converted.dtype == expected
    np.testing.assert_array_equal(np.asarray(converted), raw.astype(expected))


def test_object_array_of_numbers_is_converted():
    converted = check_data(np.array([[1, 2.5], [3, 4]], dtype=object))
    assert converted.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(converted), [[1.0, 2.5], [3.0, 4.0]])


def test_object_array_with_none_counts_as_missing():
    with _raises(ValueError, "1 non-finite value", "row 0, column 1", "nan_policy"):
        jaxgmm.fit(np.array([[1.0, None], [2.0, 3.0]], dtype=object), 1)


def test_float64_values_beyond_float32_range(X):
    """Finite float64 data that float32 cannot hold: said so, not 'non-finite'."""
    with jax.enable_x64(False):
        with _raises(ValueError, "overflow", "Rescale X"):
            jaxgmm.fit(X * 1e40, K)
        with _raises(ValueError, "overflow", "Rescale X"):
            check_data(X * 1e40)


def test_data_spread_too_large_for_sums_of_squares(X):
    with _raises(ValueError, "sums of squares", "would overflow", "Rescale X"):
        jaxgmm.fit(X * 1e160, K)
    with _raises(ValueError, "sums of squares", "float32"):
        jaxgmm.fit((X * 1e18).astype(np.float32), K)


# ------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value", "exc", "fragment"),
    [
        ("n_components", 0, ValueError, "n_components must be >= 1, got 0"),
        ("n_components", -3, ValueError, "n_components must be >= 1"),
        ("n_components", 2.0, TypeError, "n_components must be an integer"),
        ("n_components", True, TypeError, "n_components must be an integer"),
        ("n_components", "2", TypeError, "n_components must be an integer"),
        ("tol", -1e-3, ValueError, "tol must be a finite number >= 0"),
        ("tol", np.nan, ValueError, "tol must be a finite number >= 0"),
        ("tol", np.inf, ValueError, "tol must be a finite number >= 0"),
        ("tol", "small", TypeError, "tol must be a real number"),
        ("reg_covar", -1e-9, ValueError, "reg_covar must be a finite number >= 0"),
        ("reg_covar", np.nan, ValueError, "reg_covar must be a finite number >= 0"),
        ("reg_covar", None, TypeError, "reg_covar must be a real number"),
        ("max_iter", -1, ValueError, "max_iter must be >= 0"),
        ("max_iter", 10.5, TypeError, "max_iter must be an integer"),
        ("n_init", 0, ValueError, "n_init must be >= 1"),
        ("n_init", np.float64(2), TypeError, "n_init must be an integer"),
        ("covariance_type", "ful", ValueError, "Did you mean 'full'?"),
        ("covariance_type", "Spherical", ValueError, "Did you mean 'spherical'?"),
        ("covariance_type", None, ValueError, "covariance_type must be one of"),
        ("init", "kmeans++", ValueError, "init must be one of"),
        ("init", "randm", ValueError, "Did you mean 'random'?"),
        ("chunk_size", 0, ValueError, "chunk_size must be >= 1"),
        ("chunk_size", 1.5, TypeError, "chunk_size must be an integer"),
        ("key", -1, ValueError, "int seed between 0 and 2**63 - 1"),
        ("key", "seed", TypeError, "key must be an int seed or a JAX PRNG key"),
    ],
)
def test_bad_option(X, option, value, exc, fragment):
    kwargs = {"n_components": K, option: value}
    n_components = kwargs.pop("n_components")
    with _raises(exc, fragment):
        jaxgmm.fit(X, n_components, **kwargs)


def test_options_accept_numpy_and_jax_scalars(X, monkeypatch):
    """np.int64 / np.float32 / 0-d arrays are fine; validation passes them on."""
    calls = []
    engine = lambda *a, **k: calls.append(k) or 1 / 0  # noqa: E731
    monkeypatch.setattr(jaxgmm._fit, "fit_start", engine)
    monkeypatch.setattr(jaxgmm._fit, "fit_compiled", engine)  # small fits: one program
    with pytest.raises(ZeroDivisionError):
        jaxgmm.fit(
            X,
            np.int64(2),
            tol=np.float32(1e-3),
            reg_covar=jnp.asarray(1e-6),
            max_iter=np.int32(5),
            n_init=np.int8(1),
            chunk_size=np.int64(4),
        )
    # The engine gets K's bucket (padding components, jaxgmm._buckets) as a Python int.
    n_rows, n_features = np.shape(X)
    expected = component_bucket(2, row_work(n_rows, n_features))
    assert calls and type(calls[0]["n_components"]) is int
    assert calls[0]["n_components"] == expected


# ------------------------------------------------------------ initial parameters


def test_weights_init_wrong_shape(X):
    with _raises(ValueError, "weights_init must have shape (2,)", "(3,)"):
        jaxgmm.fit(X, K, weights_init=[0.2, 0.3, 0.5])


@pytest.mark.parametrize("weights", [[0.5, 0.6], [0.2, 0.2], [1, 1]])
def test_weights_init_not_summing_to_one(X, weights):
    with _raises(ValueError, "weights_init must sum to 1", "Divide it by its sum"):
        jaxgmm.fit(X, K, weights_init=weights)


@pytest.mark.parametrize("weights", [[-0.5, 1.5], [np.nan, 1.0]])
def test_weights_init_out_of_range_or_nan(X, weights):
    with pytest.raises(ValueError, match="weights_init"):
        jaxgmm.fit(X, K, weights_init=weights)


def test_means_init_wrong_shape_or_nan(X):
    with _raises(ValueError, "means_init must have shape (2, 3)", "(2, 2)"):
        jaxgmm.fit(X, K, means_init=np.zeros((K, 2)))
    with _raises(ValueError, "means_init must have shape (2, 3)", "(3,)"):
        jaxgmm.fit(X, K, means_init=np.zeros(3))
    bad = np.zeros((K, D))
    bad[1, 2] = np.inf
    with _raises(ValueError, "means_init contains 1 non-finite", "row 1, column 2"):
        jaxgmm.fit(X, K, means_init=bad)


@pytest.mark.parametrize(
    ("covariance_type", "shape"),
    [("full", (K, D, D)), ("tied", (D, D)), ("diag", (K, D)), ("spherical", (K,))],
)
def test_precisions_init_wrong_shape(X, covariance_type, shape):
    wrong = np.ones(shape + (1,))
    with _raises(ValueError, f"precisions_init ({covariance_type}) must have shape {shape}"):
        jaxgmm.fit(X, K, covariance_type=covariance_type, precisions_init=wrong)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_precisions_init_not_positive_definite(X, covariance_type):
    indefinite = np.diag([1.0, -0.5, 2.0])
    precisions = np.stack([np.eye(D), indefinite]) if covariance_type == "full" else indefinite
    index = 1 if covariance_type == "full" else 0
    with _raises(ValueError, f"matrix {index} is not positive definite"):
        jaxgmm.fit(X, K, covariance_type=covariance_type, precisions_init=precisions)
    singular = np.ones((D, D))  # rank one: positive semi-definite, not definite
    precisions = np.stack([np.eye(D), singular]) if covariance_type == "full" else singular
    with _raises(ValueError, "is not positive definite"):
        jaxgmm.fit(X, K, covariance_type=covariance_type, precisions_init=precisions)


def test_precisions_init_not_symmetric(X):
    asymmetric = np.eye(D)
    asymmetric[0, 1] = 0.5
    with _raises(ValueError, "matrix 0 is not symmetric", "(P + P.T) / 2"):
        jaxgmm.fit(X, K, covariance_type="tied", precisions_init=asymmetric)


def test_precisions_init_too_ill_conditioned_for_float32(X):
    """Positive definite in float64, but its float32 Cholesky factorisation fails."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    precision = q @ np.diag([1.0, 1.0, 1e-12]) @ q.T
    precision = (precision + precision.T) / 2
    assert np.linalg.eigvalsh(precision).min() > 0
    with _raises(ValueError, "too ill-conditioned for float32"):
        jaxgmm.fit(X.astype(np.float32), K, covariance_type="tied", precisions_init=precision)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_precisions_init_not_positive(X, covariance_type):
    shape = (K, D) if covariance_type == "diag" else (K,)
    precisions = np.ones(shape)
    precisions.flat[-1] = 0.0
    with _raises(ValueError, "must be strictly positive", "1 value(s) are <= 0"):
        jaxgmm.fit(X, K, covariance_type=covariance_type, precisions_init=precisions)


# ------------------------------------------------------------------ sample weights


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        (np.r_[np.ones(N - 1), -1.0], "1 negative value(s), the first at index 11"),
        (np.zeros(N), "sample_weight is all zero"),
        (np.ones(N - 1), f"must have shape ({N},)"),
        (np.ones(N + 1), f"must have shape ({N},)"),
        (np.ones((N, 1)), f"got shape ({N}, 1)"),
        (np.r_[np.nan, np.ones(N - 1)], "1 non-finite value (1 NaN, 0 infinite)"),
        (np.r_[1.0, np.zeros(N - 1)], "Only 1 point(s) have positive sample_weight"),
        (np.r_[np.ones(N - 1), 1j], "complex"),
    ],
)
def test_bad_sample_weight(X, weights, fragment):
    exc = TypeError if np.iscomplexobj(weights) else ValueError
    with _raises(exc, fragment):
        jaxgmm.fit(X, K, sample_weight=weights)


def test_sample_weight_that_float32_cannot_hold(X):
    with _raises(ValueError, "float32 cannot hold", "rescale the weights"):
        jaxgmm.fit(X.astype(np.float32), K, sample_weight=np.full(N, 1e-50))
    with _raises(ValueError, "float32 cannot hold"):
        jaxgmm.fit(X.astype(np.float32), K, sample_weight=np.full(N, 1e40))


def test_sample_weight_is_returned_in_compute_dtype():
    weights = check_sample_weight(np.arange(1, 5), 4, np.float32, 2)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(weights), [1, 2, 3, 4])


# ---------------------------------------------------- inference (functional API)

INFERENCE = {
    "score_samples": jaxgmm.score_samples,
    "predict": jaxgmm.predict,
    "predict_proba": jaxgmm.predict_proba,
    "score": jaxgmm.score,
    "bic": jaxgmm.bic,
    "aic": jaxgmm.aic,
}


@pytest.mark.parametrize("name", INFERENCE)
@pytest.mark.parametrize("not_params", [None, {"means": np.zeros((2, 3))}, np.zeros((2, 3))])
def test_inference_needs_fitted_params(X, name, not_params):
    with _raises(TypeError, "expected fitted parameters", "jaxgmm.fit(X, n_components)"):
        INFERENCE[name](not_params, X)


@pytest.mark.parametrize("name", INFERENCE)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_inference_with_data_of_another_dimension(X, name, covariance_type):
    with _raises(ValueError, "X has 2 features, but the model was fitted on 3"):
        INFERENCE[name](_params(covariance_type), X[:, :2])


@pytest.mark.parametrize("name", INFERENCE)
def test_inference_with_bad_data(X, name):
    params = _params()
    with _raises(ValueError, "must be 2-D"):
        INFERENCE[name](params, X[0])
    with _raises(ValueError, "must be 2-D"):
        INFERENCE[name](params, 1.5)
    with _raises(ValueError, "at least one sample"):
        INFERENCE[name](params, np.zeros((0, D)))
    X[2, 1] = np.nan
    with _raises(ValueError, "1 non-finite value", "row 2, column 1", "nan_policy"):
        INFERENCE[name](params, X)
    with _raises(TypeError, "complex"):
        INFERENCE[name](params, X.astype(complex))


def test_score_with_bad_sample_weight(X):
    with _raises(ValueError, f"sample_weight must have shape ({N},)"):
        jaxgmm.score(_params(), X, sample_weight=np.ones(3))
    with _raises(ValueError, "negative"):
        jaxgmm.score(_params(), X, sample_weight=-np.ones(N))


def test_batched_params_from_fit_many_are_rejected_with_a_hint(X):
    params = _params()
    batch = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), params)
    with _raises(ValueError, "a batch of 2 models", "fit_many", "a[b]"):
        jaxgmm.predict(batch, X)


def test_inconsistent_params(X):
    import dataclasses

    params = _params("diag")
    with _raises(ValueError, "params.covariances has shape (3, 3)", "need (2, 3)"):
        jaxgmm.predict(dataclasses.replace(params, covariances=jnp.eye(3)), X)
    with _raises(ValueError, "params.weights has shape (3,)"):
        jaxgmm.predict(dataclasses.replace(params, weights=jnp.ones(3) / 3), X)
    with _raises(ValueError, "params.covariance_type must be one of"):
        jaxgmm.predict(dataclasses.replace(params, covariance_type="diagonal"), X)
    with _raises(TypeError, "same floating dtype", "float32", "float64"):
        jaxgmm.predict(dataclasses.replace(params, weights=params.weights.astype(np.float32)), X)
    with _raises(TypeError, "same floating dtype"):
        jaxgmm.predict(dataclasses.replace(params, weights=jnp.asarray([1, 0])), X)


@pytest.mark.parametrize("where", ["host", "device"])
def test_params_with_bad_values(X, where, monkeypatch):
    """Small parameters are checked in NumPy, large ones by a compiled program."""
    import dataclasses

    if where == "device":
        monkeypatch.setattr(jaxgmm._validation, "_HOST_SUMMARY_VALUES", 0)
    params = _params("full")
    nan_means = params.means.at[0, 0].set(jnp.nan)
    with _raises(ValueError, "NaN or infinite", "result.status"):
        jaxgmm.predict(dataclasses.replace(params, means=nan_means), X)
    with _raises(ValueError, "weights must be >= 0 and sum to 1", "sum 2"):
        jaxgmm.predict(dataclasses.replace(params, weights=jnp.ones(K)), X)
    with _raises(ValueError, "strictly positive diagonal"):
        jaxgmm.predict(dataclasses.replace(params, precisions_cholesky=-params.covariances), X)


@pytest.mark.parametrize("n_samples", [0, -1, 2.0, True, "5"])
def test_sample_bad_n_samples(n_samples):
    with _raises(ValueError, "n_samples must be a positive integer"):
        jaxgmm.sample(_params(), n_samples)


def test_sample_needs_params():
    with _raises(TypeError, "expected fitted parameters"):
        jaxgmm.sample("model", 3)


def test_n_parameters_needs_params():
    with _raises(TypeError, "expected fitted parameters"):
        jaxgmm.n_parameters([1, 2, 3])


@pytest.mark.parametrize(
    ("key", "exc", "fragment"),
    [
        (2**70, ValueError, "between 0 and 2**63 - 1"),
        (np.array([1.5]), TypeError, "uint32 array of shape (2,)"),
        (np.array([1, 2, 3], np.uint32), TypeError, "got dtype uint32 and shape (3,)"),
        (jax.random.split(jax.random.key(0), 3), ValueError, "a single PRNG key"),
        (np.True_, TypeError, "int seed or a JAX PRNG key"),
        (1.0, TypeError, "int seed or a JAX PRNG key"),
    ],
)
def test_bad_key(X, key, exc, fragment):
    with _raises(exc, fragment):
        jaxgmm.fit(X, K, key=key)
    with _raises(exc, fragment):
        jaxgmm.sample(_params(), 3, key=key)
    with _raises(exc, fragment):
        jaxgmm.fit_many([X, X], K, key=key)


# ----------------------------------------------------- under jax.jit / jax.vmap


def test_shape_errors_under_jit_are_plain_value_errors(X):
    """Under jit the data are tracers: shape and dtype checks still run, in plain words."""
    with _raises(ValueError, "must be 2-D", "reshape(-1, 1)"):
        jax.jit(lambda x: jaxgmm.fit(x, K))(X[:, 0])
    with _raises(ValueError, "n_samples >= n_components"):
        jax.jit(lambda x: jaxgmm.fit(x, N + 1))(X)
    with _raises(ValueError, "sample_weight must have shape"):
        jax.jit(lambda x, w: jaxgmm.fit(x, K, sample_weight=w))(X, np.ones(N - 1))
    with _raises(ValueError, "X has 2 features, but the model was fitted on 3"):
        jax.jit(lambda x: jaxgmm.predict(_params(), x))(X[:, :2])


def test_traced_static_option_says_to_mark_it_static(X):
    with _raises(TypeError, "n_components must be a concrete Python int", "static_argnames"):
        jax.jit(lambda x, k: jaxgmm.fit(x, k))(X, 2)


def test_complex_data_under_vmap(X):
    batch = np.stack([X, X]).astype(np.complex64)
    with _raises(TypeError, "complex"):
        jax.vmap(lambda x: jaxgmm.fit(x, K))(batch)


def test_fit_many_validates_every_data_set(X):
    bad = X.copy()
    bad[5, 1] = np.nan
    with _raises(ValueError, "data set 1 contains 1 non-finite value", "row 5, column 1"):
        jaxgmm.fit_many([X, bad], K)
    with _raises(ValueError, "sample_weight is all zero"):
        jaxgmm.fit_many([X, X], K, sample_weight=[np.ones(N), np.zeros(N)])
    with _raises(ValueError, "same number of features"):
        jaxgmm.fit_many([X, X[:, :2]], K)


# ------------------------------------------- centring in the input's precision


def test_float64_data_for_float32_are_centred_before_the_cast():
    """The spread survives the cast; the offset is returned to be added back."""
    rng = np.random.default_rng(2)
    X = 1e6 + rng.normal(size=(N, D)) * 1e-3
    weights = rng.uniform(0.5, 1.5, size=N)
    with pytest.warns(UserWarning, match="resolves numbers near 1e\\+06 only to 0.0625"):
        centred, offset = centre_and_cast(X, jnp.asarray(weights), np.float32)
    np.testing.assert_allclose(offset, np.average(X, axis=0, weights=weights), rtol=1e-15)
    assert centred.dtype == np.float32
    np.testing.assert_allclose(np.asarray(centred, np.float64), X - offset, rtol=1e-6, atol=0)
    # The naive cast would have left nothing of the spread:
    assert np.unique(X.astype(np.float32)).size <= 2 * D


def test_integer_timestamps_are_centred_before_the_cast():
    """int64 nanosecond timestamps (~1.7e18) keep their second-scale spread in float32."""
    seconds = np.arange(N) % 7
    X = (1_700_000_000_000_000_000 + seconds * 1_000_000_000).reshape(-1, 1)
    X = np.concatenate([X, X], axis=1).astype(np.int64)
    with pytest.warns(UserWarning, match="spans only 6e\\+09 around 1.7e\\+18"):
        centred, offset = centre_and_cast(X, jnp.ones(N, np.float32), np.float32)
    expected = (seconds - seconds.mean()) * 1e9
    np.testing.assert_allclose(np.asarray(centred, np.float64)[:, 0], expected, rtol=1e-6)


def test_no_centring_or_warning_when_precision_is_not_lost():
    X = np.random.default_rng(3).normal(size=(N, D)) + 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same, offset = centre_and_cast(X.astype(np.float32), jnp.ones(N, np.float32), np.float32)
        assert offset is None
        np.testing.assert_array_equal(np.asarray(same), X.astype(np.float32))
        _, offset = centre_and_cast(X, jnp.ones(N), np.float64)
        assert offset is None


def test_means_init_is_shifted_in_float64_before_the_cast():
    offset = np.array([1e6, -2e6, 5e5])
    means = offset + np.array([[1e-3, 2e-3, 3e-3], [-1e-3, 0.0, 4e-3]])
    _, shifted, _ = check_initial_params(
        None, means, None, "full", K, D, np.float32, means_offset=offset
    )
    np.testing.assert_allclose(np.asarray(shifted, np.float64), means - offset, rtol=1e-6)


@pytest.mark.parametrize(
    "spoil, expected",
    [
        (lambda X, W: X.__setitem__((4, 0), np.inf), ("data set 2 contains 1 non-finite",)),
        (lambda X, W: X.__setitem__((3, 1), 1e155), ("data set 2 has values up to 1e+155",)),
        (lambda X, W: W.__setitem__(7, -1.0), ("data set 2: sample_weight has 1 negative",)),
        (lambda X, W: W.__setitem__(slice(K - 1, None), 0.0), ("data set 2: Only", "positive")),
        (lambda X, W: W.__setitem__(0, np.nan), ("data set 2: sample_weight contains 1",)),
    ],
)
def test_fit_many_names_the_bad_data_set(X, spoil, expected):
    # The batch is checked vectorised; the one bad set must still get its own message.
    datasets = [X.copy() for _ in range(4)]
    weights = [np.ones(N) for _ in range(4)]
    spoil(datasets[2], weights[2])
    with _raises(ValueError, *expected):
        jaxgmm.fit_many(datasets, K, sample_weight=weights)


@pytest.mark.parametrize("as_array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_infinite_value_with_missing_values_allowed(X, as_array):
    """With nan_policy='marginalize' NaN is accepted but inf is not, on host or device."""
    X[2, 0] = np.nan
    X[7, 2] = -np.inf
    with _raises(ValueError, "1 non-finite value", "0 NaN, 1 infinite", "row 7, column 2"):
        jaxgmm.fit(as_array(X), K, nan_policy="marginalize")
