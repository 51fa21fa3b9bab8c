"""W2, restarts: a whole fit with n_init = 256 (N = 2,000, D = 2, K = 4, full, tol 1e-3),
jaxgmm (all restarts in one program, vmapped in groups) vs scikit-learn (restarts in a loop).

Run: ``python -m benchmarks.bench_restarts [--quick] [--out DIR]``. Wall time of the
whole fit (initialisation included); jaxgmm's compile time is reported separately
(first call minus the median of later calls).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    make_blobs,
    markdown_table,
    median_time,
    publish,
    report_heading,
    single_threaded_blas,
    start_run,
    time_call,
)


def run(n: int, d: int, k: int, n_init: int, repeats: int, sk_repeats: int) -> dict:
    """Time jaxgmm and scikit-learn fits with n_init restarts."""
    import jax.numpy as jnp

    import jaxgmm

    X = make_blobs(n, d, k, seed=3, spread=2.0)
    Xj = jnp.asarray(X)

    def jax_fit():
        return jaxgmm.fit(Xj, k, n_init=n_init, tol=1e-3, key=0).lower_bound

    first = time_call(jax_fit)
    jax_s = median_time(jax_fit, repeats, warmup=0)
    out = {
        "n": n,
        "d": d,
        "k": k,
        "n_init": n_init,
        "jaxgmm_s": jax_s,
        "jaxgmm_compile_s": max(first - jax_s, 0.0),
        "jaxgmm_lower_bound": float(jax_fit()),
    }
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:
        return out

    def sk_fit(dtype):
        with single_threaded_blas():
            return GaussianMixture(k, n_init=n_init, tol=1e-3, random_state=0).fit(X.astype(dtype))

    out["sklearn32_s"] = median_time(lambda: sk_fit(np.float32), sk_repeats, warmup=0)
    out["sklearn64_s"] = median_time(lambda: sk_fit(np.float64), sk_repeats, warmup=0)
    out["sklearn_lower_bound"] = float(sk_fit(np.float64).lower_bound_)
    return out


def render(info: dict, r: dict, quick: bool) -> str:
    """The Markdown report."""
    rows = [["jaxgmm float32 (restarts vmapped in groups)", 1e3 * r["jaxgmm_s"], 1.0]]
    for key, label in [
        ("sklearn32_s", "scikit-learn float32"),
        ("sklearn64_s", "scikit-learn float64"),
    ]:
        if key in r:
            rows.append([label, 1e3 * r[key], r[key] / r["jaxgmm_s"]])
    lines = [
        *report_heading("# W2: restarts", info, quick),
        f"Whole fit, full covariances, N={r['n']:,}, D={r['d']}, K={r['k']}, "
        f"n_init={r['n_init']}, tol=1e-3, k-means initialisation; wall time, median. "
        f"jaxgmm compile: {r['jaxgmm_compile_s']:.2f} s (excluded). scikit-learn runs "
        "with one BLAS/OpenMP thread (threadpoolctl), its fastest setting for problems "
        "this small; its default threading was several times slower here.",
        "",
        markdown_table(["implementation", "ms per fit", "jaxgmm speed-up"], rows),
        "",
        f"Best lower bound: jaxgmm {r['jaxgmm_lower_bound']:.4f}"
        + (
            f", scikit-learn {r['sklearn_lower_bound']:.4f}." if "sklearn_lower_bound" in r else "."
        ),
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W2; returns the Markdown results path."""
    args, info = start_run(__doc__, argv)
    if args.quick:
        r = run(500, 2, 3, 8, repeats=1, sk_repeats=1)
    else:
        r = run(2_000, 2, 4, 256, repeats=5, sk_repeats=3)
    markdown = render(info, r, args.quick)
    return publish("bench_restarts", markdown, {"machine": info, "result": r}, args.out)


if __name__ == "__main__":
    main()
