"""Compile once: a loop of estimator fits on data sets of varying size (W8), and
scikit-learn's gallery grid search "Gaussian Mixture Model Selection", in fresh processes.

1. **W8**: 200 data sets with row counts drawn log-uniformly from 500-5,000 (fixed
   seed; D = 4, three Gaussian blobs each, float64 as numpy makes them), one
   ``GaussianMixture(3, random_state=0).fit(X)`` each: jaxgmm's estimator against
   scikit-learn's. Every measurement is a fresh Python process: jaxgmm *cold* with the
   persistent compilation cache pointed at an empty folder
   (``JAXGMM_COMPILATION_CACHE=<folder>``) and with it disabled
   (``JAXGMM_COMPILATION_CACHE=0``), then *warm* processes that find that folder filled,
   interleaved with scikit-learn processes. XLA compilations are counted with JAX's
   monitoring events, jaxgmm's own programs separately from JAX's small helper programs.
2. **Gallery grid search**: ``GridSearchCV`` over ``n_components`` 1-6 and the four
   covariance types with a BIC scorer and 5-fold CV on the example's 1,000 points,
   jaxgmm's class (cold, then warm processes) against scikit-learn's.

Run: ``python -m benchmarks.bench_compile_loop [--quick] [--out DIR]``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import markdown_table, publish, report_heading, run_child, start_run

ROOT = Path(__file__).resolve().parents[1]

# One fresh process per measurement. It prints one JSON line: wall time of the work,
# import time, and every backend-compile event (program name, seconds, whether the
# program came from the persistent cache). JAX records the event around its
# compile-or-load-from-cache step; the cache-hit event fires inside that step, just
# before it, so a flag pairs them. The loop also writes one "[fit] i rows seconds
# compiled-so-far" line per fit to stderr, so a process that dies part-way (e.g. XLA
# running out of memory mappings after hundreds of compiled programs) still tells how
# far it got.
_CHILD = textwrap.dedent(
    """
    import contextlib, json, sys, time
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, spec["root"])
    t_import = time.perf_counter()
    import numpy as np
    events, hit = [], [False]
    if spec["impl"] == "jaxgmm":
        from jax import monitoring

        def on_event(name, **kw):
            if name == "/jax/compilation_cache/cache_hits":
                hit[0] = True

        def on_duration(name, secs, **kw):
            if name == "/jax/core/compile/backend_compile_duration":
                events.append([str(kw.get("fun_name", "?")), secs, hit[0]])
                hit[0] = False
            elif name == "/jaxgmm/program_cache/load_duration":  # jaxgmm's own store
                events.append([str(kw.get("fun_name", "?")), secs, True])

        monitoring.register_event_listener(on_event)
        monitoring.register_event_duration_secs_listener(on_duration)
        import jaxgmm
        GaussianMixture = jaxgmm.GaussianMixture
    else:
        from sklearn.mixture import GaussianMixture
    from benchmarks._common import make_blobs, quiet_sklearn, single_threaded_blas
    quiet_sklearn()
    threads = single_threaded_blas if spec["impl"] == "sklearn" else contextlib.nullcontext
    import_s = time.perf_counter() - t_import
    out = dict(import_s=import_s)
    if spec["task"] == "loop":
        data = [make_blobs(n, spec["d"], spec["k"], seed=1_000 + i, dtype=np.float64)
                for i, n in enumerate(spec["sizes"])]
        before = len(events)
        fit_s = []
        with threads():
            start = time.perf_counter()
            for X in data:
                t0 = time.perf_counter()
                GaussianMixture(spec["k"], random_state=0).fit(X)
                fit_s.append(time.perf_counter() - t0)
                compiled = sum(not e[2] for e in events[before:])
                print(f"[fit] {len(fit_s)} {X.shape[0]} {fit_s[-1]:.4f} {compiled}",
                      file=sys.stderr, flush=True)
            out["wall_s"] = time.perf_counter() - start
        out["fit_s"] = fit_s
    else:
        from sklearn.model_selection import GridSearchCV
        rng = np.random.RandomState(0)
        n = spec["n_per_component"]
        C = np.array([[0.0, -0.1], [1.7, 0.4]])
        X = np.concatenate([rng.randn(n, 2) @ C, 0.7 * rng.randn(n, 2) + np.array([-4, 1])])

        def gmm_bic_score(estimator, X):
            return -estimator.bic(X)

        search = GridSearchCV(GaussianMixture(), param_grid=spec["grid"],
                              scoring=gmm_bic_score, cv=spec["cv"])
        before = len(events)
        with threads():
            start = time.perf_counter()
            search.fit(X)
            out["wall_s"] = time.perf_counter() - start
        out["best_params"] = search.best_params_
        out["best_score"] = float(search.best_score_)
    out["events"] = events[before:]
    jitted = set()
    for name, module in list(sys.modules.items()):
        if name == "jaxgmm" or name.startswith("jaxgmm."):
            for obj in list(vars(module).values()):
                wrapped = getattr(obj, "__wrapped__", None)
                if wrapped is not None and hasattr(obj, "lower"):
                    jitted.add(getattr(wrapped, "__name__", "?"))
    out["jaxgmm_jitted"] = sorted(jitted)
    print(json.dumps(out))
    """
)


def child(spec: dict, impl: str, cache: str | None) -> dict:
    """One measurement in a fresh process; ``cache`` is the JAXGMM_COMPILATION_CACHE value."""
    env = dict(os.environ)
    for var in ("JAXGMM_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(var, None)
    if cache is not None:
        env["JAXGMM_COMPILATION_CACHE"] = cache
    try:
        result = run_child(_CHILD, [json.dumps({**spec, "impl": impl})], env=env, timeout=7_200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return crashed(err)
    return {**result, **count_programs(result)}


def crashed(err: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> dict:
    """What a child that died or overran left: fits done, their seconds, its last error."""
    stderr = err.stderr or ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    lines = stderr.splitlines()
    progress = [line.split() for line in lines if line.startswith("[fit] ")]
    other = [line for line in lines if line.strip() and not line.startswith("[fit] ")]
    timed_out = isinstance(err, subprocess.TimeoutExpired)
    return {
        "failed": True,
        "returncode": "timeout" if timed_out else err.returncode,
        "fits_done": len(progress),
        "partial_s": sum(float(p[3]) for p in progress),
        "compiled_all_partial": int(progress[-1][4]) if progress else None,
        "error": other[-1] if other else "",
        "stderr_tail": other[-20:],
        "wall_s": None,
        "import_s": None,
    }


def ok(run: dict) -> bool:
    """The child process finished."""
    return not run.get("failed", False)


def count_programs(result: dict) -> dict:
    """XLA compilations, cache loads and compile seconds of one child, jaxgmm's apart.

    jaxgmm's programs are those of the ``jax.jit`` functions defined in jaxgmm's modules
    (found in the child after the work); its *fit* programs are those whose function
    name contains "fit" (``fit_compiled``, ``fit_many_compiled``), the others are its
    small helpers (e.g. the parameter check); the rest are JAX's own small programs
    (dtype conversions, PRNG seeding, ...).
    """
    own = set(result.get("jaxgmm_jitted", []))
    compiled = [e for e in result["events"] if not e[2]]
    loaded = [e for e in result["events"] if e[2]]

    def is_own(event: list) -> bool:
        match = re.fullmatch(r"jit\((.*)\)", event[0])
        return (match.group(1) if match else event[0]) in own

    def is_fit(event: list) -> bool:
        return is_own(event) and "fit" in event[0]

    compile_s = sum(e[1] for e in compiled)
    own_compiled = [e for e in compiled if is_own(e)]
    own_s = sum(e[1] for e in own_compiled)
    return {
        "compiled_all": len(compiled),
        "compiled_fit": sum(map(is_fit, compiled)),
        "compiled_jaxgmm": sum(map(is_own, compiled)),
        "loaded_jaxgmm": sum(map(is_own, loaded)),
        "loaded_all": len(loaded),
        "compile_s": compile_s,
        "compile_s_per_program": compile_s / len(compiled) if compiled else None,
        "compile_s_per_jaxgmm_program": own_s / len(own_compiled) if own_compiled else None,
        "compiled_by_name": {
            name: sum(1 for e in compiled if e[0] == name) for name in {e[0] for e in compiled}
        },
    }


def measure(spec: dict, rounds: int, no_cache: bool) -> dict:
    """jaxgmm cold (empty cache; cache disabled), then warm jaxgmm / scikit-learn rounds."""
    out: dict = {"spec": spec, "warm": [], "sklearn": []}
    with tempfile.TemporaryDirectory(prefix="jaxgmm-cache-") as folder:
        print(f"  jaxgmm cold, empty cache {folder} ...", flush=True)
        out["cold"] = child(spec, "jaxgmm", folder)
        if no_cache:
            print("  jaxgmm cold, cache disabled ...", flush=True)
            out["no_cache"] = child(spec, "jaxgmm", "0")
        for i in range(rounds):
            print(f"  round {i + 1}/{rounds}: jaxgmm warm, scikit-learn ...", flush=True)
            out["warm"].append(child(spec, "jaxgmm", folder))
            out["sklearn"].append(child(spec, "sklearn", None))
    warm = [r["wall_s"] for r in out["warm"] if ok(r)]
    sk = [r["wall_s"] for r in out["sklearn"] if ok(r)]
    out["warm_s"] = float(np.median(warm)) if warm else None
    out["sklearn_s"] = float(np.median(sk)) if sk else None
    # Per-round ratios, over the rounds where both processes finished.
    pairs = np.array(
        [
            (w["wall_s"], s["wall_s"])
            for w, s in zip(out["warm"], out["sklearn"], strict=True)
            if ok(w) and ok(s)
        ]
    ).reshape(-1, 2)
    out["warm_speedup"] = float(np.median(pairs[:, 1] / pairs[:, 0])) if len(pairs) else None
    out["warm_over_sklearn"] = float(np.median(pairs[:, 0] / pairs[:, 1])) if len(pairs) else None
    finished = ok(out["cold"]) and out["sklearn_s"]
    out["cold_over_sklearn"] = out["cold"]["wall_s"] / out["sklearn_s"] if finished else None
    return out


def loop_sizes(count: int, low: int, high: int, seed: int = 8) -> list[int]:
    """``count`` row counts drawn log-uniformly from [low, high] with a fixed seed."""
    rng = np.random.default_rng(seed)
    return [int(n) for n in np.exp(rng.uniform(np.log(low), np.log(high), size=count))]


def status(ok: bool) -> str:
    """'met' or 'not met'."""
    return "met" if ok else "not met"


def process_row(label: str, r: dict, n_fits: int | None = None) -> list:
    """One table row of a child process's wall time and program counts."""
    if not ok(r):
        done = r["fits_done"]
        row = [label, f"crashed after {done} fits ({r['partial_s']:.0f} s)" if done else "crashed"]
        if n_fits is not None:
            row.append(1e3 * r["partial_s"] / done if done else None)
        return row + [None, None, r["compiled_all_partial"]] + [None] * 5
    row = [label, r["wall_s"]]
    if n_fits is not None:
        row.append(1e3 * r["wall_s"] / n_fits)
    if "compiled_all" not in r or label.startswith("scikit-learn"):
        return row + [None] * 7 + [r["import_s"]]
    return row + [
        r["compiled_fit"],
        r["compiled_jaxgmm"],
        r["compiled_all"],
        r["loaded_jaxgmm"],
        r["compile_s"],
        r["compile_s_per_jaxgmm_program"],
        r["compile_s_per_program"],
        r["import_s"],
    ]


def median_child(runs: list[dict]) -> dict:
    """The finished run with the median wall time (lower middle one); a failed one if none."""
    ordered = sorted((r for r in runs if ok(r)), key=lambda r: r["wall_s"])
    return ordered[(len(ordered) - 1) // 2] if ordered else runs[0]


def crash_notes(runs: list[tuple[str, dict]]) -> list[str]:
    """Markdown lines naming the child processes that died, with their last error line."""
    failed = [(label, r) for label, r in runs if not ok(r)]
    if not failed:
        return []
    lines = ["", "Processes that did not finish:", ""]
    for label, r in failed:
        code = r["returncode"]
        how = f"killed by signal {-code}" if isinstance(code, int) and code < 0 else code
        error = f"`{r['error']}`" if r["error"] else "(none)"
        lines.append(f"* {label}: exit status {how}; last error line: {error}")
    return lines


def seconds(r: dict) -> str:
    """A finished child's wall time, or how far a failed one got."""
    if ok(r):
        return f"{r['wall_s']:.1f} s"
    return f"crashed after {r['fits_done']} fits ({r['partial_s']:.0f} s)"


_PROGRAM_COLUMNS = [
    "fit programs compiled",
    "jaxgmm programs compiled",
    "all programs compiled",
    "jaxgmm programs loaded from cache",
    "XLA compile (s)",
    "s / jaxgmm program",
    "s / program",
    "import (s)",
]


def render_loop(r: dict) -> list[str]:
    """The W8 section of the report."""
    spec = r["spec"]
    n = len(spec["sizes"])
    rounds = len(r["warm"])
    rows = [process_row("jaxgmm cold: empty cache", r["cold"], n)]
    if "no_cache" in r:
        rows.append(process_row("jaxgmm cold: cache disabled (`=0`)", r["no_cache"], n))
    rows.append(
        process_row(f"jaxgmm warm: cache filled (median of {rounds})", median_child(r["warm"]), n)
    )
    rows.append(process_row(f"scikit-learn (median of {rounds})", median_child(r["sklearn"]), n))
    colds = [r["cold"]] + ([r["no_cache"]] if "no_cache" in r else [])
    finished = [c for c in colds if ok(c)]
    if finished:
        fit_programs = max(c["compiled_fit"] for c in finished)
        programs = (
            f"{fit_programs} fit programs ({max(c['compiled_jaxgmm'] for c in finished)} of "
            f"jaxgmm's, {max(c['compiled_all'] for c in finished)} in all)"
        )
        programs_ok = fit_programs <= 6 and len(finished) == len(colds)
    else:
        programs = (
            f"unknown: crashed after {colds[0]['fits_done']} fits, "
            f"{colds[0]['compiled_all_partial']} programs compiled by then"
        )
        programs_ok = False
    if r["warm_speedup"] is None:
        warm_measured = "no warm loop finished"
    else:
        warm_measured = f"{r['warm_speedup']:.2f}× ({r['warm_s']:.2f} s vs {r['sklearn_s']:.2f} s)"
    cold_measured = seconds(r["cold"])
    if r["cold_over_sklearn"] is not None:
        cold_measured += f" = {r['cold_over_sklearn']:.1f}× scikit-learn"
    if "no_cache" in r:
        cold_measured += f"; cache disabled {seconds(r['no_cache'])}"
    targets = [
        [
            "at most 6 compiled fit programs for the whole loop (cold)",
            programs,
            status(programs_ok),
        ],
        [
            "warm loop ≥ 3× faster than scikit-learn's",
            warm_measured,
            status(r["warm_speedup"] is not None and r["warm_speedup"] >= 3),
        ],
        ["cold loop (reported)", cold_measured, "–"],
    ]
    labelled = [("jaxgmm cold, empty cache", r["cold"])]
    labelled += [("jaxgmm cold, cache disabled", r["no_cache"])] if "no_cache" in r else []
    labelled += [(f"jaxgmm warm, round {i + 1}", w) for i, w in enumerate(r["warm"])]
    labelled += [(f"scikit-learn, round {i + 1}", x) for i, x in enumerate(r["sklearn"])]
    by_name = ""
    if ok(r["cold"]):
        by_name = (
            "Programs compiled by name (cold, empty cache): "
            + ", ".join(f"`{k}` {v}" for k, v in sorted(r["cold"]["compiled_by_name"].items()))
            + "."
        )
    return [
        "## W8: a loop of fits on data sets of varying size",
        "",
        f"{n} data sets, row counts drawn log-uniformly from {min(spec['sizes']):,} to "
        f"{max(spec['sizes']):,} (fixed seed; {len(set(spec['sizes']))} distinct), "
        f"D={spec['d']}, {spec['k']} Gaussian blobs each, float64; "
        f"`GaussianMixture({spec['k']}, random_state=0).fit(X)` for each, default options. "
        "Each row is one fresh Python process; *loop* is the wall time of all fits "
        "(data made before, imports excluded and reported apart). *Cold*: the persistent "
        "compilation cache points at an empty folder, or is disabled; *warm*: a later "
        "process finds that folder filled. Warm and scikit-learn processes alternate "
        f"({rounds} rounds); the speed-up is the median of the rounds' ratios. "
        "*Programs compiled* count XLA compilations during the loop (JAX's "
        "`/jax/core/compile/backend_compile_duration` events that were not "
        "`/jax/compilation_cache/cache_hits`); *loaded from cache* counts JAX's cache "
        "hits and the programs jaxgmm loads whole from its own store (its "
        "`/jaxgmm/program_cache/load_duration` events: no tracing, no lowering); "
        "*jaxgmm programs* are those of jaxgmm's "
        "own jitted functions, *fit programs* those of them named `*fit*` (the others are "
        "small helpers such as the parameter check), the rest JAX's small helper "
        "programs; *XLA compile* sums the compilations' backend-compile seconds, per "
        "jaxgmm program and per program. "
        "scikit-learn runs with "
        "one BLAS/OpenMP thread (threadpoolctl, where installed), its fastest setting for "
        "problems this small.",
        "",
        markdown_table(["process", "loop (s)", "ms / fit", *_PROGRAM_COLUMNS], rows),
        "",
        markdown_table(["target", "measured", "status"], targets),
        *crash_notes(labelled),
        *(["", by_name] if by_name else []),
    ]


def render_grid(r: dict) -> list[str]:
    """The gallery grid-search section of the report."""
    spec = r["spec"]
    rounds = len(r["warm"])
    warm, sk = median_child(r["warm"]), median_child(r["sklearn"])

    def params(run: dict) -> str:
        if not ok(run):
            return "–"
        return ", ".join(f"{k}={v}" for k, v in sorted(run["best_params"].items()))

    rows = []
    for label, run, ratio in [
        ("jaxgmm cold: empty cache", r["cold"], r["cold_over_sklearn"]),
        (f"jaxgmm warm: cache filled (median of {rounds})", warm, r["warm_over_sklearn"]),
        (f"scikit-learn (median of {rounds})", sk, 1.0),
    ]:
        row = process_row(label, run)
        best = -run["best_score"] if ok(run) else None
        rows.append([row[0], row[1], ratio, params(run), best, *row[2:]])
    runs = [r["cold"], *r["warm"], *r["sklearn"]]
    agree = all(ok(run) for run in runs) and all(
        run["best_params"] == sk["best_params"] for run in runs
    )

    def versus(value: float | None, limit: float) -> list:
        if value is None:
            return ["did not finish", status(False)]
        return [f"{value:.2f}×", status(value <= limit)]

    targets = [
        ["cold ≤ 3× scikit-learn", *versus(r["cold_over_sklearn"], 3)],
        ["warm ≤ 1× scikit-learn", *versus(r["warm_over_sklearn"], 1)],
        ["same best parameters", params(r["cold"]) + " / " + params(sk), status(agree)],
    ]
    labelled = [("jaxgmm cold, empty cache", r["cold"])]
    labelled += [(f"jaxgmm warm, round {i + 1}", w) for i, w in enumerate(r["warm"])]
    labelled += [(f"scikit-learn, round {i + 1}", x) for i, x in enumerate(r["sklearn"])]
    n_fits = len(spec["grid"]["n_components"]) * len(spec["grid"]["covariance_type"])
    return [
        "## Gallery grid search: Gaussian Mixture Model Selection",
        "",
        "scikit-learn's gallery example: `GridSearchCV(GaussianMixture(), param_grid="
        f"{{'n_components': {spec['grid']['n_components']}, 'covariance_type': "
        f"{spec['grid']['covariance_type']}}}, scoring=lambda estimator, X: "
        f"-estimator.bic(X))`, {spec['cv']}-fold CV ({n_fits * spec['cv'] + 1} fits, the "
        f"refit included), on the example's {2 * spec['n_per_component']:,} points (two "
        "components in 2-D, seed 0). Wall time of `search.fit(X)`, each row one fresh "
        "process; jaxgmm cold (empty persistent cache) then warm processes alternating "
        f"with scikit-learn's ({rounds} rounds). *× scikit-learn* is jaxgmm's time over "
        "scikit-learn's (median of the rounds' ratios for the warm row).",
        "",
        markdown_table(
            [
                "process",
                "search (s)",
                "× scikit-learn",
                "best params",
                "best mean BIC",
                *_PROGRAM_COLUMNS,
            ],
            rows,
        ),
        "",
        markdown_table(["target", "measured", "status"], targets),
        *crash_notes(labelled),
    ]


def render(info: dict, loop: dict, grid: dict, quick: bool) -> str:
    """The Markdown report."""
    lines = [
        *report_heading("# Compile once: fit loops and grid search", info, quick),
        *render_loop(loop),
        "",
        *render_grid(grid),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W8 and the gallery grid search; returns the Markdown results path."""
    args, info = start_run(__doc__, argv, fits_here=False)
    base = {"root": str(ROOT)}
    if args.quick:
        loop_spec = dict(base, task="loop", sizes=loop_sizes(2, 500, 5_000), d=4, k=3)
        grid_spec = dict(
            base,
            task="grid",
            n_per_component=500,
            cv=3,
            grid={"n_components": [1, 2], "covariance_type": ["full"]},
        )
        rounds, no_cache = 1, False
    else:
        loop_spec = dict(base, task="loop", sizes=loop_sizes(200, 500, 5_000), d=4, k=3)
        grid_spec = dict(
            base,
            task="grid",
            n_per_component=500,
            cv=5,
            grid={
                "n_components": list(range(1, 7)),
                "covariance_type": ["spherical", "tied", "diag", "full"],
            },
        )
        rounds, no_cache = 3, True
    print(f"[compile_loop] W8: {len(loop_spec['sizes'])} data sets ...", flush=True)
    loop = measure(loop_spec, rounds, no_cache)
    print("[compile_loop] gallery grid search ...", flush=True)
    grid = measure(grid_spec, rounds, no_cache=False)
    markdown = render(info, loop, grid, args.quick)
    data = {"machine": info, "w8": loop, "grid": grid}
    return publish("bench_compile_loop", markdown, data, args.out)


if __name__ == "__main__":
    main()
