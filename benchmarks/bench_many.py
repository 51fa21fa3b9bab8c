"""W3, many models: 1,000 independent data sets (N = 500, D = 2, K = 3, full), one
``jaxgmm.fit_many`` call vs a Python loop of scikit-learn fits.

Run: ``python -m benchmarks.bench_many [--quick] [--out DIR]``. Wall time of all fits,
medians; jaxgmm's compile time is reported separately.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    markdown_table,
    median_time,
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


def run(b: int, n: int, d: int, k: int, repeats: int, sk_models: int) -> dict:
    """Time fit_many over b data sets and a loop of scikit-learn fits."""
    import jax.numpy as jnp

    import jaxgmm

    X = datasets(b, n, d, k)
    Xj = jnp.asarray(X)

    def jax_fit():
        return jaxgmm.fit_many(Xj, k, tol=1e-3).lower_bound

    first = time_call(jax_fit)
    jax_s = median_time(jax_fit, repeats, warmup=0)
    out = {
        "b": b,
        "n": n,
        "d": d,
        "k": k,
        "jaxgmm_s": jax_s,
        "jaxgmm_compile_s": max(first - jax_s, 0.0),
    }
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:
        return out
    start = time.perf_counter()
    with single_threaded_blas():
        for i in range(sk_models):
            GaussianMixture(k, tol=1e-3, random_state=i).fit(X[i])
    out["sklearn_loop_s"] = (time.perf_counter() - start) * b / sk_models
    out["sklearn_models_timed"] = sk_models
    return out


def render(info: dict, r: dict, quick: bool) -> str:
    """The Markdown report."""
    rows = [["jaxgmm.fit_many float32 (vmapped in groups)", 1e3 * r["jaxgmm_s"], 1.0]]
    if "sklearn_loop_s" in r:
        label = "scikit-learn loop float32"
        if r["sklearn_models_timed"] != r["b"]:
            label += f" ({r['sklearn_models_timed']} fits timed, scaled to {r['b']})"
        rows.append([label, 1e3 * r["sklearn_loop_s"], r["sklearn_loop_s"] / r["jaxgmm_s"]])
    lines = [
        *report_heading("# W3: many models", info, quick),
        f"{r['b']:,} data sets of N={r['n']}, D={r['d']}, K={r['k']}, full covariances, "
        "tol=1e-3, k-means initialisation, one restart each; wall time for all of them, "
        f"median. jaxgmm compile: {r['jaxgmm_compile_s']:.2f} s (excluded). scikit-learn "
        "runs with one BLAS/OpenMP thread (threadpoolctl), its fastest setting here.",
        "",
        markdown_table(["implementation", "ms for all fits", "jaxgmm speed-up"], rows),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W3; returns the Markdown results path."""
    args, info = start_run(__doc__, argv)
    if args.quick:
        r = run(20, 100, 2, 3, repeats=1, sk_models=20)
    else:
        r = run(1_000, 500, 2, 3, repeats=5, sk_models=1_000)
    markdown = render(info, r, args.quick)
    return publish("bench_many", markdown, {"machine": info, "result": r}, args.out)


if __name__ == "__main__":
    main()
