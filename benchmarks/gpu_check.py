"""Accelerator check: scikit-learn agreement, float32 far from the origin, W1-W4 timings.

Runs on whatever device JAX finds first (``jax.devices()[0]``): full sizes on a GPU or
TPU, tiny sizes on the CPU or with ``--quick`` (a smoke run for CI, well under a minute).
Run it by hand on an accelerator machine; it is not part of ``run_all``. The timings of
W1, W1d, W2, W3 and W4 come with the device's peak memory.

Checks (the references come from the same run, nothing is hard-coded):

* agreement: ``jaxgmm.GaussianMixture`` and ``sklearn.mixture.GaussianMixture`` fitted
  on the same well-separated data from the same ``means_init`` (so both reach the same
  optimum), for the four covariance types, with jaxgmm in float32 and in float64: means,
  covariances, weights and lower bound agree with scikit-learn's float64 fit of the same
  numbers to 1e-4 (float32) and 1e-8 (float64) relative to the reference's largest
  entry (scikit-learn's own float32 fit is reported beside it, not used as reference);
* far from the origin: the same data shifted by 1e4 (unit spread), fitted in float32,
  must match a float64 fit of the same numbers to 1e-3 relative (the means relative
  to the clusters' spread, float32's own rounding of numbers near 1e4 allowed for).

Run: ``python benchmarks/gpu_check.py [--quick] [--out DIR]``. Writes ``gpu.md`` and
``gpu.json``; the exit status is non-zero when a check fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/gpu_check.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from numpy.typing import ArrayLike

from benchmarks import bench_bign, bench_em, bench_many, bench_restarts
from benchmarks._common import (
    device_peak_mib,
    diag_flops,
    full_flops,
    make_blobs,
    markdown_table,
    publish,
    report_heading,
    start_run,
)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
QUANTITIES = ("means", "covariances", "weights", "lower_bound")
AGREEMENT_RTOL = {"float32": 1e-4, "float64": 1e-8}
FAR_OFFSET = 1e4
FAR_RTOL = 1e-3
CHECK_MAX_ITER = 100  # tol 0: both libraries run exactly this many EM iterations
SEPARATION = 8.0  # distance of every cluster centre from the origin, in unit spreads

# Timing workloads at accelerator sizes, run from the smallest device footprint to the
# largest (see run_timings). W1/W1d are timed by bench_em.measure_jaxgmm, W2 by
# bench_restarts.run and W3 by bench_many.run (with these keyword arguments), W4 by
# bench_bign.measure.
TIMINGS = {
    "W2": dict(n=2_000, d=2, k=4, n_init=256, rounds=5),
    "W3": dict(b=1_000, n=500, d=2, k=3, rounds=5, sk_models=1_000),
    "W1": dict(n=100_000, d=16, k=16, cov="full", a=2, b=12, repeats=10),
    "W1d": dict(n=1_000_000, d=32, k=32, cov="diag", a=1, b=5, repeats=5),
    "W4": dict(n=10_000_000, d=16, k=16, a=1, b=3, repeats=3),
}
# Tiny sizes (CPU, --quick), as changes to TIMINGS: few compilations (a and b share a
# history bucket, so one program each; W4 takes W1's shapes and reuses its program).
_SMALL_EM = dict(d=4, k=3, a=3, b=4, repeats=1)
TINY = {
    "W2": dict(n=500, k=3, n_init=4, rounds=1),
    "W3": dict(b=8, n=100, rounds=1, sk_models=8),
    "W1": dict(_SMALL_EM, n=2_000),
    "W1d": dict(_SMALL_EM, n=4_000, d=8, k=4),
    "W4": dict(_SMALL_EM, n=2_000),
}
CHECK_SIZES = {"accelerator": dict(n=20_000, d=4, k=4), "tiny": dict(n=600, d=3, k=3)}


def separated_blobs(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float64 points of k clusters SEPARATION apart from the origin, and the centres.

    Centre j lies on axis j (so ``k <= d``) and draws a share of the points proportional
    to j + 1; each cluster has its own full covariance of about unit scale, so the four
    covariance types reach four different optima.
    """
    if k > d:
        raise ValueError(f"separated_blobs needs k <= d, got k={k}, d={d}")
    rng = np.random.default_rng(seed)
    centres = SEPARATION * np.eye(k, d)
    mixing = np.eye(d) + rng.normal(scale=0.2, size=(k, d, d))
    labels = rng.choice(k, size=n, p=np.arange(1, k + 1) / (k * (k + 1) / 2))
    X = np.einsum("nd,nde->ne", rng.standard_normal((n, d)), mixing[labels]) + centres[labels]
    return X, centres


def rel_error(actual: ArrayLike, reference: ArrayLike, scale: float | None = None) -> float:
    """max |actual - reference| over ``scale`` (default: the reference's largest entry)."""
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    scale = float(np.max(np.abs(reference))) if scale is None else scale
    return float(np.max(np.abs(actual - reference))) / scale


def fitted(model: Any) -> dict:
    """Means, covariances, weights and lower bound of a fitted estimator (either library)."""
    return {
        "means": model.means_,
        "covariances": model.covariances_,
        "weights": model.weights_,
        "lower_bound": model.lower_bound_,
        "dtype": str(model.means_.dtype),
    }


def errors_against(ours: dict, ref: dict, means_scale: float | None = None) -> dict:
    """rel_error of each fitted quantity of ``ours`` against ``ref``."""
    return {
        name: rel_error(ours[name], ref[name], means_scale if name == "means" else None)
        for name in QUANTITIES
    }


def fit_model(estimator: type, X: np.ndarray, means_init: np.ndarray, covariance_type: str) -> dict:
    """Fit ``estimator`` (either library's GaussianMixture) on X from ``means_init``.

    ``tol`` 0, so both libraries run exactly CHECK_MAX_ITER EM iterations; the other
    initial parameters come from each library's own k-means.

    Returns:
        The :func:`fitted` quantities.
    """
    model = estimator(
        len(means_init),
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=CHECK_MAX_ITER,
        means_init=means_init.astype(X.dtype),
        random_state=0,
    )
    return fitted(model.fit(X))


@contextlib.contextmanager
def x64_enabled() -> Iterator[None]:
    """JAX's 64-bit types on (float64 fits), restored to their previous setting after."""
    import jax

    before = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def agreement_checks(n: int, d: int, k: int) -> list[dict]:
    """jaxgmm vs scikit-learn, four covariance types, float32 and float64.

    The reference is scikit-learn in float64 on the same numbers (the float32 data cast
    up): scikit-learn's own float32 fit is no reference, its tied and diagonal
    covariances (E[x²] - E[x]²) lose digits to cancellation. Its error is recorded too.
    """
    from sklearn.mixture import GaussianMixture as SklearnGM

    import jaxgmm

    X, centres = separated_blobs(n, d, k)
    checks = []
    for dtype, rtol in AGREEMENT_RTOL.items():
        Xd = X.astype(dtype)
        for covariance_type in COVARIANCE_TYPES:
            ours = fit_model(jaxgmm.GaussianMixture, Xd, centres, covariance_type)
            ref = fit_model(SklearnGM, Xd.astype(np.float64), centres, covariance_type)
            errors = errors_against(ours, ref)
            check = {
                "check": f"scikit-learn agreement, {covariance_type}",
                "dtype": dtype,
                "computed_in": ours["dtype"],
                "reference": f"scikit-learn {ref['dtype']}",
                "errors": errors,
                "tolerances": dict.fromkeys(errors, rtol),
            }
            if Xd.dtype != np.float64:  # scikit-learn's own fit in this dtype, for scale
                theirs = fit_model(SklearnGM, Xd, centres, covariance_type)
                check["sklearn_same_dtype_error"] = max(errors_against(theirs, ref).values())
            checks.append(check)
    return checks


def far_from_origin_check(n: int, d: int, k: int) -> dict:
    """float32 fit of data 1e4 from the origin vs a float64 fit of the same numbers."""
    X, centres = separated_blobs(n, d, k)
    X32 = (X + FAR_OFFSET).astype(np.float32)
    import jaxgmm

    means_init = centres + FAR_OFFSET
    ours = fit_model(jaxgmm.GaussianMixture, X32, means_init, "full")
    ref = fit_model(jaxgmm.GaussianMixture, X32.astype(np.float64), means_init, "full")
    spread = float(np.sqrt(np.max(np.diagonal(ref["covariances"], axis1=-2, axis2=-1))))
    errors = errors_against(ours, ref, means_scale=spread)
    # float32 numbers near the means are this far apart: the fitted means are rounded
    # to that grid, whatever the fit's own accuracy.
    rounding = 0.5 * float(np.spacing(np.float32(np.max(np.abs(ref["means"])))))
    tolerances = dict.fromkeys(errors, FAR_RTOL)
    tolerances["means"] = FAR_RTOL + rounding / spread
    return {
        "check": f"far from the origin (offset {FAR_OFFSET:g}, spread {spread:.2f}), full",
        "dtype": "float32",
        "computed_in": ours["dtype"],
        "reference": f"jaxgmm {ref['dtype']}",
        "errors": errors,
        "tolerances": tolerances,
        "means_error_unit": "the clusters' spread",
        "float32_rounding_of_means": rounding,
    }


def run_checks(sizes: dict) -> list[dict]:
    """All numerical checks, each with ``passed`` set."""
    with x64_enabled():
        checks = [*agreement_checks(**sizes), far_from_origin_check(**sizes)]
    for c in checks:
        c["passed"] = c["computed_in"] == c["dtype"] and all(
            c["errors"][q] <= c["tolerances"][q] for q in QUANTITIES
        )
    return checks


def time_workload(name: str, spec: dict) -> dict:
    """One timing workload, reusing the benchmark scripts' own measurement functions."""
    if name in ("W1", "W1d"):
        X = make_blobs(spec["n"], spec["d"], spec["k"], seed=1)
        flops = (full_flops if spec["cov"] == "full" else diag_flops)(
            spec["n"], spec["k"], spec["d"]
        )
        r = bench_em.measure_jaxgmm(
            X, spec["k"], spec["cov"], flops, spec["a"], spec["b"], spec["repeats"]
        )
        return {**r, "fit_s": r["t_b_s"], "flops": flops}
    if name == "W2":
        r = bench_restarts.run(**spec)
        return {**r, "fit_s": r["jaxgmm_s"], "compile_s": r["jaxgmm_compile_s"]}
    if name == "W3":
        r = bench_many.run(**spec)
        return {**r, "fit_s": r["jaxgmm_s"], "compile_s": r["jaxgmm_compile_s"]}
    r = bench_bign.measure(spec)  # W4, in this process
    r["ratio_to_floor"] = r["per_iter_s"] / r["floor_s"]
    return {**r, "fit_s": r["t_b_s"], "compile_s": max(r["first_call_s"] - r["t_b_s"], 0.0)}


def run_timings(specs: dict) -> dict:
    """Time every workload in order; each result gets its device peak memory.

    The allocator's peak cannot be reset, so a workload's own peak is known only when
    it raised the process's peak (``device_peak_mib``); otherwise it is at most the
    earlier peak (``device_peak_at_most``). Hence the order, smallest footprint first.
    """
    results = {}
    for name, spec in specs.items():
        print(f"[{name}] ...", flush=True)
        before, start = device_peak_mib(), time.perf_counter()
        r = time_workload(name, spec)
        after = device_peak_mib()
        r["wall_s"] = time.perf_counter() - start
        r["device_peak_mib"] = after
        r["device_peak_at_most"] = after is not None and before is not None and after <= before
        results[name] = r
    return results


def describe(name: str, spec: dict) -> str:
    """The workload's shape in words."""
    if name == "W2":
        return f"full, N={spec['n']:,}, D={spec['d']}, K={spec['k']}, n_init={spec['n_init']}"
    if name == "W3":
        return f"{spec['b']:,} models of N={spec['n']}, D={spec['d']}, K={spec['k']}, full"
    cov = spec.get("cov", "full")
    return f"{cov}, N={spec['n']:,}, D={spec['d']}, K={spec['k']}"


def memory_cell(r: dict) -> str:
    """Device peak memory for the table: MiB, '≤ MiB' (no new peak), or 'n/a'."""
    peak = r["device_peak_mib"]
    if peak is None:
        return "n/a"
    return ("≤ " if r["device_peak_at_most"] else "") + f"{peak:,.0f}"


def check_rows(checks: list[dict]) -> list[list]:
    """One table row per check: errors, tolerances and PASS/FAIL."""
    rows = []
    for c in checks:
        e, t = c["errors"], c["tolerances"]
        tol = f"{t['weights']:.0e}"
        if t["means"] != t["weights"]:
            tol += f" (means {t['means']:.1e})"
        rows.append(
            [
                c["check"],
                c["dtype"],
                c["reference"],
                *(f"{e[q]:.1e}" for q in QUANTITIES),
                tol,
                "PASS" if c["passed"] else "**FAIL**",
                c.get("sklearn_same_dtype_error"),
            ]
        )
    return rows


def timing_rows(specs: dict, timings: dict) -> list[list]:
    """One table row per timing workload."""
    rows = []
    for name, r in timings.items():
        per_iter = r.get("per_iter_s")
        speedup = r.get("sklearn32_speedup", r.get("sklearn_speedup"))
        rows.append(
            [
                name,
                describe(name, specs[name]),
                None if per_iter is None else 1e3 * per_iter,
                1e3 * r["fit_s"],
                r.get("ratio_to_floor") if per_iter else None,
                r["compile_s"],
                speedup,
                memory_cell(r),
                r["wall_s"],
            ]
        )
    return rows


def render(info: dict, device: dict, specs: dict, checks: list, timings: dict, quick: bool) -> str:
    """The Markdown report."""
    n_failed = sum(not c["passed"] for c in checks)
    check = CHECK_SIZES[device["sizes"]]
    lines = [
        *report_heading(
            f"# Accelerator check: {device['kind']} ({device['platform']})", info, quick
        ),
        f"Device: {device['kind']}, platform {device['platform']}, {device['count']} "
        f"device(s); JAX {device['jax']}, jaxlib {device['jaxlib']}; sizes: "
        f"{device['sizes']}. The run took {device['total_s']:.0f} s (checks "
        f"{device['checks_s']:.0f} s).",
        "",
        "## Checks",
        "",
        "Errors are max |jaxgmm − reference| over the reference's largest entry (means "
        "far from the origin: over the clusters' spread). Agreement: well-separated data "
        f"(N={check['n']:,}, D={check['d']}, K={check['k']}, unequal weights), both "
        f"libraries from the same `means_init`, `tol` 0 and {CHECK_MAX_ITER} EM "
        "iterations, so both reach the same optimum; the reference is scikit-learn in "
        "float64 on the same numbers (the data rounded to the checked dtype). The last "
        "column is scikit-learn's own fit in float32 against that reference, for scale: "
        "its tied and diagonal covariances (E[x²] − E[x]²) lose digits to cancellation. "
        f"Far from the origin: the same data + {FAR_OFFSET:g}, against jaxgmm's float64 "
        "fit of the same numbers; the means' tolerance adds half float32's spacing at "
        "the means (they are rounded to it).",
        "",
        markdown_table(
            [
                "check",
                "dtype",
                "reference",
                "means",
                "covariances",
                "weights",
                "lower bound",
                "tolerance",
                "result",
                "scikit-learn in dtype",
            ],
            check_rows(checks),
        ),
        "",
        f"**{'All checks passed' if not n_failed else f'{n_failed} check(s) FAILED'}** "
        f"({len(checks) - n_failed} of {len(checks)}).",
        "",
        "## Timings (float32)",
        "",
        "jaxgmm only, measured as in the benchmark scripts (`bench_em`, `bench_restarts`, "
        "`bench_many`, `bench_bign`): *ms / iter* from fits with two `max_iter` (tol 0); "
        "*ms per fit* is the longer of those fits (W1, W1d, W4) or the whole fit with its "
        "default tol (W2: tol 1e-3, W3: all models); *× floor*: ms / iter over the time "
        "of JAX's default-precision float32 2048² matmul for the same flops (TF32 on "
        "recent NVIDIA GPUs, while jaxgmm runs at full float32 precision); compile: first "
        "call minus a steady call; *× scikit-learn*: scikit-learn float32 on the host CPU "
        "(one thread) over jaxgmm. Device peak memory: the allocator's `peak_bytes_in_use` "
        "after the workload; the peak cannot be reset, so the workloads run from the "
        "smallest footprint up and '≤' marks one that set no new peak (n/a: the backend "
        "keeps no statistics, as on the CPU)."
        + (
            " Tiny sizes: W1, W1d and W4's two `max_iter` share one compiled program, "
            "so their compile column reads about 0."
            if device["sizes"] == "tiny"
            else ""
        ),
        "",
        markdown_table(
            [
                "workload",
                "shape",
                "ms / iter",
                "ms per fit",
                "× floor",
                "compile (s)",
                "× scikit-learn",
                "device peak (MiB)",
                "wall (s)",
            ],
            timing_rows(specs, timings),
        ),
    ]
    return "\n".join(lines)


def device_info(sizes: str) -> dict:
    """JAX's first device: kind, platform, count, JAX versions, the sizes chosen."""
    import jax
    import jaxlib

    first = jax.devices()[0]
    return {
        "kind": first.device_kind,
        "platform": first.platform,
        "count": len(jax.devices()),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "sizes": sizes,
    }


def main(argv=None) -> Path:
    """Run the checks and timings; returns the Markdown path, exits 1 if a check failed."""
    # Allocate on demand: the peak then reads what the workloads use, and other
    # processes can share the device (takes effect only before JAX starts a backend).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    args, info = start_run(__doc__, argv)
    import jax

    accelerator = jax.devices()[0].platform != "cpu"
    sizes = "accelerator" if accelerator and not args.quick else "tiny"
    device = device_info(sizes)
    specs = {
        name: {**spec, **(TINY[name] if sizes == "tiny" else {})} for name, spec in TIMINGS.items()
    }
    start = time.perf_counter()
    timings = run_timings(specs)
    print("[checks] ...", flush=True)
    checks_start = time.perf_counter()
    checks = run_checks(CHECK_SIZES[sizes])
    device["checks_s"] = time.perf_counter() - checks_start
    device["total_s"] = time.perf_counter() - start
    markdown = render(info, device, specs, checks, timings, args.quick)
    data = {"machine": info, "device": device, "checks": checks, "timings": timings}
    path = publish("gpu", markdown, data, args.out)
    failed = [c["check"] + " " + c["dtype"] for c in checks if not c["passed"]]
    if failed:
        raise SystemExit(f"gpu_check: {len(failed)} check(s) failed: {'; '.join(failed)}")
    return path


if __name__ == "__main__":
    main()
