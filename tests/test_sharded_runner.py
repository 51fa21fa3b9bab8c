"""Runs tests/test_sharded.py in a subprocess with 4 forced CPU devices, when this one has fewer.

XLA reads ``--xla_force_host_platform_device_count`` once, when JAX initialises, so a
process started with fewer than 4 devices cannot run the sharded tests itself.
tests/conftest.py forces 4 devices unless XLA_FLAGS is already set; when it was set
without a device count (or with fewer), this test runs the module in a fresh process with
the flag added. With 4 devices here, test_sharded.py runs in this process already and
this test skips rather than run it twice.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(xla_flags: str, n_devices: int) -> str:
    """``xla_flags`` with any device-count flag replaced by one for ``n_devices``."""
    kept = re.sub(rf"{DEVICE_FLAG}=\S*", "", xla_flags).split()
    return " ".join([*kept, f"{DEVICE_FLAG}={n_devices}"])


def test_sharded_module_passes_on_four_devices():
    if len(jax.devices()) >= 4:
        pytest.skip("this process has 4 devices: tests/test_sharded.py runs here directly")
    env = {**os.environ, "XLA_FLAGS": with_device_count(os.environ.get("XLA_FLAGS", ""), 4)}
    cmd = [sys.executable, "-m", "pytest", "tests/test_sharded.py"]
    cmd += ["-p", "no:cacheprovider", "-q", "-n", "0"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, output
    assert "needs 4 devices" not in output, output  # the subprocess really had 4 devices
    assert re.search(r"\d+ passed", output), output
