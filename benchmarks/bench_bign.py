"""W4, big N: N = 10,000,000, D = 16, K = 16, full covariances, float32 -- time per
iteration and peak memory.

The fit runs in a fresh child process so that its peak resident set size (RSS)
belongs to this workload alone; the data (640 MB in float32) are generated in that
process in blocks, never in float64. The E-step works on row chunks, so the engine's
own memory is O(chunk * K * D + K * D^2), not O(N * K * D).

Run: ``python -m benchmarks.bench_bign [--quick] [--out DIR]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    call_in_child,
    current_rss_mib,
    full_flops,
    make_blobs,
    markdown_table,
    matmul_gflops,
    peak_rss_mib,
    per_iteration,
    publish,
    report_heading,
    start_run,
)


def _reset_peak_rss() -> bool:
    """Restart this process's peak-RSS count from its current RSS (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(spec: dict) -> dict:
    """In the child process: generate the data, time the fit, record the peak RSS.

    Args:
        spec: ``n``, ``d``, ``k`` (the workload), ``a`` < ``b`` (the two ``max_iter``),
            ``repeats``, and ``input``: ``"jax"`` (default: the rows are put on the
            device once and the NumPy copy dropped, as data made for JAX) or
            ``"numpy"`` (a NumPy array handed to every fit, which copies it to the
            device itself).

    Returns:
        :func:`per_iteration`'s result with the spec, peak RSS (whole process, and
        during the fits alone where the peak can be reset), matmul rate and floor.
    """
    X = make_blobs(spec["n"], spec["d"], spec["k"], seed=5)
    rss_data = peak_rss_mib()  # before JAX is imported
    import jax

    import jaxgmm

    if spec.get("input", "jax") == "jax":
        X = jax.block_until_ready(jax.device_put(X))
    rss_before_fits = current_rss_mib()
    peak_before_fits = peak_rss_mib()
    reset = _reset_peak_rss()

    def run(max_iter: int):
        return jaxgmm.fit(
            X, spec["k"], max_iter=max_iter, tol=0.0, init="k-means++", key=0
        ).params.means

    res = per_iteration(run, spec["a"], spec["b"], spec["repeats"])
    peak_fits = peak_rss_mib()
    res.update(
        spec,
        peak_rss_mib=max(peak_before_fits, peak_fits),
        peak_rss_fits_mib=peak_fits if reset else None,
        rss_before_fits_mib=rss_before_fits,
        rss_after_data_mib=rss_data,
    )
    res["matmul_gflops"] = matmul_gflops()
    flops = full_flops(spec["n"], spec["k"], spec["d"])
    res["floor_s"] = flops / (res["matmul_gflops"] * 1e9)
    res["gflops"] = flops / res["per_iter_s"] / 1e9 if res["per_iter_s"] else None
    res["data_mib"] = spec["n"] * spec["d"] * 4 / 2**20
    return res


def run(n: int, d: int, k: int, a: int, b: int, repeats: int, data_input: str = "jax") -> dict:
    """Run the workload in a child process; returns its measurements."""
    spec = dict(n=n, d=d, k=k, a=a, b=b, repeats=repeats, input=data_input)
    return call_in_child(
        "benchmarks.bench_bign", "measure", spec, env=dict(os.environ), timeout=3000
    )


INPUTS = {
    "jax": "JAX array (put on the device once, NumPy copy dropped)",
    "numpy": "NumPy array (each fit copies it to the device)",
}
TARGET_PEAK_GIB = 2.0


def render(info: dict, results: list[dict], quick: bool) -> str:
    """The Markdown report (one row per data input)."""

    def gib(mib):
        return None if mib is None else mib / 1024

    rows = [
        [
            f"{r['n']:,}",
            INPUTS[r["input"]],
            1e3 * r["per_iter_s"],
            r["gflops"],
            r["per_iter_s"] / r["floor_s"],
            r["data_mib"],
            r["rss_after_data_mib"],
            r["rss_before_fits_mib"],
            gib(r["peak_rss_fits_mib"]),
            gib(r["peak_rss_mib"]),
            "met" if r["peak_rss_mib"] / 1024 <= TARGET_PEAK_GIB else "NOT met",
        ]
        for r in results
    ]
    first = results[0]
    lines = [
        *report_heading("# W4: big N", info, quick),
        f"Full covariances, D={first['d']}, K={first['k']}, float32, k-means++ "
        f"initialisation; per-iteration time from fits with max_iter {first['a']} and "
        f"{first['b']} (tol 0). Each row is one child process. *Peak RSS* is the process's "
        "maximum resident set size, data generation and JAX included; *peak RSS during "
        "the fits* is the same maximum counted only from when the data are ready (Linux "
        "`clear_refs`), without the data generation's own peak. Data of 128 MiB or more "
        "are fitted unpadded (no padded copy; `jaxgmm._buckets.COPY_FREE_BYTES`). With "
        "NumPy input "
        "the device needs its own copy of the rows (XLA's CPU buffers are 64-byte "
        "aligned, NumPy's 16), so the caller's array and that copy coexist. Target: peak "
        f"RSS at most {TARGET_PEAK_GIB:g} GiB.",
        "",
        markdown_table(
            [
                "N",
                "data given as",
                "ms / iter",
                "GFLOP/s",
                "× floor",
                "data (MiB)",
                "RSS with data only (MiB)",
                "RSS before the fits (MiB)",
                "peak RSS during the fits (GiB)",
                "peak RSS (GiB)",
                "target ≤ 2 GiB",
            ],
            rows,
        ),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W4; returns the Markdown results path."""
    args, info = start_run(__doc__, argv, fits_here=False)
    size = (50_000, 4, 3, 1, 2, 1) if args.quick else (10_000_000, 16, 16, 1, 3, 2)
    results = [run(*size, data_input=data_input) for data_input in INPUTS]
    markdown = render(info, results, args.quick)
    return publish("bench_bign", markdown, {"machine": info, "results": results}, args.out)


if __name__ == "__main__":
    main()
