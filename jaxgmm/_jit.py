"""``jit``: ``jax.jit`` with the compiler settings every jaxgmm program uses."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax

# XLA's newer CPU fusion emitters make jaxgmm's programs about twice as slow to compile
# (default fit, N = 1,000, D = 4, K = 3: 1.1 s of XLA compilation instead of 1.8-2.2 s;
# N = 100,000, D = 16, K = 16: 2.0-2.2 s instead of 3.1-3.5 s) and run no faster
# (benchmarks/results/bench_compile.md). The option is a CPU debug option: other
# backends ignore it.
COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


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
    return jax.jit(fun, compiler_options=COMPILER_OPTIONS, **kwargs)
