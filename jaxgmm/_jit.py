"""``jit``: ``jax.jit`` that compiles small problems for a fast start, large ones for speed."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial, update_wrapper

import jax
import numpy as np
from jax._src.core import trace_state_clean

from jaxgmm import _program_cache

# XLA's newer CPU fusion emitters make programs slower to compile but run 1.2-1.8x
# faster (measured on jaxgmm's fits, 2-core CPU: a default fit at N = 1,000, D = 4, K = 3
# spends 1.1-1.3 s in XLA without them, 1.8-1.9 s with them; an EM iteration at
# N = 100,000, D = 16, K = 16 takes 19-26 ms with them, 31-42 ms without). So problems whose
# work is small, where the compile time is what a user waits for, are compiled without
# them; the rest with XLA's defaults. A CPU debug option: other backends ignore it.
FAST_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
# Work = values of the data argument x n_components x n_init (when the program takes
# them). At most this much, an iteration costs well under a millisecond either way.
FAST_COMPILE_WORK = 1 << 20


class _Program:
    """A jitted function that picks its compiler options by the size of the problem.

    JAX accepts compiler options only on the outermost ``jit``; called inside another
    trace (the user's ``jit``, or one jaxgmm program inside another) the function is
    the plain ``jax.jit`` one, compiled as part of the outer program.
    """

    def __init__(self, fun: Callable, kwargs: dict, data_argnum: int):
        self.data_argnum = data_argnum
        self.fast_compile = jax.jit(fun, compiler_options=FAST_COMPILE_OPTIONS, **kwargs)
        self.fast_run = jax.jit(fun, **kwargs)
        update_wrapper(self, fun)
        # The disk cache keys a program by its name: only for module-level functions
        # (a closure or partial computes with values its name does not tell).
        plain = inspect.isfunction(fun) and fun.__closure__ is None
        self._name = f"{fun.__module__}.{fun.__qualname__}" if plain else None
        self._static_argnames = frozenset(kwargs.get("static_argnames", ()))
        # Positions a static argument could take (the disk cache keys keywords only).
        parameters = inspect.signature(fun).parameters.values()
        self._static_positions = {
            i
            for i, parameter in enumerate(parameters)
            if parameter.name in self._static_argnames
            and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        }

    def __call__(self, *args, **kwargs):
        program = self.program(args, kwargs)
        if (
            self._name is not None
            and _program_cache.enabled()
            and trace_state_clean()
            and not any(i < len(args) for i in self._static_positions)
        ):
            form = "fast_compile" if program is self.fast_compile else "fast_run"
            name = f"{self._name}\n{form}"
            out = _program_cache.call(name, program, self._static_argnames, args, kwargs)
            if out is not _program_cache.NOT_CACHED:
                return out
        return program(*args, **kwargs)

    def program(self, args: tuple, kwargs: dict):
        """The jitted form for these arguments (see the module's constants)."""
        if not trace_state_clean():
            return self.fast_run
        data = args[self.data_argnum] if len(args) > self.data_argnum else None
        work = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(data))
        work *= int(kwargs.get("n_components", 1)) * int(kwargs.get("n_init", 1))
        return self.fast_compile if work <= FAST_COMPILE_WORK else self.fast_run

    def lower(self, *args, **kwargs):
        """``jax.jit(...).lower`` of the form these arguments would use."""
        return self.program(args, kwargs).lower(*args, **kwargs)

    def clear_cache(self) -> None:
        """Forget the compiled programs (every form): the next call traces again."""
        self.fast_compile.clear_cache()
        self.fast_run.clear_cache()
        if self._name is not None:
            _program_cache.forget(self._name)


def jit(fun: Callable | None = None, /, *, data_argnum: int = 0, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` with compiler options by problem size; a decorator too.

    Args:
        fun: the function to compile (omitted: returns a decorator taking it).
        data_argnum: the positional argument that holds the data (its size measures
            the work; not the history or other bookkeeping arrays).
        **kwargs: ``jax.jit``'s keyword arguments (``static_argnames``, ...).

    Returns:
        The jitted function.
    """
    if fun is None:
        return partial(jit, data_argnum=data_argnum, **kwargs)
    return _Program(fun, kwargs, data_argnum)
