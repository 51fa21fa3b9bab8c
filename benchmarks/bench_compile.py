"""Compile time of a typical ``fit``, no recompilation on a second call, and the
persistent compilation cache across processes.

Each measurement runs in a fresh Python process (so nothing is compiled yet):

1. no cache: first call (trace + compile + run), second call with the same shapes
   (run only), and the number of XLA compilations the second call triggered (0 means
   no recompilation);
2. persistent cache (``JAXGMM_COMPILATION_CACHE`` set to a fresh folder): a first
   process fills the cache, a second process starts its fit from it.

Run: ``python -m benchmarks.bench_compile [--quick] [--out DIR]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import markdown_table, publish, report_heading, run_child, start_run

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    spec = json.loads(sys.argv[1])
    t_import = time.perf_counter()
    import jax, jax.numpy as jnp, numpy as np
    from jax import monitoring
    import jaxgmm
    import_s = time.perf_counter() - t_import
    compiles = []
    monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append(secs)
        if name == "/jax/core/compile/backend_compile_duration" else None
    )
    rng = np.random.default_rng(0)
    if spec["kind"] == "fit_many":
        X = rng.normal(size=(spec["b"], spec["n"], spec["d"])).astype(np.float32)
        X += 4 * rng.normal(size=(spec["b"], 1, spec["d"])).astype(np.float32)
        call = lambda: jaxgmm.fit_many(X, spec["k"]).lower_bound
    else:
        centres = 4 * rng.normal(size=(spec["k"], spec["d"]))
        X = (centres[rng.integers(0, spec["k"], spec["n"])]
             + rng.normal(size=(spec["n"], spec["d"]))).astype(np.float32)
        call = lambda: jaxgmm.fit(X, spec["k"], covariance_type=spec["cov"],
                                  n_init=spec["n_init"]).lower_bound
    def timed():
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(call())
        return time.perf_counter() - t0, time.process_time() - c0
    first, first_cpu = timed()
    n_first = len(compiles)
    second, second_cpu = timed()
    third, _ = timed()
    print(json.dumps(dict(
        import_s=import_s, first_s=first, first_cpu_s=first_cpu,
        second_s=second, third_s=third, second_cpu_s=second_cpu,
        compiles_first=n_first, compiles_second=len(compiles) - n_first,
        backend_compile_s=sum(compiles[:n_first]),
        cache=jax.config.jax_compilation_cache_dir)))
    """
)


def child(spec: dict, cache_dir: str | None) -> dict:
    """Run one measurement in a fresh process; returns its JSON result."""
    env = dict(os.environ)
    env.pop("JAXGMM_COMPILATION_CACHE", None)
    if cache_dir is not None:
        env["JAXGMM_COMPILATION_CACHE"] = cache_dir
    return run_child(_CHILD, [json.dumps(spec)], env=env, timeout=1200)


def measure(spec: dict) -> dict:
    """No-cache process, then two processes sharing a fresh persistent cache."""
    result = {"spec": spec, "no_cache": child(spec, None)}
    with tempfile.TemporaryDirectory(prefix="jaxgmm-cache-") as folder:
        result["cache_fill"] = child(spec, folder)
        result["cache_hit"] = child(spec, folder)
    return result


def describe(spec: dict) -> str:
    """A workload's one-line description."""
    if spec["kind"] == "fit_many":
        return f"fit_many: {spec['b']} × (N={spec['n']}, D={spec['d']}, K={spec['k']}), full"
    return (
        f"fit: N={spec['n']:,}, D={spec['d']}, K={spec['k']}, {spec['cov']}, "
        f"n_init={spec['n_init']}"
    )


def render(info: dict, results: list[dict], quick: bool) -> str:
    """The Markdown report."""
    rows = []
    for r in results:
        nc, hit = r["no_cache"], r["cache_hit"]
        steady = min(nc["second_s"], nc["third_s"])
        hit_steady = min(hit["second_s"], hit["third_s"])
        rows.append(
            [
                describe(r["spec"]),
                nc["first_s"] - steady,
                nc["first_cpu_s"] - nc["second_cpu_s"],
                nc["backend_compile_s"],
                steady,
                nc["compiles_second"],
                hit["first_s"] - hit_steady,
            ]
        )
    lines = [
        *report_heading("# Compile time", info, quick),
        "Fresh process per column group. *Compile* = first call − steady call (tracing, "
        "lowering and XLA compilation); *CPU* is the same in process CPU seconds (less "
        "sensitive to other load on a shared machine); *XLA* is JAX's own backend-compile "
        "timer. *Recompiles* counts XLA compilations during a second call with the same "
        "shapes. *With cache* is the compile overhead of a second process that finds the "
        "program in the persistent cache (`JAXGMM_COMPILATION_CACHE`, or "
        "`jaxgmm.compilation_cache.enable_compilation_cache()`).",
        "",
        markdown_table(
            [
                "workload (defaults: k-means init, tol 1e-3, max_iter 100)",
                "compile (s)",
                "compile CPU (s)",
                "XLA (s)",
                "steady call (s)",
                "recompiles",
                "with cache (s)",
            ],
            rows,
        ),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run the compile benchmarks; returns the Markdown results path."""
    args, info = start_run(__doc__, argv, fits_here=False)
    if args.quick:
        specs = [dict(kind="fit", n=2_000, d=4, k=3, cov="full", n_init=1)]
    else:
        specs = [
            dict(kind="fit", n=100_000, d=16, k=16, cov="full", n_init=1),
            dict(kind="fit", n=100_000, d=16, k=16, cov="diag", n_init=1),
            dict(kind="fit", n=2_000, d=2, k=4, cov="full", n_init=256),
            dict(kind="fit_many", b=1_000, n=500, d=2, k=3),
        ]
    results = []
    for spec in specs:
        print(f"[compile] {describe(spec)} ...", flush=True)
        results.append(measure(spec))
    markdown = render(info, results, args.quick)
    return publish("bench_compile", markdown, {"machine": info, "results": results}, args.out)


if __name__ == "__main__":
    main()
