"""Functions of fitted parameters compose with jit, vmap and grad, including parameters
closed over by the user's jitted function (the common way to use a fitted model in a loss)."""

import dataclasses

import jax
import numpy as np
import pytest

import jaxgmm

X = np.random.default_rng(0).normal(size=(120, 2)) + np.repeat([[0.0, 0.0], [4.0, 4.0]], 60, 0)

# name -> a function of (params, X) returning an array, one line per public function.
FUNCTIONS = {
    "score_samples": lambda p, x: jaxgmm.score_samples(p, x),
    "score": lambda p, x: jaxgmm.score(p, x),
    "predict": lambda p, x: jaxgmm.predict(p, x),
    "predict_proba": lambda p, x: jaxgmm.predict_proba(p, x),
    "bic": lambda p, x: jaxgmm.bic(p, x),
    "aic": lambda p, x: jaxgmm.aic(p, x),
    "sample": lambda p, x: jaxgmm.sample(p, 5, key=0)[0],
}


@pytest.fixture(scope="module", params=jaxgmm.COVARIANCE_TYPES)
def params(request):
    """Fitted parameters as a new (never checked) object of host arrays, like built ones."""
    fitted = jaxgmm.fit(X, 2, covariance_type=request.param, key=0).params
    return jaxgmm.GaussianMixtureParams(
        *(np.asarray(getattr(fitted, f.name)) for f in dataclasses.fields(fitted)[:4]),
        covariance_type=fitted.covariance_type,
    )


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jit_with_params_closed_over_equals_plain_call(params, name):
    fn = FUNCTIONS[name]
    expected = fn(params, X)
    got = jax.jit(lambda x: fn(params, x))(X)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-10)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jit_with_params_as_arguments_equals_plain_call(params, name):
    fn = FUNCTIONS[name]
    got = jax.jit(fn)(params, X)
    np.testing.assert_allclose(np.asarray(got), np.asarray(fn(params, X)), rtol=1e-10)
