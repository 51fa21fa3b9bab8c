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


def measure(spec: dict) -> dict:
    """In the child process: generate the data, time the fit, record the peak RSS.

    Args:
        spec: ``n``, ``d``, ``k`` (the workload), ``a`` < ``b`` (the two ``max_iter``)
            and ``repeats``.

    Returns:
        :func:`per_iteration`'s result with the spec, peak RSS, matmul rate and floor.
    """
    X = make_blobs(spec["n"], spec["d"], spec["k"], seed=5)
    rss_data = peak_rss_mib()  # before JAX is imported
    import jax.numpy as jnp

    import jaxgmm

    Xj = jnp.asarray(X)
    del X

    def run(max_iter: int):
        return jaxgmm.fit(
            Xj, spec["k"], max_iter=max_iter, tol=0.0, init="k-means++", key=0
        ).params.means

    res = per_iteration(run, spec["a"], spec["b"], spec["repeats"])
    res.update(spec, peak_rss_mib=peak_rss_mib(), rss_after_data_mib=rss_data)
    res["matmul_gflops"] = matmul_gflops()
    flops = full_flops(spec["n"], spec["k"], spec["d"])
    res["floor_s"] = flops / (res["matmul_gflops"] * 1e9)
    res["gflops"] = flops / res["per_iter_s"] / 1e9 if res["per_iter_s"] else None
    res["data_mib"] = spec["n"] * spec["d"] * 4 / 2**20
    return res


def run(n: int, d: int, k: int, a: int, b: int, repeats: int) -> dict:
    """Run the workload in a child process; returns its measurements."""
    spec = dict(n=n, d=d, k=k, a=a, b=b, repeats=repeats)
    return call_in_child(
        "benchmarks.bench_bign", "measure", spec, env=dict(os.environ), timeout=3000
    )


def render(info: dict, r: dict, quick: bool) -> str:
    """The Markdown report."""
    rows = [
        [
            f"{r['n']:,}",
            1e3 * r["per_iter_s"],
            r["gflops"],
            r["per_iter_s"] / r["floor_s"],
            r["data_mib"],
            r["rss_after_data_mib"],
            r["peak_rss_mib"] / 1024,
        ]
    ]
    lines = [
        *report_heading("# W4: big N", info, quick),
        f"Full covariances, D={r['d']}, K={r['k']}, float32, k-means++ initialisation; "
        f"per-iteration time from fits with max_iter {r['a']} and {r['b']} (tol 0). Peak "
        "RSS is the child process's maximum resident set size, data generation and "
        "JAX included.",
        "",
        markdown_table(
            [
                "N",
                "ms / iter",
                "GFLOP/s",
                "× floor",
                "data (MiB)",
                "RSS with data only (MiB)",
                "peak RSS (GiB)",
            ],
            rows,
        ),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W4; returns the Markdown results path."""
    args, info = start_run(__doc__, argv, fits_here=False)
    if args.quick:
        r = run(50_000, 4, 3, 1, 2, 1)
    else:
        r = run(10_000_000, 16, 16, 1, 3, 2)
    markdown = render(info, r, args.quick)
    return publish("bench_bign", markdown, {"machine": info, "result": r}, args.out)


if __name__ == "__main__":
    main()
