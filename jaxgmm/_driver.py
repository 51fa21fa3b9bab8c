"""The compiled EM loop: ``lax.while_loop`` to convergence, restarts by ``vmap``."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm._batching import cond_any, map_in_groups
from jaxgmm._chunking import elements_per_row, split_rows
from jaxgmm._covariance import covariance_model
from jaxgmm._em import e_step, exact_e_step, lost_precision, m_step, needs_exact_e_step
from jaxgmm._fit_progress import report_iteration
from jaxgmm._init import initial_params
from jaxgmm._params import FitResult, GaussianMixtureParams, Status


class EMState(NamedTuple):
    """Loop state of one EM run."""

    params: GaussianMixtureParams
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    finite: jax.Array
    history: jax.Array


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def run_em(
    X_chunks: jax.Array,
    weight_chunks: jax.Array,
    params: GaussianMixtureParams,
    tol: jax.Array,
    reg_covar: jax.Array,
    max_iter: jax.Array,
    history_length: int,
    active: jax.Array | None = None,
    report_progress: bool = False,
) -> EMState:
    """Iterate E- and M-steps until ``|change in lower bound| < tol`` or ``max_iter``.

    The lower bound of an iteration is the mean log-likelihood computed in its E-step,
    i.e. of the parameters *before* its M-step (scikit-learn's convention). A step
    that produces non-finite values stops the loop and keeps the last finite params.

    Args:
        X_chunks: (N_chunks, C, D) data; weight_chunks: (N_chunks, C) sample weights.
        params: initial parameters.
        tol: () convergence threshold; reg_covar: () diagonal regularisation.
        max_iter: () maximum number of iterations (traced: a new value does not compile).
        history_length: length H >= max_iter of the history array (static).
        active: None, or (K,) bool: which components take part (the others are
            padding with weight zero, see :mod:`jaxgmm._buckets`).
        report_progress: call :func:`report_iteration` after each iteration (static).

    Returns:
        The final :class:`EMState`; ``history`` is (H,), NaN after ``n_iter``.
    """
    dtype = X_chunks.dtype

    def keep_going(state: EMState) -> jax.Array:
        return (state.n_iter < max_iter) & ~state.converged & state.finite

    def em_iteration(state: EMState) -> EMState:
        covariance_type = state.params.covariance_type
        expanded = covariance_model(covariance_type).expanded
        if expanded:
            # The fused kernels expand (x - mu)^2 around the data's centre; tight
            # components far from it (float32) take the exact difference-based pass.
            # (cond_any: under vmap only the restarts that need it pay for it.)
            stats = cond_any(
                needs_exact_e_step(state.params),
                lambda X, w, p: exact_e_step(X, w, p, p.means),
                e_step,
                X_chunks,
                weight_chunks,
                state.params,
            )
        else:
            stats = e_step(X_chunks, weight_chunks, state.params)
        lower_bound = stats.log_lik_sum / stats.n
        new_params = m_step(stats, reg_covar, covariance_type, active)
        if expanded:
            # Fused moments are summed around zero; redo them exactly around the new
            # means when that cancelled away a variance (float32, tight far components).
            new_params = cond_any(
                lost_precision(stats, new_params, reg_covar),
                lambda X, w, old, new, reg, act: m_step(
                    exact_e_step(X, w, old, new.means), reg, covariance_type, act
                ),
                lambda X, w, old, new, reg, act: new,
                X_chunks,
                weight_chunks,
                state.params,
                new_params,
                reg_covar,
                active,
            )
        finite = jnp.isfinite(lower_bound) & _all_finite(new_params)
        if report_progress:
            jax.debug.callback(report_iteration, state.n_iter + 1, lower_bound)
        params = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), new_params, state.params
        )
        return EMState(
            params=params,
            lower_bound=jnp.where(finite, lower_bound, state.lower_bound),
            n_iter=state.n_iter + 1,
            converged=finite & (jnp.abs(lower_bound - state.lower_bound) < tol),
            finite=finite,
            history=state.history.at[state.n_iter].set(lower_bound, mode="drop"),
        )

    state = EMState(
        params=params,
        lower_bound=jnp.asarray(-jnp.inf, dtype),
        n_iter=jnp.asarray(0, jnp.int32),
        converged=jnp.asarray(False),
        finite=_all_finite(params),
        history=jnp.full((history_length,), jnp.nan, dtype),
    )
    return jax.lax.while_loop(keep_going, em_iteration, state)


def _status(state: EMState) -> jax.Array:
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


def _apply_user_init(
    params: GaussianMixtureParams, weights_init, means_init, precisions_init
) -> GaussianMixtureParams:
    """Replace initial weights / means / precisions by the user's (scikit-learn's rule)."""
    ops = covariance_model(params.covariance_type)
    if weights_init is not None:
        params = dataclasses.replace(params, weights=weights_init)
    if means_init is not None:
        params = dataclasses.replace(params, means=means_init)
    if precisions_init is not None:
        chol = ops.precisions_cholesky_from_precisions(precisions_init)
        params = dataclasses.replace(
            params,
            precisions_cholesky=chol,
            covariances=ops.covariances_from_precisions_cholesky(chol),
        )
    return params


# The compiled fits' static (compile-time) options: only what fixes array shapes or
# the program's structure. tol, reg_covar, max_iter and the number of active
# components are traced, so new values do not compile again.
_STATIC_OPTIONS = (
    "n_components",
    "covariance_type",
    "history_length",
    "n_init",
    "init",
    "chunk_size",
    "report_progress",
)


@partial(jax.jit, static_argnames=_STATIC_OPTIONS)
def fit_compiled(
    X: jax.Array,
    sample_weight: jax.Array,
    key: jax.Array,
    tol: jax.Array,
    reg_covar: jax.Array,
    max_iter: jax.Array,
    n_active: jax.Array,
    weights_init: jax.Array | None,
    means_init: jax.Array | None,
    precisions_init: jax.Array | None,
    *,
    n_components: int,
    covariance_type: str,
    history_length: int,
    n_init: int,
    init: str,
    chunk_size: int,
    report_progress: bool = False,
) -> FitResult:
    """The whole fit as one compiled program: centre, initialise, run EM, pick the best.

    Args:
        X: (N, D) validated data in the compute dtype, N a multiple of ``chunk_size``
            (padding rows have weight zero); sample_weight: (N,).
        key: PRNG key; tol, reg_covar: () scalars; max_iter: () int.
        n_active: () int, the true number of components K <= ``n_components``; the
            others are inactive padding (weight exactly zero, see :mod:`jaxgmm._buckets`).
        weights_init: (K_pad,) or None; means_init: (K_pad, D) or None;
            precisions_init: covariance-type shaped or None (padded components: weight
            0, identity precision).
        n_components: K_pad; covariance_type, history_length, n_init, init, chunk_size,
            report_progress: static options.

    Returns:
        A :class:`FitResult` with K_pad components for the restart with the best
        finite lower bound; ``history`` has ``history_length`` entries.
    """
    # Work around the weighted data mean: exact float32 statistics for offset data.
    total_weight = jnp.sum(sample_weight)
    center = jnp.sum(sample_weight[:, None] * X, axis=0) / total_weight
    # One refinement pass: the first mean can be an ulp off (e.g. division done as a
    # reciprocal product); constant data then centre to exactly zero.
    center = center + jnp.sum(sample_weight[:, None] * (X - center), axis=0) / total_weight
    X_chunks, weight_chunks = split_rows(X - center, sample_weight, chunk_size)
    if means_init is not None:
        means_init = means_init - center
    active = jnp.arange(n_components, dtype=n_active.dtype) < n_active

    def one_restart(restart_key: jax.Array) -> EMState:
        params = initial_params(
            restart_key,
            X_chunks,
            weight_chunks,
            n_components,
            covariance_type,
            init,
            reg_covar,
            active,
        )
        params = _apply_user_init(params, weights_init, means_init, precisions_init)
        return run_em(
            X_chunks,
            weight_chunks,
            params,
            tol,
            reg_covar,
            max_iter,
            history_length,
            active,
            report_progress,
        )

    # Restart i always uses fold_in(key, i), so n_init = 8 contains the n_init = 1 run.
    # Restart 0 runs unbatched, as with n_init = 1: vmap may round differently, and
    # only the same computation guarantees bit for bit that more restarts never score
    # lower than one.
    restart_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n_init))
    states = jax.tree_util.tree_map(lambda a: a[None], one_restart(restart_keys[0]))
    if n_init > 1:
        n_features = X.shape[1]
        member_elements = chunk_size * elements_per_row(n_components, n_features, covariance_type)
        others = map_in_groups(one_restart, restart_keys[1:], member_elements)
        states = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), states, others)
    statuses = jax.vmap(_status)(states)
    best, scores = select_restart(statuses, states.lower_bound)
    state = jax.tree_util.tree_map(lambda a: a[best], states)
    params = dataclasses.replace(state.params, means=state.params.means + center)
    return FitResult(
        params=params,
        lower_bound=state.lower_bound,
        n_iter=state.n_iter,
        converged=state.converged,
        status=statuses[best],
        history=state.history,
        restart_lower_bounds=scores,
    )


@partial(jax.jit, static_argnames=_STATIC_OPTIONS)
def fit_many_compiled(
    X: jax.Array,
    sample_weight: jax.Array,
    keys: jax.Array,
    tol: jax.Array,
    reg_covar: jax.Array,
    max_iter: jax.Array,
    n_active: jax.Array,
    weights_init: jax.Array | None,
    means_init: jax.Array | None,
    precisions_init: jax.Array | None,
    **static_options,
) -> FitResult:
    """:func:`fit_compiled` for each of B data sets, vmapped in cache-sized groups.

    Args:
        X: (B, N, D) validated data sets; sample_weight: (B, N); keys: (B,) PRNG keys.
        tol, reg_covar, max_iter, n_active, weights_init, means_init,
            precisions_init: shared by every
            model, as in :func:`fit_compiled`; ``means_init`` may also be (B, K, D),
            one per data set.
        **static_options: :func:`fit_compiled`'s static options.

    Returns:
        A :class:`FitResult` with a leading (B,) axis on every leaf.
    """

    members = (X, sample_weight, keys)
    if means_init is not None and means_init.ndim == 3:  # one (K, D) per data set
        members = members + (means_init,)

    def fit_one(member):
        x, w, key, *own_means = member
        means = own_means[0] if own_means else means_init
        return fit_compiled(
            x,
            w,
            key,
            tol,
            reg_covar,
            max_iter,
            n_active,
            weights_init,
            means,
            precisions_init,
            **static_options,
        )

    per_row = elements_per_row(
        static_options["n_components"], X.shape[2], static_options["covariance_type"]
    )
    member_elements = static_options["n_init"] * static_options["chunk_size"] * per_row
    return map_in_groups(fit_one, members, member_elements)
