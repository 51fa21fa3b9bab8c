"""Smoke test of the benchmarks' --quick mode: it runs and writes its table (no timing
assertions: performance is checked by running the benchmarks, never by unit tests)."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


ROOT = Path(__file__).resolve().parents[1]


def test_bench_em_quick_writes_table_and_plots(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not an installed package
    if "benchmarks" in sys.modules and not hasattr(sys.modules["benchmarks"], "__path__"):
        pytest.skip("another module named 'benchmarks' is imported")
    from benchmarks import bench_em

    path = bench_em.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert "| workload | implementation | ms / iter |" in text
    assert "jaxgmm float32" in text
    assert "scikit-learn float32" in text
    assert "numpy point-by-point loop" in text
    assert (tmp_path / "bench_em.json").exists()
    assert (tmp_path / "em_vs_n.png").stat().st_size > 0
    assert (tmp_path / "em_vs_k.png").stat().st_size > 0
