"""jaxgmm's on-disk programs: a later process runs the same fit without tracing it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgmm import _program_cache

# One process: fit, score, report the results and which jaxgmm programs were traced.
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from jax import monitoring
    traced = []
    def on_event(name, seconds, **kwargs):
        if name == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(str(kwargs.get("fun_name")))
    monitoring.register_event_duration_secs_listener(on_event)
    import jaxgmm
    X = np.random.default_rng(0).normal(size=(300, 3))
    result = jaxgmm.fit(X, 2, key=0)
    log_density = np.asarray(jaxgmm.score_samples(result.params, X))
    print(json.dumps({
        "means": np.asarray(result.params.means).tolist(),
        "lower_bound": float(result.lower_bound),
        "n_iter": int(result.n_iter),
        "log_density": log_density.tolist(),
        "traced": traced,
    }))
    """
)


def _run(cache: Path) -> dict:
    env = {**os.environ, "JAXGMM_COMPILATION_CACHE": str(cache)}
    # Several devices: a program stored for one runs on the default device only.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_runs_the_stored_programs_without_tracing(tmp_path):
    first = _run(tmp_path)
    stored = list((tmp_path / _program_cache.SUBFOLDER).iterdir())
    assert len(stored) >= 2  # the fit and the scoring program
    assert any("fit" in name for name in first["traced"])
    second = _run(tmp_path)
    jaxgmm_programs = [n for n in second["traced"] if "fit" in n or "evaluate" in n]
    assert jaxgmm_programs == []
    for field in ("means", "lower_bound", "n_iter", "log_density"):
        assert second[field] == first[field]  # the same executable: bit for bit


@pytest.fixture
def disk_cache(tmp_path, monkeypatch):
    """The program cache on, in a temporary folder, for this test only."""
    monkeypatch.setattr(_program_cache, "_folder", None)
    monkeypatch.setattr(_program_cache, "_in_memory", type(_program_cache._in_memory)())
    return _program_cache.enable(tmp_path)


def _double(x, *, scale):
    return x * scale


def test_calls_are_keyed_by_shapes_dtypes_and_static_values(disk_cache):
    program = jax.jit(_double, static_argnames=("scale",))
    names = frozenset({"scale"})
    out = _program_cache.call("t", program, names, (np.ones(3, np.float32),), {"scale": 2})
    np.testing.assert_array_equal(out, [2.0, 2.0, 2.0])
    for args, kwargs in [
        ((np.ones(4, np.float32),), {"scale": 2}),
        ((np.ones(3, np.int32),), {"scale": 2}),
        ((np.ones(3, np.float32),), {"scale": 3}),
        ((jnp.ones(3, jnp.float32),), {"scale": 2}),
    ]:
        out = _program_cache.call("t", program, names, args, kwargs)
        np.testing.assert_array_equal(out, np.asarray(args[0]) * kwargs["scale"])
    assert len(list(disk_cache.iterdir())) == 4  # numpy and JAX float32 inputs share one


def test_unkeyable_calls_are_left_to_jit(disk_cache):
    program = jax.jit(_double, static_argnames=("scale",))
    names = frozenset({"scale"})
    odd_static = _program_cache.call("t", program, names, (np.ones(3),), {"scale": [2]})
    assert odd_static is _program_cache.NOT_CACHED
    odd_leaf = _program_cache.call("t", program, names, ("text",), {"scale": 2})
    assert odd_leaf is _program_cache.NOT_CACHED
    assert list(disk_cache.iterdir()) == []


def test_a_damaged_file_is_compiled_again(disk_cache):
    program = jax.jit(_double, static_argnames=("scale",))
    names = frozenset({"scale"})
    args, kwargs = (np.arange(3.0, dtype=np.float32),), {"scale": 2}
    _program_cache.call("t", program, names, args, kwargs)
    (stored,) = disk_cache.iterdir()
    stored.write_bytes(b"not a program")
    _program_cache._in_memory.clear()
    out = _program_cache.call("t", program, names, args, kwargs)
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])
    assert stored.read_bytes() != b"not a program"  # rewritten


def test_only_programs_calling_lapack_are_stored():
    class Compiled:
        def __init__(self, text):
            self.text = text

        def as_text(self):
            return self.text

    lapack = 'custom_call(x), custom_call_target="lapack_spotrf_ffi"'
    other = lapack + ', custom_call_target="some_plugin_kernel"'
    assert _program_cache._loadable(Compiled("no external calls"))
    assert _program_cache._loadable(Compiled(lapack))
    assert not _program_cache._loadable(Compiled(other))
