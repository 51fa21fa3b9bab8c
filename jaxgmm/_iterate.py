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
    dtype = rows.x.dtype

    def keep_going(state: LoopState) -> jax.Array:
        return (state.n_iter < max_iter) & ~state.converged & state.finite

    def one_iteration(state: LoopState) -> LoopState:
        new_params, objective = solver.step(rows, state.params)
        finite = jnp.isfinite(objective) & all_finite(new_params)
        if report_progress:
            first_shard = solver.reducer.is_first_shard()
            jax.debug.callback(_report, state.n_iter + 1, objective, first_shard)
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

    if lower_bound is None:
        lower_bound = jnp.asarray(-jnp.inf, dtype)
    params = solver.init(params)
    state = LoopState(
        params=params,
        lower_bound=lower_bound,
        n_iter=jnp.asarray(0, jnp.int32),
        converged=jnp.asarray(False),
        finite=all_finite(params),
        history=jnp.full((history_length,), jnp.nan, dtype),
    )
    return jax.lax.while_loop(keep_going, one_iteration, state)


def status(state: LoopState) -> jax.Array:
    """() int32 :class:`Status` code of a finished run."""
    return jnp.where(
        ~state.finite,
        Status.NON_FINITE,
        jnp.where(state.converged, Status.CONVERGED, Status.MAX_ITER),
    ).astype(jnp.int32)


def select_restart(statuses: jax.Array, lower_bounds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index of the best restart, and every restart's score.

    A restart's score is its lower bound, or -inf if it became non-finite. The best
    restart has the highest score; ties (all -inf, e.g. ``max_iter = 0``) go to the
    first restart that stayed finite, so a non-finite restart is chosen only when
    every restart is non-finite.

    Args:
        statuses: (n_init,) :class:`Status` codes; lower_bounds: (n_init,).

    Returns:
        best: () int index; scores: (n_init,).
    """
    finite = statuses != Status.NON_FINITE
    scores = jnp.where(finite, lower_bounds, -jnp.inf)
    best = jnp.argmax(scores)
    best = jnp.where(finite[best], best, jnp.argmax(finite))
    return best, scores
