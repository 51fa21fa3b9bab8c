"""The one fitting loop: any solver, iterated to convergence in a ``lax.while_loop``.

The loop owns what every solver shares: the iteration count and ``max_iter``, the
tolerance test (asking the solver's ``terminate``), the guard that stops at the first
non-finite step and keeps the last finite parameters, the history of objectives,
progress reports, and the final :class:`~jaxgmm._params.Status`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm._fit_progress import report_iteration
from jaxgmm._params import GaussianMixtureParams, Status
from jaxgmm._rows import Rows


class LoopState(NamedTuple):
    """State of one fitting run.

    Attributes:
        params: the last finite parameters.
        lower_bound: () the last finite objective (-inf before the first iteration).
        n_iter: () iterations run.
        converged: () whether the solver's ``terminate`` held.
        finite: () false once a step produced non-finite values.
        history: (H,) objective per iteration, NaN after ``n_iter``.
    """

    params: GaussianMixtureParams
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    finite: jax.Array
    history: jax.Array


def all_finite(tree) -> jax.Array:
    """() bool: every leaf of ``tree`` is finite everywhere."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _report(n_iter, lower_bound, first_shard) -> None:
    """Progress from one shard only (every device runs the loop under shard_map)."""
    if bool(first_shard):
        report_iteration(n_iter, lower_bound)


def iterate(
    solver,
    rows: Rows,
    params: GaussianMixtureParams,
    tol: jax.Array,
    max_iter: jax.Array,
    history_length: int,
    report_progress: bool = False,
    lower_bound: jax.Array | None = None,
) -> LoopState:
    """Run ``solver.step`` until ``solver.terminate`` holds, ``max_iter``, or non-finite.

    The objective of an iteration is the one its step reports for the parameters
    *before* the step (EM: the E-step's mean log-likelihood, scikit-learn's lower
    bound). A step that produces non-finite values stops the loop and keeps the last
    finite parameters.

    Args:
        solver: an object with ``init(params)``, ``step(rows, state) -> (state,
            objective)`` and ``terminate(objective, previous, tol)``.
        rows: the data.
        params: initial parameters (a warm start passes fitted ones).
        tol: () tolerance; max_iter: () int (traced: a new value does not compile).
        history_length: H >= max_iter, the static length of the history.
        report_progress: call the progress bar after each iteration (static).
        lower_bound: () the objective of ``params`` if known (warm start), else -inf.

    Returns:
        The final :class:`LoopState`.
    """

    def keep_going(state: LoopState) -> jax.Array:
        return running(state, max_iter)

    one_iteration = _iteration(solver, rows, tol, report_progress)
    state = start(solver, params, history_length, lower_bound)
    return jax.lax.while_loop(keep_going, one_iteration, state)


def start(
    solver,
    params: GaussianMixtureParams,
    history_length: int,
    lower_bound: jax.Array | None = None,
) -> LoopState:
    """The :class:`LoopState` before the first iteration.

    Args:
        solver: as in :func:`iterate`; params: initial parameters.
        history_length: H, the static length of the history.
        lower_bound: () the objective of ``params`` if known (warm start), else -inf.

    Returns:
        A state with ``n_iter`` 0 and an all-NaN (H,) history.
    """
    dtype = params.means.dtype
    if lower_bound is None:
        lower_bound = jnp.asarray(-jnp.inf, dtype)
    params = solver.init(params)
    return LoopState(
        params=params,
        lower_bound=lower_bound,
        n_iter=jnp.asarray(0, jnp.int32),
        converged=jnp.asarray(False),
        finite=all_finite(params),
        history=jnp.full((history_length,), jnp.nan, dtype),
    )


def advance(
    solver,
    rows: Rows,
    state: LoopState,
    tol: jax.Array,
    max_iter: jax.Array,
    budget: jax.Array,
) -> LoopState:
    """Continue :func:`iterate`'s loop for at most ``budget`` more iterations.

    The iterations are :func:`iterate`'s, so running a fit as consecutive calls of
    ``advance`` gives bit for bit the state one :func:`iterate` gives.

    Args:
        solver, rows, tol, max_iter: as in :func:`iterate`.
        state: where the run stands (from :func:`start` or a previous ``advance``).
        budget: () int, the most iterations this call runs (traced).

    Returns:
        The new :class:`LoopState`; ``running(state, max_iter)`` tells whether it is done.
    """
    stop_at = state.n_iter + budget

    def keep_going(state: LoopState) -> jax.Array:
        return running(state, max_iter) & (state.n_iter < stop_at)

    return jax.lax.while_loop(keep_going, _iteration(solver, rows, tol), state)


def _iteration(solver, rows: Rows, tol: jax.Array, report_progress: bool = False):
    """The loop body: one solver step, guarded against non-finite values."""

    def one_iteration(state: LoopState) -> LoopState:
        new_params, objective = solver.step(rows, state.params)
        if report_progress:
            first_shard = solver.reducer.is_first_shard()
            jax.debug.callback(_report, state.n_iter + 1, objective, first_shard)
        return record(solver, state, new_params, objective, tol)

    return one_iteration


def record(
    solver,
    state: LoopState,
    new_params: GaussianMixtureParams,
    objective: jax.Array,
    tol: jax.Array,
) -> LoopState:
    """The loop's bookkeeping after one step: guard, history, convergence.

    Used by the loop body above and by drivers that run the step's passes over the
    data themselves (:mod:`jaxgmm._stream`).

    Args:
        solver: has ``terminate(objective, previous, tol)``.
        state: the state before the step; new_params, objective: the step's output.
        tol: () tolerance.

    Returns:
        The state after the step (the old parameters kept if the step was non-finite).
    """
    finite = jnp.isfinite(objective) & all_finite(new_params)
    params = jax.tree_util.tree_map(
        lambda new, old: jnp.where(finite, new, old), new_params, state.params
    )
    return LoopState(
        params=params,
        lower_bound=jnp.where(finite, objective, state.lower_bound),
        n_iter=state.n_iter + 1,
        converged=finite & solver.terminate(objective, state.lower_bound, tol),
        finite=finite,
        history=state.history.at[state.n_iter].set(objective, mode="drop"),
    )


def running(state: LoopState, max_iter: jax.Array) -> jax.Array:
    """() bool: the run has not stopped (converged, ``max_iter`` or non-finite)."""
    return (state.n_iter < max_iter) & ~state.converged & state.finite


def status(state: LoopState, max_iter: jax.Array | None = None) -> jax.Array:
    """() int32 :class:`Status` code of a run.

    Args:
        state: the run's state.
        max_iter: None for a finished run; else a run that has not stopped yet
            (interrupted between blocks of iterations) is ``Status.INTERRUPTED``.
    """
    code = jnp.where(
        ~state.finite,
        Status.NON_FINITE,
        jnp.where(state.converged, Status.CONVERGED, Status.MAX_ITER),
    )
    if max_iter is not None:
        code = jnp.where(running(state, max_iter), Status.INTERRUPTED, code)
    return code.astype(jnp.int32)


def select_restart(statuses: jax.Array, lower_bounds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index of the best restart, and every restart's score.

    A restart's score is its lower bound, or -inf if it became non-finite. The best
    restart has the highest score among the finished ones that stayed finite; ties
    (all -inf, e.g. ``max_iter = 0``) go to the first of them. Interrupted restarts
    (``Status.INTERRUPTED``) are chosen only when no finite restart finished, and a
    non-finite restart only when every restart is non-finite.

    Args:
        statuses: (n_init,) :class:`Status` codes; lower_bounds: (n_init,).

    Returns:
        best: () int index; scores: (n_init,).
    """
    finite = statuses != Status.NON_FINITE
    scores = jnp.where(finite, lower_bounds, -jnp.inf)
    finished = finite & (statuses != Status.INTERRUPTED)
    eligible = jnp.where(jnp.any(finished), finished, finite)
    best = jnp.argmax(jnp.where(eligible, scores, -jnp.inf))
    best = jnp.where(eligible[best], best, jnp.argmax(eligible))
    return best, scores
