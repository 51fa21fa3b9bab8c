"""Many independent fits in one program: ``vmap`` within cache-sized groups, groups in turn.

A plain ``jax.vmap`` over restarts or data sets makes every E-step operation act on
the whole batch at once; once the batch's per-chunk intermediates outgrow the CPU's
caches each operation runs from memory (measured: 256 small restarts cost 11x more
per iteration than 64, not 4x). Running the batch as consecutive vmapped groups
(``lax.map`` over groups of ``vmap``) keeps each group's intermediates around
:data:`~jaxgmm._chunking.CHUNK_ELEMENTS` values, and each group's ``while_loop``s stop
at the slowest member *of that group* instead of the slowest of all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgmm._chunking import CHUNK_ELEMENTS
from jaxgmm._group_trace import tracing_group_members


def group_size(n_members: int, elements_per_member: int) -> int:
    """Members per vmapped group: intermediates ~2 MiB, groups balanced.

    Args:
        n_members: batch size B.
        elements_per_member: values one member's largest per-chunk intermediate holds.

    Returns:
        Group size G, 1 <= G <= B; ceil(B / G) groups pad the batch by fewer members
        than there are groups.
    """
    largest = max(1, CHUNK_ELEMENTS // max(1, elements_per_member))
    n_groups = -(-n_members // largest)
    return -(-n_members // n_groups)


def map_in_groups(fn: Callable, xs, elements_per_member: int):
    """``jax.vmap(fn)(xs)``, computed as consecutive vmapped groups of members.

    Args:
        fn: maps one member (a slice of every leaf of ``xs``) to a pytree.
        xs: pytree of arrays with the batch axis (B, ...) first.
        elements_per_member: see :func:`group_size`.

    Returns:
        The pytree of outputs, each with a leading (B,) axis, as ``jax.vmap`` gives.
    """
    n_members = jax.tree_util.tree_leaves(xs)[0].shape[0]
    return ungroup(map_groups(fn, to_groups(xs, elements_per_member)), n_members)


def to_groups(xs, elements_per_member: int):
    """Split a batch into equal groups: every leaf (B, ...) -> (n_groups, G, ...).

    The last group is padded with copies of the first member (valid inputs, their
    results to be dropped), so every group has the same size and one group program
    is compiled, not two. A batch that fits in one group stays (B, ...) as it is.

    Args:
        xs: pytree of arrays with the batch axis (B, ...) first.
        elements_per_member: see :func:`group_size`.

    Returns:
        A :class:`Grouped` pytree (or ``xs`` itself: one group), for :func:`map_groups`
        and :func:`ungroup`.
    """
    n_members = jax.tree_util.tree_leaves(xs)[0].shape[0]
    size = group_size(n_members, elements_per_member)
    if size >= n_members:
        return xs
    n_groups = -(-n_members // size)
    pad = n_groups * size - n_members
    if pad:
        xs = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), xs
        )
    return Grouped(jax.tree_util.tree_map(lambda a: a.reshape((n_groups, size) + a.shape[1:]), xs))


def map_groups(fn: Callable, groups, *consts):
    """``fn`` on every member of a :func:`to_groups` batch: groups in turn, each vmapped.

    Args:
        fn: ``fn(member, *consts)`` -> pytree.
        groups: the output of :func:`to_groups` (or of an earlier ``map_groups``).
        *consts: arguments shared by every member.

    Returns:
        The outputs, grouped as ``groups`` is.
    """
    batched = jax.vmap(fn, in_axes=(0,) + (None,) * len(consts))
    with tracing_group_members():
        if not isinstance(groups, Grouped):
            return batched(groups, *consts)
        return Grouped(jax.lax.map(lambda group: batched(group, *consts), groups.members))


def ungroup(groups, n_members: int):
    """The (B, ...) batch of a :func:`to_groups` pytree, padding members dropped."""
    if not isinstance(groups, Grouped):
        return groups
    # Explicit shapes: outputs may have zero-size axes (e.g. history with max_iter = 0).
    return jax.tree_util.tree_map(
        lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])[:n_members], groups.members
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Grouped:
    """A batch split into groups: every leaf of ``members`` is (n_groups, G, ...)."""

    members: object


def cond_any(pred: jax.Array, true_fn: Callable, false_fn: Callable, *operands):
    """``lax.cond(pred, true_fn, false_fn, *operands)`` that stays a branch under ``vmap``.

    A batched ``lax.cond`` becomes a ``select``: every member computes both branches,
    every time. Here the batched form computes ``false_fn`` for the batch when no
    member's predicate holds, ``true_fn`` when every member's does, and both (taking
    each member's own branch) otherwise.
    Members get exactly the values they would get unbatched. ``true_fn`` and
    ``false_fn`` must not close over batched values: pass them as ``operands``.

    Args:
        pred: () bool.
        true_fn, false_fn: functions of ``*operands`` returning pytrees of one structure.
        *operands: the branches' inputs.

    Returns:
        The chosen branch's output.
    """

    @jax.custom_batching.custom_vmap
    def branch(pred, *operands):
        return jax.lax.cond(pred, true_fn, false_fn, *operands)

    @branch.def_vmap
    def batched_branch(axis_size, in_batched, pred, *operands):
        pred_batched, *operands_batched = in_batched
        axes = [jax.tree_util.tree_map(lambda b: 0 if b else None, b) for b in operands_batched]
        batched_true = jax.vmap(true_fn, in_axes=axes, axis_size=axis_size)
        batched_false = jax.vmap(false_fn, in_axes=axes, axis_size=axis_size)
        preds = pred if pred_batched else jnp.broadcast_to(pred, (axis_size,))

        def both(*operands):
            taken, other = batched_true(*operands), batched_false(*operands)
            return jax.tree_util.tree_map(
                lambda t, f: jnp.where(preds.reshape((-1,) + (1,) * (t.ndim - 1)), t, f),
                taken,
                other,
            )

        def some(*operands):  # every member's own branch; true_fn alone when all take it
            return jax.lax.cond(jnp.all(preds), batched_true, both, *operands)

        out = jax.lax.cond(jnp.any(preds), some, batched_false, *operands)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return branch(pred, *operands)
