"""Compiled jaxgmm programs on disk, found again without tracing.

JAX's persistent compilation cache skips XLA's compilation in a later process, but
not the tracing and lowering that compute its key: about 0.4 s for a fit program on
a 2-core CPU, most of what a warm process still waits for. This cache keys each
compiled executable by what determines it, computed without tracing -- the program's
name and compiler options, the jaxgmm source, the jax/jaxlib versions, the devices,
every JAX configuration value, XLA_FLAGS, and the arguments' tree structure, shapes,
dtypes and static values -- and loads it with :mod:`jax.experimental.serialize_executable`
(about 0.1 s for a fit program). Calls it cannot key (arguments on several or other
devices, unusual static values, inside another trace) take the ordinary ``jax.jit``
path. It is on only while :func:`jaxgmm.compilation_cache.enable_compilation_cache`
is, in the ``jaxgmm-programs`` folder inside that cache folder.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import pickle
import re
import tempfile
import time
import zlib
from collections import OrderedDict
from functools import cache
from pathlib import Path

import jax
import numpy as np

SUBFOLDER = "jaxgmm-programs"
# A jax.monitoring duration event for every program loaded from the folder.
LOAD_EVENT = "/jaxgmm/program_cache/load_duration"
_SUFFIX = ".jaxgmm-program"
# Executables kept in memory after loading or compiling (most recently used).
_MAX_IN_MEMORY = 128

# What :func:`call` returns when it cannot key a call (the caller then runs it itself).
NOT_CACHED = object()

_folder: Path | None = None
_in_memory: OrderedDict[str, object] = OrderedDict()


def enable(cache_folder: str | os.PathLike) -> Path:
    """Keep compiled programs in ``cache_folder/jaxgmm-programs`` (created)."""
    global _folder
    folder = Path(cache_folder) / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    _folder = folder
    return folder


def disable() -> None:
    """Stop using the folder (programs already loaded stay in memory)."""
    global _folder
    _folder = None


def enabled() -> bool:
    """Whether calls look for their compiled program on disk."""
    return _folder is not None


def forget(name: str) -> None:
    """Drop the in-memory executables of the program called ``name``."""
    for key in [key for key in _in_memory if key.startswith(name + "\n")]:
        del _in_memory[key]


def call(name: str, jitted, static_argnames: frozenset, args: tuple, kwargs: dict):
    """Run ``jitted(*args, **kwargs)`` through a cached executable, or return None.

    Args:
        name: the program's name and form (part of the key).
        jitted: the ``jax.jit`` function to compile on a miss.
        static_argnames: its static keyword arguments (dropped from the call).
        args, kwargs: the call's arguments.

    Returns:
        The program's outputs, or :data:`NOT_CACHED` when the call cannot be keyed
        (the caller then calls ``jitted`` itself).
    """
    folder = _folder
    key = None if folder is None else _key(name, static_argnames, args, kwargs)
    if key is None:
        return NOT_CACHED
    executable = _in_memory.get(key)
    if executable is None:
        path = folder / (hashlib.sha256(key.encode()).hexdigest() + _SUFFIX)
        began = time.perf_counter()
        executable = _load(path, key)
        if executable is not None:  # reported like JAX's own compile events
            function = name.split("\n")[0].rsplit(".", 1)[-1]
            jax.monitoring.record_event_duration_secs(
                LOAD_EVENT, time.perf_counter() - began, fun_name=f"jit({function})"
            )
        else:
            executable = jitted.lower(*args, **kwargs).compile()
            _store(path, key, executable)
        _in_memory[key] = executable
        while len(_in_memory) > _MAX_IN_MEMORY:
            _in_memory.popitem(last=False)
    else:
        _in_memory.move_to_end(key)
    dynamic = {k: v for k, v in kwargs.items() if k not in static_argnames}
    return executable(*args, **dynamic)


def _key(name: str, static_argnames: frozenset, args: tuple, kwargs: dict) -> str | None:
    """Everything the compiled program depends on, as text; None if not keyable."""
    statics = sorted((k, v) for k, v in kwargs.items() if k in static_argnames)
    dynamic = {k: v for k, v in kwargs.items() if k not in static_argnames}
    leaves, treedef = jax.tree_util.tree_flatten((args, dynamic))
    default_device = jax.devices()[0]
    described = []
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            devices = leaf.sharding.device_set
            if len(devices) != 1 or default_device not in devices or leaf.is_deleted():
                return None
            weak = "w" if getattr(leaf, "weak_type", False) else ""
            described.append(f"{leaf.dtype}{leaf.shape}{weak}")
        elif isinstance(leaf, (np.ndarray, np.generic)):
            described.append(f"{leaf.dtype}{leaf.shape}")
        elif type(leaf) in (bool, int, float):
            described.append(f"p{type(leaf).__name__}")
        else:
            return None
    static_text = []
    for static_name, value in statics:
        if not _plain(value):
            return None
        static_text.append(f"{static_name}={value!r}")
    return "\n".join(
        [name, _environment(), str(treedef), " ".join(described), " ".join(static_text)]
        + [_configuration()]
    )


_configurations: dict = {}


def _configuration() -> str:
    """Every JAX configuration value, as text (memoised per JAX trace context).

    JAX's own compiled-program cache is keyed by its trace context, so two calls with
    the same context run the same program; the text is built once per context.
    """
    try:
        from jax._src.config import trace_context

        context = trace_context()
        hash(context)
    except Exception:
        return repr(sorted(jax.config.values.items()))
    text = _configurations.get(context)
    if text is None:
        if len(_configurations) > 64:
            _configurations.clear()
        text = _configurations[context] = repr(sorted(jax.config.values.items()))
    return text


def _plain(value) -> bool:
    """Whether ``repr(value)`` identifies ``value`` across processes."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, enum.Enum):
        return True
    return isinstance(value, tuple) and all(_plain(v) for v in value)


@cache
def _environment() -> str:
    """The jaxgmm source, library versions, devices and XLA flags of this process."""
    import jaxlib

    source = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.glob("*.py")):
        source.update(path.name.encode() + path.read_bytes())
    device = jax.devices()[0]
    return " ".join(
        [
            source.hexdigest(),
            jax.__version__,
            jaxlib.__version__,
            device.platform,
            str(getattr(device.client, "platform_version", "")),
            device.device_kind,
            str(len(jax.devices())),
            str(jax.process_count()),
            repr(os.environ.get("XLA_FLAGS", "")),
        ]
    )


# External functions ("custom calls") a stored program may call: LAPACK's, which JAX
# sets up lazily when it lowers a linear-algebra operation -- a program loaded without
# lowering anything must set them up first (an executable that calls them before
# crashes the process: jax-ml/jax#28908). Programs calling anything else are not stored.
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')
_LOADABLE_CUSTOM_CALLS = re.compile(r"lapack_\w+")


@cache
def _custom_calls_ready() -> bool:
    """Set up the LAPACK functions stored programs may call; False if this JAX cannot."""
    try:
        from jax._src.lax.linalg import initialize_lapack

        initialize_lapack()
    except Exception:
        return False
    return True


def _load(path: Path, key: str):
    """The executable stored at ``path`` for ``key``, or None (missing, stale, unreadable)."""
    from jax.experimental.serialize_executable import deserialize_and_load

    if not path.exists() or not _custom_calls_ready():
        return None
    try:
        stored_key, payload, in_tree, out_tree = pickle.loads(zlib.decompress(path.read_bytes()))
        if stored_key != key:
            return None
        # On the default device, as a call compiles it (by default JAX would load it
        # for every local device).
        return deserialize_and_load(payload, in_tree, out_tree, execution_devices=jax.devices()[:1])
    except Exception:  # a damaged or foreign file is a miss; the program is recompiled
        return None


def _loadable(executable) -> bool:
    """Whether every external function the program calls is one :func:`_load` sets up."""
    try:
        text = executable.as_text()
    except Exception:
        return False
    return all(_LOADABLE_CUSTOM_CALLS.fullmatch(t) for t in _CUSTOM_CALL.findall(text))


def _store(path: Path, key: str, executable) -> None:
    """Write ``executable`` to ``path`` atomically; a failure only costs the next process."""
    from jax.experimental.serialize_executable import serialize

    if not _loadable(executable):
        return
    try:
        blob = zlib.compress(pickle.dumps((key, *serialize(executable))), 1)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except Exception:  # not serialisable here, or the folder is gone or read-only
        return
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(blob)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
