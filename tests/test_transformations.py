"""Every public function composes with jit, vmap and grad, for every covariance type.

The matrix: function of fitted parameters x transformation x covariance type. Each
transformed call is compared with the plain call (jit, vmap) or with central finite
differences of the plain call in float64 (grad), never with values from the code under
test's own gradients. A new public function of fitted parameters is covered by adding
one entry to ``FUNCTIONS``. ``fit`` has its own rows at the end: jit with static
options of vmap over keys and data sets, for every covariance type, and vmap of grad
through ``fit``; ``jax.jit(jax.grad(loss))`` of losses that call ``fit``, checked
against finite differences for every covariance type, is in
tests/test_differentiable_fit.py.
"""

import dataclasses
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm

X = np.random.default_rng(0).normal(size=(120, 2)) + np.repeat([[0.0, 0.0], [4.0, 4.0]], 60, 0)


class Function(NamedTuple):
    """A public function as ``fn(params, X) -> array``, and what can be differentiated.

    Attributes:
        fn: the call.
        grad_x: a float output differentiable with respect to X (False: X is not an
            input, e.g. ``sample``).
        grad_means: a float output differentiable with respect to the means (False:
            integer output, checked to give zero gradients instead).
    """

    fn: object
    grad_x: bool = True
    grad_means: bool = True


FUNCTIONS = {
    "score_samples": Function(lambda p, x: jaxgmm.score_samples(p, x)),
    "score": Function(lambda p, x: jaxgmm.score(p, x)),
    "predict": Function(lambda p, x: jaxgmm.predict(p, x), grad_x=False, grad_means=False),
    "predict_proba": Function(lambda p, x: jaxgmm.predict_proba(p, x)),
    "bic": Function(lambda p, x: jaxgmm.bic(p, x)),
    "aic": Function(lambda p, x: jaxgmm.aic(p, x)),
    # Reparametrised draws: means[label] + scaled noise, differentiable in the means.
    "sample": Function(lambda p, x: jaxgmm.sample(p, 5, key=0)[0], grad_x=False),
    # Every unconstrained coordinate, flattened into one vector.
    "to_unconstrained": Function(
        lambda p, x: jnp.concatenate(
            [jnp.ravel(a) for a in jax.tree_util.tree_leaves(jaxgmm.to_unconstrained(p))]
        ),
        grad_x=False,
    ),
}


@pytest.fixture(scope="module", params=jaxgmm.COVARIANCE_TYPES)
def params(request):
    """Fitted parameters as a new (never checked) object of host arrays, like built ones."""
    fitted = jaxgmm.fit(X, 2, covariance_type=request.param, key=0).params
    return jaxgmm.GaussianMixtureParams(
        *(np.asarray(getattr(fitted, f.name)) for f in dataclasses.fields(fitted)[:4]),
        covariance_type=fitted.covariance_type,
    )


def _plain(name, params, x):
    return np.asarray(FUNCTIONS[name].fn(params, x))


def _with_means(params, means):
    return dataclasses.replace(params, means=means)


def _projection(name, params) -> np.ndarray:
    """Fixed random weights turning the function's output into a scalar loss."""
    shape = np.shape(_plain(name, params, X))
    return np.random.default_rng(1).normal(size=shape)


def _directional_fd(f, x0: np.ndarray, direction: np.ndarray, h: float = 1e-6):
    """Central finite difference of scalar ``f`` at ``x0`` along ``direction`` (float64).

    Returns:
        (estimate, rounding): the derivative estimate and a bound on its rounding error,
        ~10 eps |f| / h (large for losses such as BIC with a big constant part).
    """
    plus, minus = float(f(x0 + h * direction)), float(f(x0 - h * direction))
    rounding = 10 * np.finfo(np.float64).eps * max(abs(plus), abs(minus)) / h
    return (plus - minus) / (2 * h), rounding


def _assert_directional(grad: np.ndarray, direction: np.ndarray, fd, rtol: float):
    """grad . direction equals the finite difference ``fd`` to ``rtol``.

    Relative to the derivative itself or to |grad| |direction| (directions almost
    orthogonal to the gradient), plus the finite difference's rounding bound.
    """
    expected, rounding = fd
    scale = np.linalg.norm(grad) * np.linalg.norm(direction)
    atol = rtol * scale + rounding
    np.testing.assert_allclose(np.sum(grad * direction), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jit_with_params_closed_over_equals_plain_call(params, name):
    fn = FUNCTIONS[name].fn
    got = jax.jit(lambda x: fn(params, x))(X)
    np.testing.assert_allclose(np.asarray(got), _plain(name, params, X), rtol=1e-10)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jit_with_params_as_arguments_equals_plain_call(params, name):
    got = jax.jit(FUNCTIONS[name].fn)(params, X)
    np.testing.assert_allclose(np.asarray(got), _plain(name, params, X), rtol=1e-10)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_vmap_over_data_equals_plain_calls(params, name):
    batch = np.stack([X, X[::-1] + 0.5, 2.0 * X])
    got = jax.vmap(lambda x: FUNCTIONS[name].fn(params, x))(jnp.asarray(batch))
    expected = np.stack([_plain(name, params, x) for x in batch])
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_vmap_over_params_equals_plain_calls(params, name):
    members = [
        params,
        _with_means(params, params.means + 0.25),
        _with_means(params, params.means[::-1]),
    ]
    batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *members)
    got = jax.vmap(lambda p: FUNCTIONS[name].fn(p, X))(batch)
    expected = np.stack([_plain(name, p, X) for p in members])
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_grad_wrt_means_matches_finite_differences(params, name):
    spec = FUNCTIONS[name]
    weights = _projection(name, params)

    def loss(means):
        out = spec.fn(_with_means(params, means), X)
        return jnp.sum(jnp.asarray(out, means.dtype) * weights)

    means = np.asarray(params.means)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(means)))
    if not spec.grad_means:  # integer output: no gradient, and no error either
        np.testing.assert_array_equal(grad, 0.0)
        return
    for seed in range(2):
        direction = np.random.default_rng(seed + 10).normal(size=means.shape)
        fd = _directional_fd(lambda m: loss(jnp.asarray(m)), means, direction)
        _assert_directional(grad, direction, fd, rtol=1e-6)


@pytest.mark.parametrize("name", [n for n, f in FUNCTIONS.items() if f.grad_x or not f.grad_means])
def test_grad_wrt_x_matches_finite_differences(params, name):
    spec = FUNCTIONS[name]
    weights = _projection(name, params)

    def loss(x):
        return jnp.sum(jnp.asarray(spec.fn(params, x), x.dtype) * weights)

    grad = np.asarray(jax.grad(loss)(jnp.asarray(X)))
    if not spec.grad_x:  # integer output (predict): no gradient, and no error either
        np.testing.assert_array_equal(grad, 0.0)
        return
    for seed in range(2):
        direction = np.random.default_rng(seed + 20).normal(size=X.shape)
        fd = _directional_fd(lambda x: loss(jnp.asarray(x)), X, direction)
        _assert_directional(grad, direction, fd, rtol=1e-6)


def test_every_public_function_of_params_is_in_the_matrix():
    """A new public function of fitted parameters must get a line in FUNCTIONS."""
    of_params = {
        name
        for name in jaxgmm.__all__
        if inspect.isfunction(getattr(jaxgmm, name))
        and next(iter(inspect.signature(getattr(jaxgmm, name)).parameters)) == "params"
    }
    # n_parameters is a Python int of the shapes: nothing to trace or differentiate.
    # impute is a host function (NaN positions found on the host, NumPy out): it refuses
    # traced input with a plain TypeError (next test).
    assert of_params - {"n_parameters", "impute"} == set(FUNCTIONS)


def test_impute_refuses_traced_input_with_a_plain_message(params):
    holes = np.asarray(X).copy()
    holes[0, 0] = np.nan
    message = "impute runs on concrete arrays"
    with pytest.raises(TypeError, match=message):
        jax.jit(lambda x: jaxgmm.impute(params, x))(holes)
    with pytest.raises(TypeError, match=message):
        batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), params, params)
        jax.vmap(lambda p: jaxgmm.impute(p, holes))(batch)
    with pytest.raises(TypeError, match=message):
        jax.grad(lambda x: jnp.sum(jaxgmm.impute(params, x)))(jnp.asarray(holes))


# --------------------------------------------------------------------------- fit


@pytest.mark.parametrize("covariance_type", jaxgmm.COVARIANCE_TYPES)
def test_fit_under_jit_and_vmap_over_keys_and_data_equals_separate_fits(covariance_type):
    """jit (options static, closed over) of vmap over (data set, key) pairs."""
    batch = np.stack([X, X[::-1] * 0.9 - 1.0])
    keys = jax.random.split(jax.random.key(3), 2)

    def fit(x, key):
        return jaxgmm.fit(x, 2, key=key, covariance_type=covariance_type, max_iter=40)

    got = jax.jit(jax.vmap(fit))(jnp.asarray(batch), keys)
    for b in range(2):
        single = fit(batch[b], keys[b])
        for field in ("weights", "means", "covariances", "precisions_cholesky"):
            np.testing.assert_allclose(
                np.asarray(getattr(got.params, field)[b]),
                np.asarray(getattr(single.params, field)),
                rtol=1e-8,
                atol=1e-10,
            )
        assert int(got.n_iter[b]) == int(single.n_iter)


def test_vmap_of_grad_through_fit_equals_separate_gradients():
    """Gradients through fit for a batch of data sets under vmap equal one at a time."""
    batch = np.stack([X, X * 1.1 + 0.3])

    def loss(x):
        return jaxgmm.fit(x, 2, key=0, tol=0.0, max_iter=150, covariance_type="diag").lower_bound

    got = jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(batch))
    for b in range(2):
        expected = jax.grad(loss)(jnp.asarray(batch[b]))
        np.testing.assert_allclose(np.asarray(got[b]), np.asarray(expected), rtol=1e-8, atol=1e-12)
