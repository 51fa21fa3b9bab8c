"""jaxgmm's programs pick XLA compiler options by the shape of the problem (jaxgmm._jit)."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
import jaxgmm._jit as jaxgmm_jit
from jaxgmm._jit import FAST_COMPILE_WORK, jit


@jit(static_argnames=("n_components", "n_init"))
def _toy(x, *, n_components, n_init):
    """A program with jaxgmm's work keywords: exp of a Gram matrix, summed."""
    return jnp.sum(jnp.exp(-(x @ x.T))) * n_components * n_init


def _rows(n, d):
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def test_forms_follow_work_restarts_and_features():
    big = _rows(FAST_COMPILE_WORK // 4, 2)  # x K=4: twice the fast-compile work
    batched = _toy.program((big,), dict(n_components=4, n_init=8))
    if jaxgmm_jit.batched_few_features_options() is None:  # jaxlib without the option
        assert batched is _toy.fast_run
    else:
        assert batched is _toy.batched_few_features
    assert _toy.program((big,), dict(n_components=4, n_init=1)) is _toy.fast_run
    wide = _rows(FAST_COMPILE_WORK // 4, 8)
    assert _toy.program((wide,), dict(n_components=4, n_init=8)) is _toy.fast_run
    assert _toy.program((_rows(100, 2),), dict(n_components=4, n_init=8)) is _toy.fast_compile


def test_batched_few_features_programs_have_no_library_fusions():
    """The option reaches XLA: the compiled program contains no YNNPACK fusion."""
    if jaxgmm_jit.batched_few_features_options() is None:
        # This jaxlib has no YNNPACK fusions: nothing to turn off, nothing compiled in.
        text = jax.jit(lambda x: jnp.exp(x @ x.T).sum(1)).lower(_rows(64, 64)).compile()
        assert "ynn" not in text.as_text()
        return
    options = jaxgmm_jit.batched_few_features_options()
    compiled = (
        jax.jit(lambda x: jnp.exp(x @ x.T).sum(1), compiler_options=options)
        .lower(_rows(64, 64))
        .compile()
    )
    assert "ynn" not in compiled.as_text()


def test_restarts_on_few_features_fit_the_same_with_either_options(monkeypatch):
    """The batched form changes how XLA fuses, not what is computed (float64)."""
    X = np.random.default_rng(4).normal(size=(40_000, 2))
    X[:15_000] += 5.0
    options = dict(covariance_type="diag", n_init=8, key=1, tol=1e-6, max_iter=30)
    chosen = jaxgmm.fit(X, 4, **options)
    monkeypatch.setattr(jaxgmm_jit, "batched_few_features_options", lambda: None)
    default = jaxgmm.fit(X, 4, **options)
    assert int(chosen.n_iter) == int(default.n_iter)
    np.testing.assert_allclose(chosen.lower_bound, default.lower_bound, rtol=1e-10)
    np.testing.assert_allclose(chosen.params.means, default.params.means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        chosen.restart_lower_bounds, default.restart_lower_bounds, rtol=1e-10
    )
