"""W3, many models: 1,000 independent data sets (N = 500, D = 2, K = 3, full), one
``jaxgmm.fit_many`` call vs a Python loop of scikit-learn fits.

Run: ``python -m benchmarks.bench_many [--quick] [--out DIR]``. Wall time of all fits,
medians; jaxgmm's compile time is reported separately.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    interleaved_times,
    markdown_table,
    publish,
    report_heading,
    single_threaded_blas,
    start_run,
    time_call,
)


def datasets(b: int, n: int, d: int, k: int, seed: int = 4) -> np.ndarray:
    """(b, n, d) float32: each data set has k random well-separated-ish clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(b, k, d))
    labels = rng.integers(0, k, size=(b, n))
    points = np.take_along_axis(centres, labels[:, :, None], axis=1)
    return (points + rng.normal(size=(b, n, d))).astype(np.float32)


def run(b: int, n: int, d: int, k: int, rounds: int, sk_models: int) -> dict:
    """Time fit_many over b data sets and a loop of scikit-learn fits."""
    import jax.numpy as jnp

    import jaxgmm

    X = datasets(b, n, d, k)
    Xj = jnp.asarray(X)

    def jax_fit():
        return jaxgmm.fit_many(Xj, k, tol=1e-3).lower_bound

    first = time_call(jax_fit)
    out = {"b": b, "n": n, "d": d, "k": k}
    fns = {"jaxgmm": jax_fit}
    rounds = max(1, min(rounds, sk_models))
    per_round = sk_models // rounds
    try:
        from sklearn.mixture import GaussianMixture

        next_model = iter(range(sk_models))

        def sk_loop():  # the next `per_round` models of the loop
            with single_threaded_blas():
                for _ in range(per_round):
                    i = next(next_model)
                    GaussianMixture(k, tol=1e-3, random_state=i).fit(X[i])

        fns["sklearn"] = sk_loop
    except ImportError:
        pass
    # Interleaved rounds: jaxgmm's whole batch, then a slice of the scikit-learn loop
    # (scaled to all b models); speed-ups are medians of the rounds' ratios.
    times = interleaved_times(fns, rounds, repeats={"jaxgmm": 5})
    jax_times = np.array(times["jaxgmm"])
    out["jaxgmm_s"] = float(np.median(jax_times))
    out["jaxgmm_compile_s"] = max(first - out["jaxgmm_s"], 0.0)
    out["rounds"] = rounds
    if "sklearn" in times:
        loop_times = np.array(times["sklearn"]) * b / per_round
        out["sklearn_loop_s"] = float(np.median(loop_times))
        out["sklearn_speedup"] = float(np.median(loop_times / jax_times))
        out["sklearn_models_timed"] = per_round * rounds
    return out


def render(info: dict, r: dict, quick: bool) -> str:
    """The Markdown report."""
    rows = [["jaxgmm.fit_many float32 (vmapped in groups)", 1e3 * r["jaxgmm_s"], 1.0]]
    if "sklearn_loop_s" in r:
        label = "scikit-learn loop float32"
        if r["sklearn_models_timed"] != r["b"]:
            label += f" ({r['sklearn_models_timed']} fits timed, scaled to {r['b']})"
        rows.append([label, 1e3 * r["sklearn_loop_s"], r["sklearn_speedup"]])
    lines = [
        *report_heading("# W3: many models", info, quick),
        f"{r['b']:,} data sets of N={r['n']}, D={r['d']}, K={r['k']}, full covariances, "
        "tol=1e-3, k-means initialisation, one restart each; wall time for all of them. "
        f"{r['rounds']} interleaved rounds each time jaxgmm's whole batch (median of 5 "
        "back-to-back calls) and the next "
        f"{r['sklearn_models_timed'] // r['rounds']} fits of the scikit-learn loop (scaled "
        "to all models); medians, and the speed-up is the median of the rounds' ratios, so "
        "drifts in a shared machine's load cancel. "
        f"jaxgmm compile: {r['jaxgmm_compile_s']:.2f} s (excluded). scikit-learn "
        "runs with one BLAS/OpenMP thread (threadpoolctl), its fastest setting here.",
        "",
        markdown_table(["implementation", "ms for all fits", "jaxgmm speed-up"], rows),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W3; returns the Markdown results path."""
    args, info = start_run(__doc__, argv)
    if args.quick:
        r = run(20, 100, 2, 3, rounds=1, sk_models=20)
    else:
        r = run(1_000, 500, 2, 3, rounds=5, sk_models=1_000)
    markdown = render(info, r, args.quick)
    return publish("bench_many", markdown, {"machine": info, "result": r}, args.out)


if __name__ == "__main__":
    main()
