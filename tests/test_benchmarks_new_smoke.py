"""Smoke tests of the compile-loop, latency, real-data and missing-values benchmarks'
--quick mode: each runs and writes its table (no timing assertions: performance is
checked by running the benchmarks, never by unit tests)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")


ROOT = Path(__file__).resolve().parents[1]


def _import_benchmark(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not an installed package
    if "benchmarks" in sys.modules and not hasattr(sys.modules["benchmarks"], "__path__"):
        pytest.skip("another module named 'benchmarks' is imported")
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def test_bench_compile_loop_quick_writes_tables(tmp_path, monkeypatch):
    bench = _import_benchmark("bench_compile_loop", monkeypatch)
    path = bench.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert "## W8: a loop of fits on data sets of varying size" in text
    assert (
        "| process | loop (s) | ms / fit | fit programs compiled | jaxgmm programs compiled |"
        in text
    )
    assert "jaxgmm cold: empty cache" in text
    assert "jaxgmm warm: cache filled" in text
    assert "at most 6 compiled fit programs for the whole loop (cold)" in text
    assert "## Gallery grid search: Gaussian Mixture Model Selection" in text
    assert "| process | search (s) | × scikit-learn | best params |" in text
    assert "warm ≤ 1× scikit-learn" in text
    assert "same best parameters" in text
    assert (tmp_path / "bench_compile_loop.json").exists()


def test_bench_latency_quick_writes_table(tmp_path, monkeypatch):
    bench = _import_benchmark("bench_latency", monkeypatch)
    path = bench.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert "| rows | function | jaxgmm ms | scikit-learn ms |" in text
    for name in ("predict", "predict_proba", "score_samples", "score"):
        assert f"| 1 | {name} |" in text
        assert f"| 100 | {name} |" in text
    assert "jaxgmm.f(params, X) ms" in text
    assert (tmp_path / "bench_latency.json").exists()


def test_bench_realdata_quick_writes_table(tmp_path, monkeypatch):
    bench = _import_benchmark("bench_realdata", monkeypatch)
    path = bench.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert "| data set | N × D | K | covariance | input | jaxgmm first call (s) |" in text
    assert "| iris | 150 × 4 | 3 | full | float64 |" in text
    assert "| iris | 150 × 4 | 3 | full | float32 |" in text
    assert "geometric-mean speed-up ≥ 3×" in text
    assert "Geometric-mean speed-up:" in text
    assert (tmp_path / "bench_realdata.json").exists()


def test_bench_blocks_quick_writes_table(tmp_path, monkeypatch):
    bench = _import_benchmark("bench_blocks", monkeypatch)
    text = bench.main(["--quick", "--out", str(tmp_path)]).read_text()
    header = "| workload | fit | blocks ms | one program ms | measured overhead | blocks |"
    assert header in text
    assert "| W1 | full, N=2,000, D=16, K=16, 40 iterations (tol=0) |" in text
    result = json.loads((tmp_path / "bench_blocks.json").read_text())["W1"]
    assert result["blocks_per_fit"] >= 1 and result["empty_block_s"] > 0
    assert result["estimated_ratio"] == pytest.approx(
        1 + result["blocks_per_fit"] * result["empty_block_s"] / result["one_program_s"]
    )


def test_bench_missing_quick_writes_table(tmp_path, monkeypatch):
    bench = _import_benchmark("bench_missing", monkeypatch)
    path = bench.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert "| covariance | data | complete ms / iter | marginalize ms / iter |" in text
    assert "| full |" in text and "| diag |" in text
    assert (tmp_path / "bench_missing.json").exists()


def test_bench_stream_quick_writes_tables(tmp_path, monkeypatch):
    bench = _import_benchmark("bench_stream", monkeypatch)
    path = bench.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert "# W5: data beyond memory (streamed EM from disk)" in text
    assert "| N | streamed s / iter | (a) read once (s) |" in text
    assert "| rows | baseline VmHWM (MiB) | peak VmHWM (MiB) |" in text
    assert (tmp_path / "bench_stream.json").exists()
