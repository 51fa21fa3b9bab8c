"""The cost of interruptible fits: EM in compiled blocks driven by a host loop, against
the same fit as one compiled program, on W1, W2 and W3 in the same run.

Run: ``python -m benchmarks.bench_blocks [--quick] [--out DIR]``. Outside the user's own
``jit``, a fit runs as blocks of about 0.25 s so that Ctrl-C surfaces between them; small
fits (below ``jaxgmm._host_loop.SINGLE_PROGRAM_WORK`` multiply-adds) stay one program.
Here the threshold is raised so the same fits also run as one program, and the two are
timed in turn: the ratio is the blocks' overhead (target: at most 1.02).

On a shared 2-core machine two timings of the same ~1 s fit differ by 10-30 %, more than
the 2 % to be shown. So the overhead is also profiled: the number of blocks a fit runs,
and the fixed cost of one block, timed as a block with a budget of zero iterations (the
same program, dispatched and waited for as the host loop does: centring, choosing the
best restart, the summary's transfer). The estimate is 1 + blocks x cost / one program.
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
    median_time,
    publish,
    report_heading,
    start_run,
)
from benchmarks.bench_many import datasets


@contextlib.contextmanager
def counted_blocks(record: dict):
    """Count the blocks of the fits in this context; keep the last fit's start state."""
    from jaxgmm import _fit

    saved = _fit.run_blocks

    def counting(start, advance, **kwargs):
        def counted_advance(state, budget):
            record["blocks"] += 1
            return advance(state, budget)

        def kept_start():
            record["state"] = start()
            record["advance"] = advance
            return record["state"]

        return saved(kept_start, counted_advance, **kwargs)

    _fit.run_blocks = counting
    try:
        yield
    finally:
        _fit.run_blocks = saved


def block_profile(fit, calls: int = 30) -> tuple[float, float]:
    """Blocks per call of ``fit`` and the median seconds of a zero-iteration block."""
    import jax
    import jax.numpy as jnp

    from jaxgmm._host_loop import fetch_when_ready

    record = {"blocks": 0}
    with counted_blocks(record):
        fit()
    zero = jnp.asarray(0, jnp.int32)
    fetch_when_ready(record["advance"](record["state"], zero)[2])  # compiled already

    def empty_block():
        _, result, summary = record["advance"](record["state"], zero)
        fetch_when_ready(summary)
        return jax.block_until_ready(result)

    return float(record["blocks"]), median_time(empty_block, calls, warmup=1)


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
        blocks, block_s = block_profile(fit)
        one_s = float(np.median(times["one program"]))
        results[name] = {
            "blocks_per_fit": blocks,
            "empty_block_s": block_s,
            "estimated_ratio": 1.0 + blocks * block_s / one_s,
            "description": description,
            "blocks_s": float(np.median(times["blocks"])),
            "one_program_s": one_s,
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
        "measured overhead is the median of the rounds' ratios (target: at most 1.02). "
        "*Blocks* is the number of blocks one fit runs (its initialisation is one more "
        "program); *empty block* the median time of a block of zero iterations (its fixed "
        "cost: dispatch, centring, choosing the best restart, fetching the summary); the "
        "profiled overhead is 1 + blocks × empty block / one program, the overhead a "
        "quiet machine would show.",
        "",
        markdown_table(
            [
                "workload",
                "fit",
                "blocks ms",
                "one program ms",
                "measured overhead",
                "blocks",
                "empty block ms",
                "profiled overhead",
            ],
            [
                [
                    name,
                    r["description"],
                    f"{1e3 * r['blocks_s']:,.1f}",
                    f"{1e3 * r['one_program_s']:,.1f}",
                    f"{r['ratio']:.3f}",
                    f"{r['blocks_per_fit']:.0f}",
                    f"{1e3 * r['empty_block_s']:.2f}",
                    f"{r['estimated_ratio']:.4f}",
                ]
                for name, r in results.items()
            ],
        ),
    ]
    return publish("bench_blocks", "\n".join(lines), {"machine": info, **results}, args.out)


if __name__ == "__main__":
    main()
