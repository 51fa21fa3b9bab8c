"""The compiled fit in blocks of iterations, for a host loop that stays in charge.

:func:`jaxgmm._driver.fit_compiled` runs a whole fit as one program; Python regains
control only when it ends. On concrete input the same fit runs as two programs:

* ``fit_start``: centre the data and initialise every restart (k-means included),
  giving the loop states before the first EM iteration;
* ``fit_advance``: continue every unfinished restart for at most ``budget`` more
  iterations (traced: a new budget does not compile), and pick the best restart so
  far, as the single program picks it at the end.

A host loop (:mod:`jaxgmm._host_loop`) calls ``fit_advance`` until every restart has
stopped, so Ctrl-C, progress and checkpoints have a place between blocks. Each block
runs exactly the single program's iterations (the same loop body, restart 0 unbatched
and the other restarts in the same vmapped groups), so an uninterrupted blocked fit
gives bit for bit the single program's result. ``fit_many_start`` and
``fit_many_advance`` do the same for :func:`jaxgmm._driver.fit_many_compiled`.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxgmm._batching import Grouped, map_groups, to_groups, ungroup
from jaxgmm._chunking import elements_per_row
from jaxgmm._driver import (
    _STATIC_OPTIONS,
    best_restart,
    centred_rows,
    restart_elements,
    restart_keys,
    restart_setup,
)
from jaxgmm._iterate import LoopState, advance, running, start, status
from jaxgmm._jit import jit
from jaxgmm._params import FitResult
from jaxgmm._rows import IN_MEMORY, Sharded, split_rows
from jaxgmm._solver import EM


class Data(NamedTuple):
    """The rows of one data set as stored, x (N, D), weight (N,), index (N,), their
    centre (D,), and mask (N, D) and noise ((N, D) or (N, D, D)) for incomplete data
    (else None): the blocks read them centred (:meth:`jaxgmm._rows.Rows.centred`).
    Between blocks a single fit keeps only the centre (:func:`fit_advance` takes the
    caller's rows again, so no second (N, D) copy is made); ``fit_many`` keeps this."""

    x: jax.Array
    weight: jax.Array
    index: jax.Array
    center: jax.Array
    mask: jax.Array | None = None
    noise: jax.Array | None = None


class Restarts(NamedTuple):
    """Loop states of every restart: restart 0 alone, the others in vmapped groups.

    Attributes:
        first: restart 0's :class:`LoopState` (unbatched, as in the single program).
        others: None (``n_init = 1``), or restarts 1.. as (n_init - 1, ...) states or
            a :class:`~jaxgmm._batching.Grouped` batch of them.
    """

    first: LoopState
    others: LoopState | Grouped | None


class Summary(NamedTuple):
    """What the host loop needs after a block: () running, n_iter, lower_bound.

    ``running``: some restart has not stopped; ``n_iter``: the most iterations any
    restart has run; ``lower_bound``: the best finite lower bound so far (-inf if none).
    """

    running: jax.Array
    n_iter: jax.Array
    lower_bound: jax.Array


# ----------------------------------------------------------------------- one data set


def _start_rows(
    X,
    sample_weight,
    row_index,
    *,
    key,
    reg_covar,
    n_active,
    inits,
    reducer,
    n_components,
    covariance_type,
    history_length,
    n_init,
    init,
    chunk_size,
    mask=None,
    noise=None,
) -> tuple[jax.Array, Restarts]:
    """Centre the rows and initialise every restart; -> (center (D,), restarts)."""
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

    def one_start(restart_key: jax.Array) -> LoopState:
        return start(solver, initial(restart_key), history_length)

    keys = restart_keys(key, n_init)
    others = None
    if n_init > 1:
        member_elements = restart_elements(
            chunk_size, rows.n_features, n_components, covariance_type
        )
        others = map_groups(one_start, to_groups(keys[1:], member_elements))
    return center, Restarts(one_start(keys[0]), others)


def _advance_rows(
    data: Data,
    restarts: Restarts,
    *,
    tol,
    reg_covar,
    max_iter,
    n_active,
    budget,
    reducer,
    n_components,
    n_init,
    chunk_size,
) -> tuple[Restarts, FitResult, Summary]:
    """At most ``budget`` more iterations of every restart; the best restart so far."""
    rows = split_rows(data.x, data.weight, data.index, chunk_size, data.mask, data.noise).centred(
        data.center
    )
    active = jnp.arange(n_components, dtype=n_active.dtype) < n_active
    solver = EM(reg_covar=reg_covar, active=active, reducer=reducer)

    def one_advance(state: LoopState) -> LoopState:
        return advance(solver, rows, state, tol, max_iter, budget)

    first = one_advance(restarts.first)
    others = None if restarts.others is None else map_groups(one_advance, restarts.others)
    states = jax.tree_util.tree_map(lambda a: a[None], first)
    if others is not None:
        states = jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a, b]), states, ungroup(others, n_init - 1)
        )
    result = best_restart(states, jax.vmap(lambda s: status(s, max_iter))(states), data.center)
    return Restarts(first, others), result, _summary(states, max_iter)


def _summary(states: LoopState, max_iter) -> Summary:
    """The :class:`Summary` of batched loop states (any leading axes)."""
    finite = jnp.where(states.finite, states.lower_bound, -jnp.inf)
    return Summary(
        running=jnp.any(running(states, max_iter)),
        n_iter=jnp.max(states.n_iter),
        lower_bound=jnp.max(finite),
    )


_BLOCK_STATIC = tuple(name for name in _STATIC_OPTIONS if name != "report_progress")


@jit(static_argnames=_BLOCK_STATIC)
def fit_start(
    X: jax.Array,
    sample_weight: jax.Array,
    row_index: jax.Array,
    key: jax.Array,
    reg_covar: jax.Array,
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
    sharding=None,
    matmul_precision: str = "highest",
) -> tuple[jax.Array, Restarts]:
    """Centre the data and initialise every restart (the first part of ``fit_compiled``).

    Args:
        X, sample_weight, row_index, key, reg_covar, n_active, weights_init,
            means_init, precisions_init, mask, noise: as in
            :func:`jaxgmm._driver.fit_compiled`.
        n_components, covariance_type, history_length, n_init, init, chunk_size,
            sharding, matmul_precision: its static options.

    Returns:
        The rows' weighted centre (D,) and :class:`Restarts` (every restart's loop
        state before its first iteration). The rows themselves are not returned (that
        would copy them): :func:`fit_advance` takes them again.
    """
    options = dict(
        key=key,
        reg_covar=reg_covar,
        n_active=n_active,
        inits=(weights_init, means_init, precisions_init),
        n_components=n_components,
        covariance_type=covariance_type,
        history_length=history_length,
        n_init=n_init,
        init=init,
        chunk_size=chunk_size,
    )
    with jax.default_matmul_precision(matmul_precision):
        if sharding is None:
            return _start_rows(
                X, sample_weight, row_index, reducer=IN_MEMORY, mask=mask, noise=noise, **options
            )
        rows_spec = PartitionSpec(sharding.axis)
        return jax.shard_map(
            partial(_start_rows, reducer=Sharded(axis_name=sharding.axis), **options),
            mesh=sharding.mesh,
            in_specs=(rows_spec, rows_spec, rows_spec),
            out_specs=(PartitionSpec(), PartitionSpec()),
            # The restarts are made equal on all devices by the reducer's all-reduces.
            check_vma=False,
        )(X, sample_weight, row_index)


@jit(static_argnames=_BLOCK_STATIC)
def fit_advance(
    X: jax.Array,
    sample_weight: jax.Array,
    row_index: jax.Array,
    mask: jax.Array | None,
    noise: jax.Array | None,
    center: jax.Array,
    restarts: Restarts,
    tol: jax.Array,
    reg_covar: jax.Array,
    max_iter: jax.Array,
    n_active: jax.Array,
    budget: jax.Array,
    *,
    n_components: int,
    covariance_type: str,
    history_length: int,
    n_init: int,
    init: str,
    chunk_size: int,
    sharding=None,
    matmul_precision: str = "highest",
) -> tuple[Restarts, FitResult, Summary]:
    """Run every unfinished restart for at most ``budget`` more EM iterations.

    Args:
        X, sample_weight, row_index, mask, noise: the rows given to :func:`fit_start`.
        center, restarts: from :func:`fit_start`; restarts from the previous
            ``fit_advance`` after the first block.
        tol, reg_covar, max_iter, n_active: as in :func:`jaxgmm._driver.fit_compiled`.
        budget: () int32, the most iterations any restart runs in this call (traced).
        n_components, ..., matmul_precision: :func:`fit_start`'s static options.

    Returns:
        The new restarts; the :class:`FitResult` of the best restart so far (K_pad
        components; restarts still running have ``Status.INTERRUPTED`` and are chosen
        only when no restart has finished); and a :class:`Summary`.
    """
    del covariance_type, history_length, init  # in the states' shapes and types
    options = dict(
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        n_active=n_active,
        budget=budget,
        n_components=n_components,
        n_init=n_init,
        chunk_size=chunk_size,
    )
    data = Data(X, sample_weight, row_index, center, mask, noise)
    with jax.default_matmul_precision(matmul_precision):
        if sharding is None:
            return _advance_rows(data, restarts, reducer=IN_MEMORY, **options)
        rows_spec = PartitionSpec(sharding.axis)
        data_spec = Data(rows_spec, rows_spec, rows_spec, PartitionSpec())
        return jax.shard_map(
            partial(_advance_rows, reducer=Sharded(axis_name=sharding.axis), **options),
            mesh=sharding.mesh,
            in_specs=(data_spec, PartitionSpec()),
            out_specs=PartitionSpec(),
            check_vma=False,
        )(data, restarts)


# ---------------------------------------------------------------------- many data sets


def _model_elements(static: dict, n_features: int, incomplete: bool = False) -> int:
    """Values one model's restarts hold per chunk (for vmapped groups of models)."""
    per_row = elements_per_row(
        static["n_components"], n_features, static["covariance_type"], incomplete
    )
    return static["n_init"] * static["chunk_size"] * per_row


def _start_models(X, sample_weight, keys, *own, static: dict, masked=False, **shared):
    """:func:`fit_many_start` on the models this program holds (all, or one shard's).

    ``own``: each model's (K, D) initial means, then its (N, D) mask (if ``masked``).
    """
    row_index = jnp.arange(X.shape[1], dtype=jnp.int32)
    reducer = IN_MEMORY
    statics = {name: static[name] for name in _BLOCK_STATIC if name != "sharding"}
    del statics["matmul_precision"]

    def start_one(member):
        x, w, key, *means = member
        mask = means.pop() if masked else None
        weights_init, means_init, precisions_init = shared["inits"]
        inits = (weights_init, means[0] if means else means_init, precisions_init)
        center, restarts = _start_rows(
            x,
            w,
            row_index,
            key=key,
            reg_covar=shared["reg_covar"],
            n_active=shared["n_active"],
            inits=inits,
            reducer=reducer,
            mask=mask,
            **statics,
        )
        return Data(x, w, row_index, center, mask), restarts

    members = (X, sample_weight, keys, *own)
    elements = _model_elements(static, X.shape[2], masked)
    return _unzip(map_groups(start_one, to_groups(members, elements)))


def _unzip(batch):
    """A (possibly grouped) batch of tuples as a tuple of (possibly grouped) batches."""
    if isinstance(batch, Grouped):
        return tuple(Grouped(part) for part in batch.members)
    return batch


def _zip(*batches):
    """The inverse of :func:`_unzip`."""
    if isinstance(batches[0], Grouped):
        return Grouped(tuple(batch.members for batch in batches))
    return batches


def _members(batch):
    """The arrays of a (possibly grouped) batch."""
    return batch.members if isinstance(batch, Grouped) else batch


def _advance_models(data, restarts, *, static: dict, n_models: int, axis, **shared):
    """:func:`fit_many_advance` on the models this program holds."""

    def advance_one(member):
        data, restarts = member
        return _advance_rows(
            data,
            restarts,
            reducer=IN_MEMORY,
            n_components=static["n_components"],
            n_init=static["n_init"],
            chunk_size=static["chunk_size"],
            **shared,
        )

    restarts, results, summaries = _unzip(map_groups(advance_one, _zip(data, restarts)))
    summaries = _members(summaries)
    summary = Summary(
        running=jnp.any(summaries.running),
        n_iter=jnp.max(summaries.n_iter),
        lower_bound=jnp.max(summaries.lower_bound),
    )
    if axis is not None:  # every device's models
        summary = Summary(
            running=jax.lax.pmax(summary.running.astype(jnp.int32), axis) > 0,
            n_iter=jax.lax.pmax(summary.n_iter, axis),
            lower_bound=jax.lax.pmax(summary.lower_bound, axis),
        )
    return restarts, ungroup(results, n_models), summary


@jit(static_argnames=_BLOCK_STATIC, models_axis=True)
def fit_many_start(
    X: jax.Array,
    sample_weight: jax.Array,
    keys: jax.Array,
    reg_covar: jax.Array,
    n_active: jax.Array,
    weights_init: jax.Array | None,
    means_init: jax.Array | None,
    precisions_init: jax.Array | None,
    mask: jax.Array | None = None,
    **static,
):
    """:func:`fit_start` for each of B data sets, in the groups ``fit_many_compiled`` uses.

    Args:
        X: (B, N, D); sample_weight: (B, N); keys: (B,) PRNG keys; the others as in
            :func:`jaxgmm._driver.fit_many_compiled` (``means_init`` may be (B, K, D);
            ``mask``: None or (B, N, D) observed-entry masks).
        **static: :func:`fit_start`'s static options (``sharding``: how the models
            axis is split over devices, or None).

    Returns:
        (data, restarts) of every model, grouped (:mod:`jaxgmm._batching`).
    """
    sharding = static["sharding"]
    batched_means = means_init is not None and means_init.ndim == 3
    shared = dict(
        reg_covar=reg_covar,
        n_active=n_active,
        inits=(weights_init, None if batched_means else means_init, precisions_init),
        static=static,
        masked=mask is not None,
    )
    members = (X, sample_weight, keys) + ((means_init,) if batched_means else ())
    members = members + ((mask,) if mask is not None else ())
    with jax.default_matmul_precision(static["matmul_precision"]):
        if sharding is None:
            return _start_models(*members, **shared)
        spec = PartitionSpec(sharding.axis)
        return jax.shard_map(
            partial(_start_models, **shared),
            mesh=sharding.mesh,
            in_specs=(spec,) * len(members),
            out_specs=spec,
            check_vma=False,
        )(*members)


@jit(static_argnames=(*_BLOCK_STATIC, "n_models"), models_axis=True)
def fit_many_advance(
    data,
    restarts,
    tol: jax.Array,
    reg_covar: jax.Array,
    max_iter: jax.Array,
    n_active: jax.Array,
    budget: jax.Array,
    *,
    n_models: int,
    **static,
):
    """:func:`fit_advance` for every model of :func:`fit_many_start`.

    Args:
        data, restarts: from :func:`fit_many_start` or the previous call.
        tol, reg_covar, max_iter, n_active, budget: as in :func:`fit_advance`.
        n_models: B (per device when the models axis is split).
        **static: :func:`fit_start`'s static options.

    Returns:
        The new restarts; a :class:`FitResult` with a leading (B,) axis; a
        :class:`Summary` over every model.
    """
    sharding = static["sharding"]
    shared = dict(tol=tol, reg_covar=reg_covar, max_iter=max_iter, n_active=n_active)
    shared["budget"] = budget
    with jax.default_matmul_precision(static["matmul_precision"]):
        if sharding is None:
            return _advance_models(
                data, restarts, static=static, n_models=n_models, axis=None, **shared
            )
        spec = PartitionSpec(sharding.axis)
        return jax.shard_map(
            partial(
                _advance_models,
                static=static,
                n_models=n_models // sharding.n_shards,
                axis=sharding.axis,
                **shared,
            ),
            mesh=sharding.mesh,
            in_specs=(spec, spec),
            out_specs=(spec, spec, PartitionSpec()),
            check_vma=False,
        )(data, restarts)
