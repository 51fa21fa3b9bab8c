"""``jit``: ``jax.jit`` that compiles small problems for a fast start, large ones for speed."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache, partial, update_wrapper

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
# Backend optimisation level 1 (of 3; also read by GPU backends) takes another 0.03-0.06 s
# off each such program (XLA 0.59 -> 0.54 s for a default fit on 800 x 2, 0.55 -> 0.52 s
# on 4,900 x 4; alternating processes) for 0-4 % slower fits (1.07 -> 1.10 ms at 800 x 2).
FAST_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
# Work = values of the data argument x n_components x n_init (when the program takes
# them). At most this much, an iteration costs well under a millisecond either way.
FAST_COMPILE_WORK = 1 << 20
# XLA's experimental YNNPACK fusions (on by default in recent jaxlib on CPU) slow down
# programs that vmap many members (restarts, models) over data of few features: measured
# in one process, interleaved, 2-core CPU, the same programs without them ran 1.05-4.0x
# faster (W2 n_init = 256, D = 2: 1.17x; W3 1,000 models, D = 2: 1.34x; n_init = 8 on
# 20,000 x 2 diag: 4.0x). For one member, or more features, they are faster as often as
# slower (0.5x-2.3x: 1,000,000 x 4 full gains 2x with them, the same data diag loses
# 1.9x; 1,797 x 64 with 10 restarts gains 1.7x), so those keep XLA's defaults. At this
# many features the kernels have no matrix products (see jaxgmm._covariance).
BATCHED_FEW_FEATURES = 4
BATCHED_FEW_FEATURES_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@cache
def batched_few_features_options() -> dict | None:
    """:data:`BATCHED_FEW_FEATURES_OPTIONS`, or None where this XLA lacks the option
    (jaxlib before YNNPACK fusions: its programs have none to turn off)."""
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=BATCHED_FEW_FEATURES_OPTIONS)
        probe.lower(np.float32(0)).compile()
    except Exception:  # an unknown option is rejected at compile time
        return None
    return BATCHED_FEW_FEATURES_OPTIONS


class _Program:
    """A jitted function that picks its compiler options by the size of the problem.

    JAX accepts compiler options only on the outermost ``jit``; called inside another
    trace (the user's ``jit``, or one jaxgmm program inside another) the function is
    the plain ``jax.jit`` one, compiled as part of the outer program.
    """

    def __init__(self, fun: Callable, kwargs: dict, data_argnum: int, models_axis: bool):
        self.data_argnum = data_argnum
        self.models_axis = models_axis
        self.fast_compile = jax.jit(fun, compiler_options=FAST_COMPILE_OPTIONS, **kwargs)
        self.fast_run = jax.jit(fun, **kwargs)
        self._fun, self._kwargs = fun, kwargs
        self.batched_few_features = None  # built on first use (probing starts the backend)
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
            form = next(
                name
                for name in ("fast_compile", "fast_run", "batched_few_features")
                if program is getattr(self, name)
            )
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
        leaves = jax.tree_util.tree_leaves(data)
        work = sum(np.size(leaf) for leaf in leaves)
        n_init = int(kwargs.get("n_init", 1))
        work *= int(kwargs.get("n_components", 1)) * n_init
        if work <= FAST_COMPILE_WORK:
            return self.fast_compile
        batched = self.models_axis or n_init > 1
        few_features = bool(leaves) and np.ndim(leaves[0]) >= 2
        few_features = few_features and np.shape(leaves[0])[-1] <= BATCHED_FEW_FEATURES
        options = batched_few_features_options() if batched and few_features else None
        if options:
            if self.batched_few_features is None:
                self.batched_few_features = jax.jit(
                    self._fun, compiler_options=options, **self._kwargs
                )
            return self.batched_few_features
        return self.fast_run

    def lower(self, *args, **kwargs):
        """``jax.jit(...).lower`` of the form these arguments would use."""
        return self.program(args, kwargs).lower(*args, **kwargs)

    def clear_cache(self) -> None:
        """Forget the compiled programs (every form): the next call traces again."""
        for program in (self.fast_compile, self.fast_run, self.batched_few_features):
            if program is not None:
                program.clear_cache()
        if self._name is not None:
            _program_cache.forget(self._name)


def jit(
    fun: Callable | None = None,
    /,
    *,
    data_argnum: int = 0,
    models_axis: bool = False,
    **kwargs,
) -> Callable:
    """``jax.jit(fun, **kwargs)`` with compiler options by problem size; a decorator too.

    Args:
        fun: the function to compile (omitted: returns a decorator taking it).
        data_argnum: the positional argument that holds the data (its size measures
            the work; not the history or other bookkeeping arrays); the last axis of
            its first array is the number of features.
        models_axis: the program vmaps over several models (``fit_many``); programs
            with an ``n_init`` keyword vmap over restarts when it is above 1.
        **kwargs: ``jax.jit``'s keyword arguments (``static_argnames``, ...).

    Returns:
        The jitted function.
    """
    if fun is None:
        return partial(jit, data_argnum=data_argnum, models_axis=models_axis, **kwargs)
    return _Program(fun, kwargs, data_argnum, models_axis)
