"""compacting_while_loop: the same results as lax.while_loop, batched or not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgmm._loops import compacting_while_loop


def _cond(state, limit):
    x, steps = state
    return (x != 1) & (steps < limit)


def _body(state, limit):
    x, steps = state
    return jnp.where(x % 2 == 0, x // 2, 3 * x + 1), steps + 1


def _collatz(n, limit):
    """Collatz steps of n (capped at limit): iteration counts from 0 to 111 for n <= 100."""
    return compacting_while_loop(_cond, _body, (n, jnp.asarray(0)), limit)


def _reference(n, limit):
    return jax.lax.while_loop(lambda s: _cond(s, limit), lambda s: _body(s, limit), (n, 0))


def test_unbatched_is_the_plain_loop():
    assert int(_collatz(jnp.asarray(27), 1000)[1]) == 111
    assert int(_collatz(jnp.asarray(27), 50)[1]) == 50


@pytest.mark.parametrize("n_members", [3, 8, 100])  # below and above the compaction size
def test_vmapped_equals_vmapped_while_loop(n_members):
    n = jnp.arange(1, n_members + 1)
    limits = jnp.asarray(np.random.default_rng(0).integers(5, 120, n_members))
    # Shared (unbatched) and per-member (batched) constants; jit and eager.
    for limit, axes in ((jnp.asarray(1000), (0, None)), (limits, (0, 0))):
        expected = jax.vmap(_reference, in_axes=axes)(n, limit)
        got = jax.jit(jax.vmap(_collatz, in_axes=axes))(n, limit)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    # The tail stage ran: members kept iterating long after most had stopped.
    assert int(jnp.max(expected[1])) > 3 * int(jnp.median(expected[1]))


def test_nested_vmap():
    n = jnp.arange(1, 61).reshape(3, 20)
    expected = jax.vmap(jax.vmap(_reference, in_axes=(0, None)), in_axes=(0, None))(n, 1000)
    got = jax.vmap(jax.vmap(_collatz, in_axes=(0, None)), in_axes=(0, None))(n, 1000)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
