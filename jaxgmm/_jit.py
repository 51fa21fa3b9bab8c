"""``jit``: ``jax.jit`` with the compiler settings every jaxgmm program uses."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, update_wrapper

import jax
from jax._src.core import trace_state_clean

# XLA's newer CPU fusion emitters make jaxgmm's programs about twice as slow to compile
# (default fit, N = 1,000, D = 4, K = 3: 0.8 s of XLA compilation instead of 1.6-2.2 s;
# N = 100,000, D = 16, K = 16: 2.0-2.2 s instead of 3.1-3.5 s) and run no slower
# (benchmarks/results/bench_compile.md, bench_em.md). A CPU debug option: other
# backends ignore it.
COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


class _Program:
    """A jitted function: compiled with :data:`COMPILER_OPTIONS` when called at top level.

    JAX accepts compiler options only on the outermost ``jit``; called inside another
    trace (the user's ``jit``, or one jaxgmm program inside another) the function is
    the plain ``jax.jit`` one, compiled as part of the outer program.
    """

    def __init__(self, fun: Callable, kwargs: dict):
        self.top_level = jax.jit(fun, compiler_options=COMPILER_OPTIONS, **kwargs)
        self.nested = jax.jit(fun, **kwargs)
        update_wrapper(self, fun)

    def __call__(self, *args, **kwargs):
        program = self.top_level if trace_state_clean() else self.nested
        return program(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """``jax.jit(...).lower``: the top-level program's lowering."""
        return self.top_level.lower(*args, **kwargs)

    def clear_cache(self) -> None:
        """Forget the compiled programs (both forms): the next call traces again."""
        self.top_level.clear_cache()
        self.nested.clear_cache()


def jit(fun: Callable | None = None, /, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` with :data:`COMPILER_OPTIONS`; usable as a decorator.

    Args:
        fun: the function to compile (omitted: returns a decorator taking it).
        **kwargs: ``jax.jit``'s keyword arguments (``static_argnames``, ...).

    Returns:
        The jitted function.
    """
    if fun is None:
        return partial(jit, **kwargs)
    return _Program(fun, kwargs)
