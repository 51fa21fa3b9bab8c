"""The cost of interruptible fits: EM in compiled blocks driven by a host loop, against
the same fit as one compiled program, on W1, W2 and W3 in the same run.

Run: ``python -m benchmarks.bench_blocks [--quick] [--out DIR]``. Outside the user's own
``jit``, a fit runs as blocks of about 0.25 s so that Ctrl-C surfaces between them; small
fits (below ``jaxgmm._host_loop.SINGLE_PROGRAM_WORK`` multiply-adds) stay one program.
Here the threshold is raised so the same fits also run as one program, and the two are
timed in turn: the ratio is the blocks' overhead (target: at most 1.02).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    interleaved_times,
    make_blobs,
    markdown_table,
    publish,
    report_heading,
    start_run,
)
from benchmarks.bench_many import datasets


@contextlib.contextmanager
def one_program():
    """Every fit in this block runs as one compiled program (no host loop)."""
    from jaxgmm import _host_loop

    saved = _host_loop.SINGLE_PROGRAM_WORK
    _host_loop.SINGLE_PROGRAM_WORK = float("inf")
    try:
        yield
    finally:
        _host_loop.SINGLE_PROGRAM_WORK = saved


def workloads(quick: bool) -> dict:
    """name -> (description, zero-argument fit returning its lower bound)."""
    import jax.numpy as jnp

    import jaxgmm

    scale = 50 if quick else 1
    X1 = jnp.asarray(make_blobs(100_000 // scale, 16, 16, seed=0))
    X2 = jnp.asarray(make_blobs(2_000, 2, 4, seed=1))
    X3 = jnp.asarray(datasets(1_000 // scale, 500, 2, 3))
    fits = {
        "W1": (
            f"full, N={X1.shape[0]:,}, D=16, K=16, 40 iterations (tol=0)",
            lambda: jaxgmm.fit(X1, 16, max_iter=40, tol=0.0).lower_bound,
        ),
        "W2": (
            f"full, N=2,000, D=2, K=4, n_init={256 // scale}, tol=1e-3",
            lambda: jaxgmm.fit(X2, 4, n_init=256 // scale, tol=1e-3).lower_bound,
        ),
        "W3": (
            f"fit_many, {X3.shape[0]:,} data sets of N=500, D=2, K=3, tol=1e-3",
            lambda: jaxgmm.fit_many(X3, 3, tol=1e-3).lower_bound,
        ),
    }
    # A smoke run compiles only W1's two programs (W2 and W3 are one program at its sizes).
    return {"W1": fits["W1"]} if quick else fits


def run(quick: bool, rounds: int, repeats: int) -> dict:
    """Blocked and one-program wall time of each workload, taken in turn."""
    results = {}
    for name, (description, fit) in workloads(quick).items():

        def single(fit=fit):
            with one_program():
                return fit()

        fns = {"blocks": fit, "one program": single}
        for fn in fns.values():  # compile both programs, size the blocks
            fn()
            fn()
        times = interleaved_times(fns, rounds, repeats={"blocks": repeats, "one program": repeats})
        ratios = np.asarray(times["blocks"]) / np.asarray(times["one program"])
        results[name] = {
            "description": description,
            "blocks_s": float(np.median(times["blocks"])),
            "one_program_s": float(np.median(times["one program"])),
            "ratio": float(np.median(ratios)),
            "round_ratios": ratios.tolist(),
        }
    return results


def main(argv=None) -> Path:
    """Run the comparison and write ``bench_blocks.md`` / ``.json``."""
    args, info = start_run(__doc__, argv)
    rounds, repeats = (1, 1) if args.quick else (9, 3)
    results = run(args.quick, rounds, repeats)
    lines = report_heading("# Interruptible fits: blocks vs one program", info, args.quick)
    lines += [
        "Each workload is fitted as blocks of compiled iterations driven by the host "
        "loop (what `jaxgmm.fit` does, so Ctrl-C works) and as one compiled program, "
        f"in turn: {rounds} rounds of {repeats} back-to-back calls each, median per round; the "
        "overhead is the median of the rounds' ratios (target: at most 1.02).",
        "",
        markdown_table(
            ["workload", "fit", "blocks ms", "one program ms", "overhead"],
            [
                [
                    name,
                    r["description"],
                    f"{1e3 * r['blocks_s']:,.1f}",
                    f"{1e3 * r['one_program_s']:,.1f}",
                    f"{r['ratio']:.3f}",
                ]
                for name, r in results.items()
            ],
        ),
    ]
    return publish("bench_blocks", "\n".join(lines), {"machine": info, **results}, args.out)


if __name__ == "__main__":
    main()
