"""Test configuration: float64 available, strict dtype promotion, four CPU devices.

x64 is enabled for the whole suite so float64 reference comparisons are possible;
tests of the float32 path pass float32 arrays explicitly (jaxgmm computes in the
input's precision).
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every compiled CPU program maps a few hundred memory regions; a test worker that
    keeps all the programs of the whole suite can reach the kernel's limit on mapped
    regions (``vm.max_map_count``), and XLA then crashes while compiling.
    """
    yield
    jax.clear_caches()
