"""The short host loop that drives a fit's compiled blocks of EM iterations.

Python regains control after every block (:mod:`jaxgmm._blocks`), and the progress
bar moves. Blocks run asynchronously: the next one is queued before the host waits
for the running one (so the device does not idle between blocks), and the host waits
on an event a helper thread sets when the block is done (noticed at once), in short
timed waits, so a KeyboardInterrupt (Ctrl-C, a notebook's interrupt button)
surfaces at once, even during a long initialisation (k-means) or block; the abandoned
computation finishes in the background and its result is dropped. Blocks are sized from the
measured time per iteration so that one takes about :data:`TARGET_SECONDS`: the
first block of a new program is a few iterations (its time includes compiling),
the next ones are scaled to the target. A program's time per iteration is
remembered, so a repeated fit starts with blocks of the right size.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm import _fit_progress

# One block should take about this long: the most an interrupted fit with
# on_interrupt="return" is behind (the interrupt itself surfaces at once), and long
# enough that what each block costs besides its iterations stays negligible.
TARGET_SECONDS = 0.5
# The first block of a program not timed before.
FIRST_BLOCK = 4
# Under jax.distributed every process must run the same blocks, so block sizes
# cannot come from each process's clock: they double up to this many iterations.
DISTRIBUTED_BLOCK = 64
_MAX_REMEMBERED = 256
# Longest wait of the main thread between two chances for a KeyboardInterrupt to
# surface (a block's end itself is noticed at once, see fetch_when_ready).
_WAIT_SECONDS = 0.05
# Fits smaller than this many multiply-adds (rows x components x (D^2 + D + 1) x
# restarts x max_iter) run as one program: under 0.2 s even at 1 GFLOP/s, so an
# interrupt still surfaces well within a second, and small fits (many data sets in a
# loop) pay for neither a second program nor a wait between blocks.
SINGLE_PROGRAM_WORK = 2e8


def fits_in_one_block(
    n_rows: int, n_components: int, n_features: int, n_fits: int, max_iter: int
) -> bool:
    """Whether a fit is small enough to run as one program (see SINGLE_PROGRAM_WORK).

    Args:
        n_rows: padded rows per data set; n_components: padded K; n_features: D;
        n_fits: restarts times data sets; max_iter: the fit's ``max_iter``.
    """
    n_rows, n_components, n_features, n_fits, max_iter = (
        int(v) for v in (n_rows, n_components, n_features, n_fits, max_iter)
    )  # Python ints: numpy scalar options must not overflow
    work = n_rows * n_components * (n_features**2 + n_features + 1) * n_fits * max(max_iter, 1)
    return work <= SINGLE_PROGRAM_WORK


_seconds_per_iteration: OrderedDict[Hashable, float] = OrderedDict()
# Iterations the last fit of each program ran (its slowest restart), to queue no block
# past the expected end of the next fit.
_iterations_needed: OrderedDict[Hashable, int] = OrderedDict()


def run_blocks(
    start: Callable[[], Any],
    advance: Callable[[Any, jax.Array], tuple[Any, Any, Any]],
    *,
    max_iter: int,
    on_interrupt: str,
    program: Hashable,
    progress: str | None = None,
):
    """Start a fit, then advance it block by block until every restart has stopped.

    Args:
        start: ``start() -> state``, the compiled initialisation.
        advance: ``advance(state, budget) -> (state, result, summary)``: at most
            ``budget`` more iterations; ``result`` is the best restart so far (restarts
            still running marked ``Status.INTERRUPTED``); ``summary`` is a
            :class:`jaxgmm._blocks.Summary`.
        max_iter: the fit's ``max_iter`` (no block needs more).
        on_interrupt: ``"raise"``: a KeyboardInterrupt propagates, with the number of
            iterations run in its ``n_iter`` attribute; ``"return"``: return the
            result of the last finished block (if initialisation had finished).
        program: a hashable key of the compiled programs and shapes (for block sizes).
        progress: None, or the description of a progress bar of EM iterations.

    Returns:
        The last block's ``result``.

    Raises:
        KeyboardInterrupt: interrupted, with ``on_interrupt="raise"``, or before the
            restarts were initialised.
    """
    bar = _fit_progress.fit_progress(max_iter, progress) if progress else None
    if bar is not None:
        bar.__enter__()
    state = result = None
    n_iter = 0
    in_flight: list = []  # the latest dispatched programs' outputs, waited for if interrupted

    def dispatch(state, budget: int):
        block = advance(state, jnp.asarray(budget, jnp.int32))
        in_flight[:] = in_flight[-1:] + [block]
        return block

    try:
        state = start()
        in_flight.append(state)
        budget = _first_budget(program, max_iter)
        # The first block of a program not run before includes compiling it.
        timed = program in _seconds_per_iteration
        slowest = 0.0
        began = time.perf_counter()
        block, reach = dispatch(state, budget), budget
        while True:
            # The next block is queued before this one is waited for, so the device
            # never idles while the host wakes up; its budget lags one block behind.
            # None is queued when this block can reach max_iter, or the iterations the
            # last fit of this program needed (a block queued after the last one would
            # run no iteration and only cost time; if more are needed after all, the
            # next block is dispatched when this one ends).
            queued = None
            if reach < _queue_limit(program, max_iter):
                queued = dispatch(block[0], budget), reach + budget
            still_running, last_n_iter, lower_bound = fetch_when_ready(block[2])
            state, result = block[0], block[1]
            now = time.perf_counter()
            seconds, began = now - began, now
            ran, n_iter = int(last_n_iter) - n_iter, int(last_n_iter)
            if bar is not None:
                _fit_progress.report_iteration(n_iter, lower_bound)
            per_iteration = seconds / max(ran, 1)
            if timed:
                slowest = max(slowest, per_iteration)
            if not still_running:
                if slowest > 0.0:
                    _remember(program, slowest)
                _remember_iterations(program, n_iter)
                return result
            timed = True
            budget = _next_budget(budget, per_iteration, max_iter)
            if queued is None:  # this block was expected to be the last one
                queued = dispatch(state, budget), n_iter + budget
            block, reach = queued
    except KeyboardInterrupt as interrupt:
        interrupt.n_iter = n_iter
        _finish_in_background(in_flight)
        if on_interrupt == "raise" or state is None:
            raise
        if result is None:  # interrupted before the first block ended
            if not _is_ready(state):  # still initialising: nothing to return
                raise
            _, result, _ = advance(state, jnp.asarray(0, jnp.int32))  # the initial parameters
        return jax.block_until_ready(result)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def _finish_in_background(tree) -> None:
    """Wait for ``tree``'s computations on a non-daemon thread, without blocking.

    An interrupted fit leaves its last blocks queued on the device; the interpreter
    waits for this thread at exit, so the runtime is never torn down under a running
    program (which crashes the process: SIGSEGV at exit after a KeyboardInterrupt).
    """
    if not _is_ready(tree):
        threading.Thread(target=jax.block_until_ready, args=(tree,), name="jaxgmm-drain").start()


def _is_ready(tree) -> bool:
    """Whether every array of ``tree`` has been computed."""
    leaves = jax.tree_util.tree_leaves(tree)
    return all(leaf.is_ready() for leaf in leaves if isinstance(leaf, jax.Array))


def fetch_when_ready(tree):
    """``jax.device_get(tree)``, waiting for it without holding up a KeyboardInterrupt.

    A blocking get in the main thread would hold a KeyboardInterrupt until the
    computation ends. A helper thread blocks instead and sets an event the moment the
    arrays are ready; the main thread waits on that event in short timed waits, which
    a signal interrupts at once. An abandoned helper ends with its computation (the
    interpreter waits for it at exit, so the runtime is not torn down under it).
    """
    if not _is_ready(tree):
        ready = threading.Event()

        def wait() -> None:
            try:
                jax.block_until_ready(tree)
            finally:
                ready.set()

        threading.Thread(target=wait, name="jaxgmm-block-wait").start()
        while not ready.wait(_WAIT_SECONDS):
            pass
    return jax.device_get(tree)


def _first_budget(program: Hashable, max_iter: int) -> int:
    """A program's first block: sized from its remembered time per iteration, if any."""
    seconds = _seconds_per_iteration.get(program)
    if seconds is None or jax.process_count() > 1:
        return _clip(FIRST_BLOCK, max_iter)
    return _clip(TARGET_SECONDS / seconds, max_iter)


def _next_budget(budget: int, per_iteration: float, max_iter: int) -> int:
    """The next block: TARGET_SECONDS at the last block's time per iteration."""
    if jax.process_count() > 1:
        return _clip(min(2 * budget, DISTRIBUTED_BLOCK), max_iter)
    return _clip(TARGET_SECONDS / max(per_iteration, 1e-9), max_iter)


def _clip(budget: float, max_iter: int) -> int:
    """``budget`` as an int in [1, max_iter] (1 when max_iter is 0)."""
    return int(np.clip(budget, 1, max(1, max_iter)))


def _queue_limit(program: Hashable, max_iter: int) -> int:
    """Queue a next block only while the blocks so far reach fewer iterations than this.

    Under jax.distributed every process must dispatch the same blocks in the same
    order, so only max_iter (the same everywhere) decides there.
    """
    if jax.process_count() > 1:
        return max_iter
    return min(max_iter, _iterations_needed.get(program, max_iter))


def _remember_iterations(program: Hashable, n_iter: int) -> None:
    """Keep the iterations a program's last fit ran (most recently used programs only)."""
    _iterations_needed[program] = max(int(n_iter), 1)
    _iterations_needed.move_to_end(program)
    while len(_iterations_needed) > _MAX_REMEMBERED:
        _iterations_needed.popitem(last=False)


def _remember(program: Hashable, seconds: float) -> None:
    """Keep a program's slowest time per iteration (most recently used programs only)."""
    _seconds_per_iteration[program] = seconds
    _seconds_per_iteration.move_to_end(program)
    while len(_seconds_per_iteration) > _MAX_REMEMBERED:
        _seconds_per_iteration.popitem(last=False)
