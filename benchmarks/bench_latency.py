"""Prediction latency ("cheap calls"): ``predict``, ``predict_proba``, ``score_samples``
and ``score`` of a fitted ``GaussianMixture(8)`` (D = 16, float32, fitted on 20,000 rows)
for 1 to 1,000,000 rows, jaxgmm's estimator and functional API vs scikit-learn's estimator.

Run: ``python -m benchmarks.bench_latency [--quick] [--out DIR]``. Warm calls (after a
first call of each size, whose time is reported apart), medians of many repeats,
implementations interleaved.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    interleaved_times,
    make_blobs,
    markdown_table,
    median_time,
    publish,
    report_heading,
    single_threaded_blas,
    start_run,
    time_call,
)

FUNCTIONS = ("predict", "predict_proba", "score_samples", "score")

# rows -> (rounds, consecutive calls per round): many repeats for cheap calls.
FULL_PLAN = {1: (10, 50), 100: (10, 50), 10_000: (5, 10), 1_000_000: (3, 1)}
QUICK_PLAN = {1: (3, 10), 100: (3, 10), 10_000: (2, 3)}


def run(n_fit: int, d: int, k: int, plan: dict[int, tuple[int, int]]) -> dict:
    """Fit both estimators on the same data, then time each function at each size."""
    import jax.numpy as jnp
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import jaxgmm

    X = make_blobs(max(n_fit, *plan), d, k, seed=5)  # float32
    jg = jaxgmm.GaussianMixture(k, random_state=0).fit(X[:n_fit])
    sk = SkGaussianMixture(k, random_state=0).fit(X[:n_fit])
    params = jg.params_
    out: dict = {"n_fit": n_fit, "d": d, "k": k, "dtype": str(X.dtype), "rows": []}
    for n, (rounds, repeats) in plan.items():
        Xq = X[:n]
        Xq_jax = jnp.asarray(Xq)
        for name in FUNCTIONS:
            fns = {
                "jaxgmm": partial(getattr(jg, name), Xq),
                "sklearn": partial(getattr(sk, name), Xq),
                "functional": partial(getattr(jaxgmm, name), params, Xq_jax),
            }
            with single_threaded_blas():
                first = {impl: time_call(fn) for impl, fn in fns.items()}
                times = interleaved_times(fns, rounds, repeats=dict.fromkeys(fns, repeats))
            # scikit-learn's default threading, timed right after (not interleaved).
            sk_default = median_time(fns["sklearn"], rounds * repeats)
            jax_times, sk_times = np.array(times["jaxgmm"]), np.array(times["sklearn"])
            out["rows"].append(
                {
                    "n": n,
                    "function": name,
                    "rounds": rounds,
                    "repeats": repeats,
                    "jaxgmm_s": float(np.median(jax_times)),
                    "sklearn_s": float(np.median(sk_times)),
                    "functional_s": float(np.median(times["functional"])),
                    "sklearn_default_threads_s": sk_default,
                    "speedup": float(np.median(sk_times / jax_times)),
                    "first_call_s": first,
                }
            )
            print(
                f"[latency] {n:>9,} rows {name:<14} jaxgmm {1e3 * out['rows'][-1]['jaxgmm_s']:.3f}"
                f" ms, scikit-learn {1e3 * out['rows'][-1]['sklearn_s']:.3f} ms",
                flush=True,
            )
    return out


def render(info: dict, r: dict, quick: bool) -> str:
    """The Markdown report."""
    rows = []
    for row in r["rows"]:
        target = "–"
        if row["n"] <= 100:
            target = "met" if row["speedup"] >= 1 else "not met"
        rows.append(
            [
                f"{row['n']:,}",
                row["function"],
                1e3 * row["jaxgmm_s"],
                1e3 * row["sklearn_s"],
                row["speedup"],
                1e3 * row["functional_s"],
                1e3 * row["sklearn_default_threads_s"],
                1e3 * row["first_call_s"]["jaxgmm"],
                f"{row['rounds']} × {row['repeats']}",
                target,
            ]
        )
    small = [row for row in r["rows"] if row["n"] <= 100]
    met = sum(row["speedup"] >= 1 for row in small)
    lines = [
        *report_heading("# Prediction latency", info, quick),
        f"A `GaussianMixture({r['k']})` (full covariances, default options, "
        f"`random_state=0`) fitted on the same {r['n_fit']:,} × {r['d']} {r['dtype']} rows "
        "(Gaussian blobs) by jaxgmm and by scikit-learn; each function is then called on "
        "the first *rows* rows of the same distribution. Warm calls: the first call of "
        "each size and function is made (and reported, *first call*: it compiles) before "
        "timing. Each round times every implementation in turn, each with the stated "
        "number of back-to-back calls (their median); the table shows the medians of the "
        "rounds, and the speed-up (scikit-learn ÷ jaxgmm estimator) is the median of the "
        "rounds' ratios. *jaxgmm.f(params, X)* is the functional API (`jaxgmm.predict(params, "
        "X)` etc., `params = estimator.params_` made once, X a JAX array already on the "
        "device, results waited for); the estimator columns pass NumPy arrays and return "
        "NumPy results. The interleaved rounds run with one BLAS/OpenMP thread "
        "(threadpoolctl; jaxgmm's XLA threads are not affected), scikit-learn's fastest "
        "setting for small calls; *scikit-learn default threads* is its default threading, "
        "timed right after each size's rounds, not interleaved (the speed-up is against "
        "the one-thread times).",
        "",
        "Target: jaxgmm's estimator at or below scikit-learn's time for 1-100 rows "
        f"(speed-up ≥ 1): met in {met} of {len(small)} cases.",
        "",
        markdown_table(
            [
                "rows",
                "function",
                "jaxgmm ms",
                "scikit-learn ms",
                "speed-up (sklearn ÷ jaxgmm)",
                "jaxgmm.f(params, X) ms",
                "scikit-learn default threads ms",
                "jaxgmm first call ms",
                "rounds × calls",
                "target (≤ scikit-learn)",
            ],
            rows,
        ),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run the prediction-latency benchmark; returns the Markdown results path."""
    args, info = start_run(__doc__, argv)
    if args.quick:
        r = run(2_000, 16, 8, QUICK_PLAN)
    else:
        r = run(20_000, 16, 8, FULL_PLAN)
    markdown = render(info, r, args.quick)
    return publish("bench_latency", markdown, {"machine": info, "result": r}, args.out)


if __name__ == "__main__":
    main()
