"""The compiled fit: centre, initialise, iterate the solver, pick the best restart."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxgmm._batching import map_in_groups
from jaxgmm._chunking import elements_per_row
from jaxgmm._covariance import covariance_model
from jaxgmm._init import initial_params
from jaxgmm._iterate import LoopState, iterate, select_restart, status
from jaxgmm._jit import jit
from jaxgmm._params import FitResult, GaussianMixtureParams
from jaxgmm._rows import IN_MEMORY, Rows, Sharded, split_rows
from jaxgmm._sharding import RowSharding
from jaxgmm._solver import EM


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
    "sharding",
    "matmul_precision",
)


@jit(static_argnames=_STATIC_OPTIONS)
def fit_compiled(
    X: jax.Array,
    sample_weight: jax.Array,
    row_index: jax.Array,
    key: jax.Array,
    tol: jax.Array,
    reg_covar: jax.Array,
    max_iter: jax.Array,
    n_active: jax.Array,
    weights_init: jax.Array | None,
    means_init: jax.Array | None,
    precisions_init: jax.Array | None,
    mask: jax.Array | None = None,
    noise: jax.Array | None = None,
    *,
    n_components: int,
    covariance_type: str,
    history_length: int,
    n_init: int,
    init: str,
    chunk_size: int,
    report_progress: bool = False,
    sharding: RowSharding | None = None,
    matmul_precision: str = "highest",
) -> FitResult:
    """The whole fit as one compiled program: centre, initialise, run EM, pick the best.

    Args:
        X: (N, D) validated data in the compute dtype, N a multiple of ``chunk_size``
            (times the number of shards; padding rows have weight zero);
            sample_weight: (N,); row_index: (N,) int32 position of each row in the
            caller's data (per-row random draws use it).
        key: PRNG key; tol, reg_covar: () scalars; max_iter: () int.
        n_active: () int, the true number of components K <= ``n_components``; the
            others are inactive padding (weight exactly zero, see :mod:`jaxgmm._buckets`).
        weights_init: (K_pad,) or None; means_init: (K_pad, D) or None;
            precisions_init: covariance-type shaped or None (padded components: weight
            0, identity precision).
        mask: None (every entry observed), or (N, D) bool, True where observed;
            missing entries of X hold the column's weighted mean of observed entries.
        noise: None, or (N, D) / (N, D, D) known noise covariances of the rows.
            With either, EM runs on incomplete data (:mod:`jaxgmm._incomplete`);
            rows-sharded fits do not support them.
        n_components: K_pad; covariance_type, history_length, n_init, init, chunk_size,
            report_progress: static options.
        sharding: None (rows in this program), or how X's rows are split over devices:
            each device then sums statistics of its own rows and only the statistics
            cross devices (one all-reduce per pass).
        matmul_precision: precision of every matrix product in the program
            (``"highest"``: full float32, also on GPUs that default to TF32).

    Returns:
        A :class:`FitResult` with K_pad components for the restart with the best
        finite lower bound; ``history`` has ``history_length`` entries.
    """
    options = dict(
        key=key,
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        n_active=n_active,
        inits=(weights_init, means_init, precisions_init),
        n_components=n_components,
        covariance_type=covariance_type,
        history_length=history_length,
        n_init=n_init,
        init=init,
        chunk_size=chunk_size,
        report_progress=report_progress,
    )
    with jax.default_matmul_precision(matmul_precision):
        if sharding is None:
            return _fit_rows(
                X, sample_weight, row_index, reducer=IN_MEMORY, mask=mask, noise=noise, **options
            )
        return _fit_sharded(X, sample_weight, row_index, sharding, options)


def _fit_sharded(X, sample_weight, row_index, sharding: RowSharding, options: dict):
    """:func:`_fit_rows` under ``shard_map``: each device fits with its own rows."""
    reducer = Sharded(axis_name=sharding.axis)
    rows_spec = PartitionSpec(sharding.axis)
    return jax.shard_map(
        partial(_fit_rows, reducer=reducer, **options),
        mesh=sharding.mesh,
        in_specs=(rows_spec, rows_spec, rows_spec),
        out_specs=PartitionSpec(),
        # Every output is made equal on all devices by the reducer's all-reduces.
        check_vma=False,
    )(X, sample_weight, row_index)


def _fit_rows(
    X,
    sample_weight,
    row_index,
    *,
    key,
    tol,
    reg_covar,
    max_iter,
    n_active,
    inits,
    reducer,
    n_components,
    covariance_type,
    history_length,
    n_init,
    init,
    chunk_size,
    report_progress,
    mask=None,
    noise=None,
) -> FitResult:
    """:func:`fit_compiled` on the rows this program holds (all, or one shard's)."""
    rows, center = centred_rows(X, sample_weight, row_index, chunk_size, reducer, mask, noise)
    solver, initial = restart_setup(
        rows,
        center,
        reducer,
        reg_covar=reg_covar,
        n_active=n_active,
        inits=inits,
        n_components=n_components,
        covariance_type=covariance_type,
        init=init,
    )

    def one_restart(restart_key: jax.Array) -> LoopState:
        params = initial(restart_key)
        return iterate(solver, rows, params, tol, max_iter, history_length, report_progress)

    # Restart i always uses fold_in(key, i), so n_init = 8 contains the n_init = 1 run.
    # Restart 0 runs unbatched, as with n_init = 1: vmap may round differently, and
    # only the same computation guarantees bit for bit that more restarts never score
    # lower than one.
    keys = restart_keys(key, n_init)
    states = jax.tree_util.tree_map(lambda a: a[None], one_restart(keys[0]))
    if n_init > 1:
        member_elements = restart_elements(
            chunk_size, rows.n_features, n_components, covariance_type
        )
        others = map_in_groups(one_restart, keys[1:], member_elements)
        states = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), states, others)
    return best_restart(states, jax.vmap(status)(states), center)


def centred_rows(
    X, sample_weight, row_index, chunk_size: int, reducer, mask=None, noise=None
) -> tuple[Rows, jax.Array]:
    """The rows in chunks, centred on their weighted mean; -> (rows, center (D,)).

    ``mask`` and ``noise`` (None, or (N, D) / (N, D, D)) travel with the rows; missing
    entries hold their column's mean, so the centre is the observed entries' mean.
    """
    rows = split_rows(X, sample_weight, row_index, chunk_size, mask, noise)
    # Work around the weighted data mean: exact float32 statistics for offset data.
    sum_x, total_weight = reducer.sum(lambda x, w, i: (w @ x, jnp.sum(w)), rows)
    center = sum_x / total_weight
    # One refinement pass: the first mean can be an ulp off (e.g. division done as a
    # reciprocal product); constant data then centre to exactly zero.
    center = center + reducer.sum(lambda x, w, i: w @ (x - center), rows) / total_weight
    return rows.centred(center), center  # read centred chunk by chunk: no (N, D) copy


def restart_setup(
    rows: Rows,
    center: jax.Array,
    reducer,
    *,
    reg_covar,
    n_active,
    inits,
    n_components: int,
    covariance_type: str,
    init: str,
):
    """The EM solver, and a function from a restart's key to its initial parameters."""
    weights_init, means_init, precisions_init = inits
    if means_init is not None:
        means_init = means_init - center
    active = jnp.arange(n_components, dtype=n_active.dtype) < n_active
    solver = EM(reg_covar=reg_covar, active=active, reducer=reducer)

    def initial(restart_key: jax.Array) -> GaussianMixtureParams:
        params = initial_params(
            restart_key, rows, n_components, covariance_type, init, reg_covar, active, reducer
        )
        return _apply_user_init(params, weights_init, means_init, precisions_init)

    return solver, initial


def restart_keys(key: jax.Array, n_init: int) -> jax.Array:
    """(n_init,) keys: restart i uses ``fold_in(key, i)``."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n_init))


def restart_elements(
    chunk_size: int, n_features: int, n_components: int, covariance_type: str
) -> int:
    """Values of one restart's largest per-chunk intermediate (for vmapped groups)."""
    return chunk_size * elements_per_row(n_components, n_features, covariance_type)


def best_restart(states: LoopState, statuses: jax.Array, center: jax.Array) -> FitResult:
    """The :class:`FitResult` of the best of (n_init,) batched restarts (means un-centred)."""
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


@jit(static_argnames=_STATIC_OPTIONS, models_axis=True)
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
    mask: jax.Array | None = None,
    **static_options,
) -> FitResult:
    """:func:`fit_compiled` for each of B data sets, vmapped in cache-sized groups.

    Args:
        X: (B, N, D) validated data sets; sample_weight: (B, N); keys: (B,) PRNG keys.
        tol, reg_covar, max_iter, n_active, weights_init, means_init,
            precisions_init: shared by every
            model, as in :func:`fit_compiled`; ``means_init`` may also be (B, K, D),
            one per data set.
        mask: None, or (B, N, D) bool observed-entry masks (missing values).
        **static_options: :func:`fit_compiled`'s static options.

    Returns:
        A :class:`FitResult` with a leading (B,) axis on every leaf.
    """

    sharding = static_options.pop("sharding")
    batched_means = means_init is not None and means_init.ndim == 3  # one (K, D) per data set
    shared = dict(
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        n_active=n_active,
        weights_init=weights_init,
        means_init=None if batched_means else means_init,
        precisions_init=precisions_init,
        static_options=static_options,
        masked=mask is not None,
    )
    members = (X, sample_weight, keys) + ((means_init,) if batched_means else ())
    members = members + ((mask,) if mask is not None else ())
    if sharding is None:
        return _fit_models(*members, **shared)
    spec = PartitionSpec(sharding.axis)
    return jax.shard_map(
        partial(_fit_models, **shared),
        mesh=sharding.mesh,
        in_specs=(spec,) * len(members),
        out_specs=spec,
        check_vma=False,
    )(*members)


def _fit_models(X, sample_weight, keys, *own, static_options, masked=False, **shared) -> FitResult:
    """:func:`fit_many_compiled` on the models this program holds (all, or one shard's).

    ``own``: each model's (K, D) initial means, then its (N, D) mask (if ``masked``).
    """
    row_index = jnp.arange(X.shape[1], dtype=jnp.int32)

    def fit_one(member):
        x, w, key, *rest = member
        mask = rest.pop() if masked else None
        options = dict(shared, means_init=rest[0]) if rest else shared
        return fit_compiled(x, w, row_index, key, **options, mask=mask, **static_options)

    per_row = elements_per_row(
        static_options["n_components"],
        X.shape[2],
        static_options["covariance_type"],
        incomplete=masked,
    )
    member_elements = static_options["n_init"] * static_options["chunk_size"] * per_row
    return map_in_groups(fit_one, (X, sample_weight, keys, *own), member_elements)
