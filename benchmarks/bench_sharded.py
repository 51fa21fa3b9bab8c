"""W1 sharded: the W1 fit on X split by rows over 2 forced CPU devices vs on 1 device.

W1 is full covariances, N = 100,000, D = 16, K = 16, float32; both placements are
timed in the same run, in a child process whose ``XLA_FLAGS`` force 2 host devices
(``--xla_force_host_platform_device_count=2``; XLA reads it once, when JAX starts, so
this process, and the other benchmarks of ``run_all``, keep their own devices). On a
2-core machine this is not a speed target: both devices share the same 2 cores, so the
ratio measures the cost of the sharded program (per-shard padding, ``shard_map``, the
all-reduce of the statistics), not a parallel speed-up.

Run: ``python -m benchmarks.bench_sharded [--quick] [--out DIR]``. Writes
``bench_sharded.md`` and ``bench_sharded.json``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    call_in_child,
    full_flops,
    make_blobs,
    markdown_table,
    per_iteration,
    publish,
    report_heading,
    setup_jax,
    start_run,
    time_call,
)
from benchmarks.bench_em import REG_COVAR

N_DEVICES = 2
DEVICE_FLAG = "--xla_force_host_platform_device_count"
# float32 sums taken in another order (per shard, then across devices): the lower
# bounds of the two fits agree to a few float32 roundings, far below this.
LOWER_BOUND_RTOL = 1e-5
IMPLEMENTATIONS = {"unsharded": "1 device", "sharded": f"{N_DEVICES} devices (rows split)"}


def with_device_count(xla_flags: str, n_devices: int) -> str:
    """``xla_flags`` with any host device-count flag replaced by one for ``n_devices``."""
    kept = re.sub(rf"{DEVICE_FLAG}=\S*", "", xla_flags).split()
    return " ".join([*kept, f"{DEVICE_FLAG}={n_devices}"])


def fit_runner(X: Any, k: int) -> Callable[[int], Any]:
    """run(max_iter): a whole W1 fit of ``X`` (tol 0, so every fit runs max_iter iterations)."""
    import jaxgmm

    def run(max_iter: int) -> Any:
        return jaxgmm.fit(
            X, k, max_iter=max_iter, tol=0.0, reg_covar=REG_COVAR, init="k-means++", key=0
        )

    return run


def measure(spec: dict) -> dict:
    """In the child process: time both placements of X in interleaved rounds.

    Args:
        spec: ``n``, ``d``, ``k`` (the workload), ``a`` < ``b`` (the two ``max_iter``,
            chosen with the same history bucket so one program serves both),
            ``rounds`` and ``cache``.

    Returns:
        name -> per-implementation results, plus ``devices`` and ``xla_flags``.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    setup_jax(spec["cache"])
    devices = jax.devices()
    if len(devices) < N_DEVICES:
        raise RuntimeError(f"needs {N_DEVICES} devices, JAX found {devices}")
    X = make_blobs(spec["n"], spec["d"], spec["k"], seed=1)
    mesh = jax.make_mesh((N_DEVICES,), ("data",), devices=devices[:N_DEVICES])
    inputs = {
        "unsharded": jax.device_put(X, devices[0]),
        "sharded": jax.device_put(X, NamedSharding(mesh, PartitionSpec("data"))),
    }
    runs = {name: fit_runner(x, spec["k"]) for name, x in inputs.items()}
    a, b = spec["a"], spec["b"]
    first = {name: time_call(lambda run=run: run(a)) for name, run in runs.items()}
    pairs: dict[str, list] = {name: [] for name in runs}
    for _ in range(spec["rounds"]):  # the implementations in turn: load drifts cancel
        for name, run in runs.items():
            pairs[name].append(per_iteration(run, a, b, 1, warmup=False))
    out: dict = {"devices": [str(d) for d in devices], "xla_flags": os.environ.get("XLA_FLAGS")}
    for name, run in runs.items():
        t_a = float(np.median([p["t_a_s"] for p in pairs[name]]))
        t_b = float(np.median([p["t_b_s"] for p in pairs[name]]))
        result = run(b)
        out[name] = {
            "fit_s": t_b,
            "per_iter_s": max(t_b - t_a, 0.0) / (b - a),
            "compile_s": max(first[name] - t_a, 0.0),
            "first_call_s": first[name],
            "round_fit_s": [p["t_b_s"] for p in pairs[name]],
            "round_per_iter_s": [p["per_iter_s"] for p in pairs[name]],
            "lower_bound": float(result.lower_bound),
            "n_iter": int(result.n_iter),
            "means": np.asarray(result.params.means, np.float64).tolist(),
        }
    return out


def round_ratio(r: dict, key: str) -> float | None:
    """Median over rounds of sharded / unsharded ``key`` (None if a time is zero)."""
    ratios = [
        s / u
        for s, u in zip(r["sharded"][key], r["unsharded"][key], strict=True)
        if u > 0 and s > 0
    ]
    return float(np.median(ratios)) if ratios else None


def run(n: int, d: int, k: int, a: int, b: int, rounds: int, cache: bool) -> dict:
    """Run the workload in a child process with 2 forced host devices; its results."""
    spec = dict(n=n, d=d, k=k, a=a, b=b, rounds=rounds, cache=cache)
    env = {
        **os.environ,
        "XLA_FLAGS": with_device_count(os.environ.get("XLA_FLAGS", ""), N_DEVICES),
        "JAX_PLATFORMS": "cpu",  # forced host devices are CPU devices
    }
    r = call_in_child("benchmarks.bench_sharded", "measure", spec, env=env, timeout=3000)
    r.update(spec, flops=full_flops(n, k, d))
    r["fit_ratio"] = round_ratio(r, "round_fit_s")
    r["per_iter_ratio"] = round_ratio(r, "round_per_iter_s")
    lb_u, lb_s = r["unsharded"]["lower_bound"], r["sharded"]["lower_bound"]
    r["lower_bound_rel_diff"] = abs(lb_s - lb_u) / abs(lb_u)
    means_u, means_s = np.asarray(r["unsharded"]["means"]), np.asarray(r["sharded"]["means"])
    r["means_rel_diff"] = float(np.max(np.abs(means_s - means_u)) / np.max(np.abs(means_u)))
    r["same_lower_bound"] = r["lower_bound_rel_diff"] <= LOWER_BOUND_RTOL
    return r


def render(info: dict, r: dict, quick: bool) -> str:
    """The Markdown report."""
    rows = []
    for name, label in IMPLEMENTATIONS.items():
        x = r[name]
        gflops = r["flops"] / x["per_iter_s"] / 1e9 if x["per_iter_s"] > 0 else None
        ratio = (r["fit_ratio"], r["per_iter_ratio"]) if name == "sharded" else (1.0, 1.0)
        rows.append(
            [
                f"jaxgmm float32, {label}",
                1e3 * x["fit_s"],
                1e3 * x["per_iter_s"],
                gflops,
                x["compile_s"],
                ratio[0],
                ratio[1],
                x["lower_bound"],
            ]
        )
    verdict = "PASS" if r["same_lower_bound"] else "FAIL"
    lines = [
        *report_heading("# W1 sharded: rows split over 2 CPU devices", info, quick),
        f"W1's fit (full covariances, N={r['n']:,}, D={r['d']}, K={r['k']}, float32, "
        f"k-means++ from key 0, reg_covar {REG_COVAR:g}, tol 0) on X placed on one device "
        f"and on X split by rows over {N_DEVICES} devices "
        f"(`NamedSharding(jax.make_mesh(({N_DEVICES},), ('data',)), PartitionSpec('data'))`), "
        f"in one child process with `XLA_FLAGS={r['xla_flags']}`. Fits with "
        f"max_iter {r['a']} and {r['b']} (one compiled program: same history bucket) are "
        f"timed alternately, in {r['rounds']} round(s) that each time both placements "
        "in turn. "
        f"*ms per fit*: median of the max_iter {r['b']} fits; *ms / iter*: difference of "
        f"the medians / {r['b'] - r['a']}; *× 1 device*: median of the rounds' ratios "
        "(drifts in a shared machine's load cancel); compile: first call minus a steady "
        "call (excluded from the rest).",
        "",
        f"**Not a speed target on this machine:** the {N_DEVICES} forced host devices "
        f"share the same {info['cores']} CPU cores, so the ratio is the cost of the "
        "sharded program (per-shard padding, `shard_map`, the all-reduce of the "
        "statistics), not a parallel speed-up. On devices that do not share hardware the "
        "E-step's work splits between them.",
        "",
        markdown_table(
            [
                "implementation",
                "ms per fit",
                "ms / iter",
                "GFLOP/s",
                "compile (s)",
                "fit × 1 device",
                "iter × 1 device",
                "lower bound",
            ],
            rows,
        ),
        "",
        f"Same lower bound: **{verdict}** (relative difference "
        f"{r['lower_bound_rel_diff']:.2e}, tolerance {LOWER_BOUND_RTOL:g}; means differ by "
        f"{r['means_rel_diff']:.2e} of their largest entry; {r['sharded']['n_iter']} and "
        f"{r['unsharded']['n_iter']} iterations).",
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W1 sharded; returns the Markdown results path."""
    args, info = start_run(__doc__, argv, fits_here=False)
    if args.quick:
        r = run(4_000, 4, 3, 3, 4, rounds=1, cache=args.cache)
    else:  # history buckets: max_iter 17 and 32 both keep 32 entries
        r = run(100_000, 16, 16, 17, 32, rounds=5, cache=args.cache)
    markdown = render(info, r, args.quick)
    return publish("bench_sharded", markdown, {"machine": info, "result": r}, args.out)


if __name__ == "__main__":
    main()
