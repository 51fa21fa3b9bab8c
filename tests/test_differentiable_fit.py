"""Gradients through ``fit`` by the implicit function theorem, against finite differences.

A scalar function of the fitted parameters (means, log-determinants of the
covariances, weights, the score on held-out data through ``precisions_cholesky``, and
the fit's lower bound) is differentiated with ``jax.jit(jax.grad(...))`` with respect
to X, ``sample_weight`` and ``reg_covar``, and compared with central finite differences
of plain (untraced, independently padded) float64 fits run to machine precision
(tol = 0, so every fit runs ``max_iter`` iterations from the same ``means_init``: the
finite differences never jump between fixed points). One compiled gradient per
covariance type is shared by every assertion (module-scoped fixture).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import jaxgmm
from jaxgmm import Status

K, D, N = 3, 2, 90
CENTRES = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 6.0]])
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D)) * np.array([1.0, 0.7]) + np.repeat(CENTRES, N // K, axis=0)
X_TEST = RNG.normal(size=(25, D)) * 3.0 + 2.0
WEIGHTS = RNG.uniform(0.5, 2.0, size=N)
ZERO_ROW = 7  # a row with sample weight zero: its gradient must be exactly zero
WEIGHTS[ZERO_ROW] = 0.0
REG_COVAR = 1e-2
FIT_OPTIONS = dict(tol=0.0, max_iter=300, means_init=CENTRES + 0.3)

LOG_DET = {
    "full": lambda c: jnp.sum(jnp.linalg.slogdet(c)[1]),
    "tied": lambda c: jnp.linalg.slogdet(c)[1],
    "diag": lambda c: jnp.sum(jnp.log(c)),
    "spherical": lambda c: D * jnp.sum(jnp.log(c)),
}


def _loss(covariance_type):
    """A scalar function of everything fit returns that has a gradient."""
    mean_weights = np.arange(K * D, dtype=np.float64).reshape(K, D) / 10.0

    def loss(x, sample_weight, reg_covar):
        result = jaxgmm.fit(
            x,
            K,
            covariance_type=covariance_type,
            sample_weight=sample_weight,
            reg_covar=reg_covar,
            **FIT_OPTIONS,
        )
        params = result.params
        return (
            jnp.sum(params.means * mean_weights)
            + LOG_DET[covariance_type](params.covariances)
            + jnp.sum(params.weights * jnp.arange(K, dtype=x.dtype))
            + jaxgmm.score(params, X_TEST)
            + result.lower_bound
        )

    return loss


def _finite_difference(f, direction, h=1e-5) -> float:
    """Central difference of f(t) at t = 0 along a direction (float64)."""
    return (float(f(h * direction)) - float(f(-h * direction))) / (2 * h)


class Case:
    """One covariance type: its loss and the gradient computed once."""

    def __init__(self, covariance_type):
        self.covariance_type = covariance_type
        self.loss = _loss(covariance_type)
        grad = jax.jit(jax.grad(self.loss, argnums=(0, 1, 2)))
        g = grad(jnp.asarray(X), jnp.asarray(WEIGHTS), jnp.asarray(REG_COVAR))
        self.grad_x, self.grad_weights, self.grad_reg = (np.asarray(a) for a in g)

    def check(self, analytic: float, numeric: float, scale: float) -> None:
        """Relative error <= 1e-4 of the derivative (or of |grad| |direction|)."""
        assert abs(analytic - numeric) <= 1e-4 * max(abs(numeric), scale), (analytic, numeric)


_CASES: dict[str, Case] = {}


def _case(covariance_type: str) -> Case:
    if covariance_type not in _CASES:
        _CASES[covariance_type] = Case(covariance_type)
    return _CASES[covariance_type]


@pytest.fixture(scope="module", params=jaxgmm.COVARIANCE_TYPES)
def case(request):
    return _case(request.param)


def test_fits_reach_the_fixed_point_the_gradient_assumes(case):
    """The reference fits run to max_iter (tol = 0) and sit at a fixed point of EM."""
    result = jaxgmm.fit(
        X, K, covariance_type=case.covariance_type, sample_weight=WEIGHTS,
        reg_covar=REG_COVAR, **FIT_OPTIONS,
    )  # fmt: skip
    assert int(result.status) == Status.MAX_ITER
    history = np.asarray(result.history)
    assert abs(history[-1] - history[-2]) < 1e-13


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_wrt_x_matches_finite_differences(case, seed):
    direction = np.random.default_rng(seed).normal(size=X.shape)
    direction[ZERO_ROW] = 0.0

    def f(t):
        return case.loss(X + t, WEIGHTS, REG_COVAR)

    numeric = _finite_difference(f, direction)
    analytic = float(np.sum(case.grad_x * direction))
    case.check(analytic, numeric, np.linalg.norm(case.grad_x) * np.linalg.norm(direction))


def test_gradient_wrt_single_entries_of_x_matches_finite_differences(case):
    for row, column in [(0, 0), (45, 1), (N - 1, 1)]:
        direction = np.zeros_like(X)
        direction[row, column] = 1.0
        numeric = _finite_difference(lambda t: case.loss(X + t, WEIGHTS, REG_COVAR), direction)
        case.check(float(case.grad_x[row, column]), numeric, np.abs(case.grad_x).max())


def test_gradient_wrt_sample_weight_matches_finite_differences(case):
    direction = np.random.default_rng(5).normal(size=N)
    direction[ZERO_ROW] = 0.0  # a negative weight would be rejected

    def f(t):
        return case.loss(X, WEIGHTS + t, REG_COVAR)

    numeric = _finite_difference(f, direction)
    analytic = float(np.sum(case.grad_weights * direction))
    case.check(analytic, numeric, np.linalg.norm(case.grad_weights) * np.linalg.norm(direction))


def test_gradient_wrt_reg_covar_matches_finite_differences(case):
    numeric = _finite_difference(lambda t: case.loss(X, WEIGHTS, REG_COVAR + t), np.float64(1.0))
    case.check(float(case.grad_reg), numeric, 0.0)


def test_zero_weight_row_has_exactly_zero_gradient(case):
    assert np.all(case.grad_x[ZERO_ROW] == 0.0)
    assert np.all(np.isfinite(case.grad_x)) and np.any(case.grad_x != 0.0)


def test_non_finite_fit_gives_nan_gradients_not_an_exception():
    """Duplicated points with reg_covar = 0: every restart goes NON_FINITE."""
    x = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]]), 10, axis=0)

    def loss(x):
        result = jaxgmm.fit(x, K, reg_covar=0.0, max_iter=20)
        return jnp.sum(result.params.means), result.status

    grad, status = jax.jit(jax.grad(loss, has_aux=True))(jnp.asarray(x))
    assert int(status) == Status.NON_FINITE
    assert np.all(np.isnan(np.asarray(grad)))


def test_eager_grad_equals_jit_grad():
    """jax.grad without jit works too (the backward pass is compiled once per shape)."""
    case = _case("diag")
    eager = jax.grad(case.loss)(jnp.asarray(X), jnp.asarray(WEIGHTS), jnp.asarray(REG_COVAR))
    np.testing.assert_allclose(np.asarray(eager), case.grad_x, rtol=1e-9, atol=1e-12)


def test_gradient_with_rows_split_over_devices_equals_unsplit():
    """Row-sharded X (4 CPU devices, an Explicit mesh axis: jaxgmm sees the split under
    jit): the same gradient, split like X. (The backward pass gathers the rows.)"""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
    x = np.concatenate([X, X[:2] + 0.5])  # 92 rows: 23 per device

    def loss(x):
        return jaxgmm.fit(x, K, key=0, tol=0.0, max_iter=100).lower_bound

    split = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    got = jax.jit(jax.grad(loss))(split)
    expected = jax.jit(jax.grad(loss))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-8, atol=1e-14)
    assert got.sharding.spec[0] == "data"


def test_float32_gradient_agrees_with_float64():
    """float32 fits (the default without x64) get the float64 gradient to float32 accuracy."""

    def loss(x):
        fitted = jaxgmm.fit(x, K, tol=0.0, max_iter=200, means_init=CENTRES + 0.3)
        return jaxgmm.score(fitted.params, X_TEST.astype(x.dtype))

    grad = jax.jit(jax.grad(loss))
    single = np.asarray(grad(jnp.asarray(X, jnp.float32)), np.float64)
    double = np.asarray(grad(jnp.asarray(X)))
    assert np.linalg.norm(single - double) <= 1e-3 * np.linalg.norm(double)
