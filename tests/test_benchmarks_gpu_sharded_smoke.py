"""Smoke tests of the sharded benchmark's and the accelerator check's --quick mode: each
runs, writes its report, and its checks pass (no timing assertions: performance is
checked by running the benchmarks, never by unit tests)."""

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("sklearn")


ROOT = Path(__file__).resolve().parents[1]


def _import_benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks.<name>, with the repository root on sys.path."""
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not an installed package
    if "benchmarks" in sys.modules and not hasattr(sys.modules["benchmarks"], "__path__"):
        pytest.skip("another module named 'benchmarks' is imported")
    return importlib.import_module(f"benchmarks.{name}")


def test_bench_sharded_quick_writes_table_and_same_lower_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench_sharded --quick: both placements timed on 2 devices, same lower bound."""
    bench = _import_benchmark("bench_sharded", monkeypatch)
    path = bench.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert path == tmp_path / "bench_sharded.md"
    assert "# W1 sharded: rows split over 2 CPU devices (quick smoke run)" in text
    assert "| implementation | ms per fit | ms / iter |" in text
    assert "| jaxgmm float32, 1 device |" in text
    assert "| jaxgmm float32, 2 devices (rows split) |" in text
    assert "Not a speed target on this machine" in text
    assert "Same lower bound: **PASS**" in text
    result = json.loads((tmp_path / "bench_sharded.json").read_text())["result"]
    assert "--xla_force_host_platform_device_count=2" in result["xla_flags"]
    assert len(result["devices"]) == 2
    assert result["same_lower_bound"]
    assert result["sharded"]["n_iter"] == result["unsharded"]["n_iter"] == result["b"]


def test_gpu_check_quick_writes_report_and_checks_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu_check --quick (tiny sizes on the CPU): report written, every check passes."""
    bench = _import_benchmark("gpu_check", monkeypatch)
    path = bench.main(["--quick", "--out", str(tmp_path)])  # SystemExit if a check fails
    text = path.read_text()
    assert path == tmp_path / "gpu.md"
    assert "# Accelerator check: " in text
    assert "JAX " in text
    assert "**All checks passed** (9 of 9)." in text
    assert "FAIL" not in text
    for covariance_type in ("full", "tied", "diag", "spherical"):
        for dtype in ("float32", "float64"):
            assert f"| scikit-learn agreement, {covariance_type} | {dtype} |" in text
    assert "| far from the origin (offset 10000" in text
    for workload in ("W1", "W1d", "W2", "W3", "W4"):
        assert f"| {workload} | " in text
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["device"]["sizes"] == "tiny"
    assert all(check["passed"] for check in data["checks"])
    # the float32 checks ran in float32 although this process enables x64
    assert [check["computed_in"] for check in data["checks"]] == [
        check["dtype"] for check in data["checks"]
    ]
    assert {check["dtype"] for check in data["checks"]} == {"float32", "float64"}
