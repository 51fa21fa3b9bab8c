"""Opt-in persistent compilation cache, so a second *process* skips XLA compilation.

A fit is one compiled XLA program per shape and static option set. Within a process,
JAX reuses it: a second ``fit`` with the same shapes does not compile again. Across
processes (a script run twice, a CLI call, a test session), JAX can keep compiled
programs on disk -- but that is a *global* JAX setting that applies to every ``jit``
in the process. Importing jaxgmm therefore never turns it on. Turn it on explicitly:

* call :func:`enable_compilation_cache` (optionally with a folder), or
* set the environment variable ``JAXGMM_COMPILATION_CACHE`` to a folder (or to ``1``
  for the default folder) before importing jaxgmm; the import then calls
  :func:`enable_compilation_cache` for you. This is the switch for the CLI and for
  the benchmarks (``--cache``).

The default folder is ``$XDG_CACHE_HOME/jaxgmm/xla`` (``~/.cache/jaxgmm/xla``). If the
user has already configured a JAX cache folder (``jax_compilation_cache_dir``), the
function leaves it alone unless a path is passed explicitly.

JAX's cache still traces and lowers every program to compute its key (about 0.5 s for
a fit program); jaxgmm's own programs are also stored whole in ``jaxgmm-programs/``
inside the folder and found again without tracing (:mod:`jaxgmm._program_cache`).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxgmm import _program_cache

ENV_VAR = "JAXGMM_COMPILATION_CACHE"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxgmm/xla``, falling back to ``~/.cache/jaxgmm/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxgmm" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache (a process-wide JAX setting).

    Every compiled program (small scoring programs too) is written to ``path`` and
    read back by later processes with the same program, jax/jaxlib version and
    machine, so their ``fit`` starts without compiling.

    Args:
        path: cache folder; default: a JAX cache folder the user already configured,
            else :func:`default_cache_dir`. Created if missing.

    Returns:
        The cache folder in use.
    """
    current = jax.config.jax_compilation_cache_dir
    if path is None and current:
        folder = Path(current)
    else:
        folder = Path(path) if path is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program, however small: a model-selection loop compiles dozens of small
    # scoring and checking programs (0.05-0.2 s each) that a later process would
    # otherwise compile again.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _program_cache.enable(folder)
    return folder


def disable_compilation_cache() -> None:
    """Stop writing and reading jaxgmm's programs on disk (JAX's cache folder setting stays)."""
    _program_cache.disable()


def enable_from_environment() -> Path | None:
    """Call :func:`enable_compilation_cache` if ``JAXGMM_COMPILATION_CACHE`` is set.

    ``1``/``true``/``yes`` selects the default folder; ``0``/``false``/``no``/empty
    leaves JAX untouched; anything else is taken as the folder.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in ("", "0", "false", "no", "off"):
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return enable_compilation_cache()
    return enable_compilation_cache(value)


enable_from_environment()
