"""Data sharded over devices: finding how rows are split, and padding them per shard.

A ``jax.Array`` whose rows (axis 0) are split over a mesh axis by a ``NamedSharding``
is fitted where it lives: the compiled program runs under ``shard_map``, each device
sums statistics of its own rows, and only the statistics cross devices (see
:class:`jaxgmm._rows.Sharded`). Each shard is padded on its own device to the same
bucketed length with zero-weight copies of its first row, so no row moves.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxgmm._jit import jit


@dataclasses.dataclass(frozen=True)
class RowSharding:
    """How a program's rows (or models) are split over the devices of a mesh (static).

    Attributes:
        mesh: the ``jax.sharding.Mesh`` (or abstract mesh, under the user's ``jit``).
        axis: the mesh axis name (or tuple of names) the leading dimension is split over.
        n_shards: the number of devices along ``axis``.
    """

    mesh: Any
    axis: Any
    n_shards: int

    def named(self) -> NamedSharding:
        """The ``NamedSharding`` that splits the leading axis this way."""
        return NamedSharding(self.mesh, PartitionSpec(self.axis))


def leading_axis_sharding(x, name: str = "X") -> RowSharding | None:
    """How ``x``'s leading axis is split over devices, or None (one device, or numpy).

    Works for concrete arrays (their ``.sharding``) and, under the user's ``jit``, for
    tracers whose type carries the sharding (meshes with Explicit axes, the default of
    ``jax.make_mesh``).

    Raises:
        ValueError: other axes are split too (only rows, or models, may be).
    """
    if isinstance(x, jax.core.Tracer):
        sharding = getattr(jax.typeof(x), "sharding", None)
    elif isinstance(x, jax.Array):
        sharding = x.sharding
    else:
        return None
    if not isinstance(sharding, NamedSharding) or len(sharding.spec) == 0:
        return None
    axis = sharding.spec[0]
    if any(entry is not None for entry in sharding.spec[1:]):
        raise ValueError(
            f"{name} is split over devices along more than its first axis (spec "
            f"{sharding.spec}); jaxgmm splits data along its first axis only. Use "
            f"NamedSharding(mesh, PartitionSpec({axis!r})) instead."
        )
    if axis is None:
        return None
    names = axis if isinstance(axis, tuple) else (axis,)
    n_shards = math.prod(sharding.mesh.shape[a] for a in names)
    if n_shards == 1:
        return None
    return RowSharding(mesh=sharding.mesh, axis=axis, n_shards=n_shards)


def _pad_shards(X, sample_weight, *, n_shards: int, local_rows: int):
    """Pad each shard's rows to ``local_rows`` with zero-weight copies of its first row.

    Args:
        X: (S * R, D) rows, R per shard; sample_weight: (S * R,).

    Returns:
        X: (S * local_rows, D), weights and row positions (S * local_rows,), the
        positions of padding rows being N and above.
    """
    n_rows, n_features = X.shape
    per_shard = n_rows // n_shards
    # Combined with a column of X, weights and positions take X's row sharding
    # (under the user's jit, explicit sharding types follow X).
    row_shaped = jnp.zeros_like(X[:, 0])
    index = row_shaped.astype(jnp.int32) + jnp.arange(n_rows, dtype=jnp.int32)
    sample_weight = row_shaped + jnp.asarray(sample_weight, X.dtype)
    index = index.reshape(n_shards, per_shard)
    X = X.reshape(n_shards, per_shard, n_features)
    sample_weight = sample_weight.reshape(n_shards, per_shard)
    pad = local_rows - per_shard
    if pad:
        X = jnp.concatenate([X, jnp.broadcast_to(X[:, :1], (n_shards, pad, n_features))], 1)
        sample_weight = jnp.concatenate([sample_weight, jnp.zeros((n_shards, pad), X.dtype)], 1)
        extra = n_rows + jnp.arange(n_shards * pad, dtype=jnp.int32).reshape(n_shards, pad)
        index = jnp.concatenate([index, extra], 1)
    return (
        X.reshape(n_shards * local_rows, n_features),
        sample_weight.reshape(-1),
        index.reshape(-1),
    )


@functools.lru_cache(maxsize=64)
def _pad_shards_program(sharding: RowSharding, local_rows: int):
    """The compiled padding for one layout, its outputs split like its input."""
    out = sharding.named()
    pad = partial(_pad_shards, n_shards=sharding.n_shards, local_rows=local_rows)
    return jit(pad, out_shardings=(out, out, out))


def pad_sharded_rows(X, sample_weight, sharding: RowSharding, local_rows: int):
    """Pad every shard of row-sharded data to ``local_rows`` rows, where it lives.

    Args:
        X: (N, D) rows split evenly over ``sharding``; sample_weight: (N,).
        sharding: how the rows are split; local_rows: rows per shard after padding.

    Returns:
        X: (S * local_rows, D), sample_weight and row positions (S * local_rows,), all
        split over the same devices.
    """
    if isinstance(X, jax.core.Tracer):
        return _pad_shards(X, sample_weight, n_shards=sharding.n_shards, local_rows=local_rows)
    return _pad_shards_program(sharding, local_rows)(X, sample_weight)


def _unpad_shards(values, *, n_shards: int, per_shard: int):
    """Drop each shard's padding rows; (S * R', ...) -> (S * per_shard, ...)."""
    shaped = values.reshape((n_shards, -1) + values.shape[1:])[:, :per_shard]
    return shaped.reshape((n_shards * per_shard,) + values.shape[1:])


@functools.lru_cache(maxsize=64)
def _unpad_shards_program(sharding: RowSharding, per_shard: int):
    """The compiled un-padding for one layout, its output split like its input."""
    unpad = partial(_unpad_shards, n_shards=sharding.n_shards, per_shard=per_shard)
    return jit(unpad, out_shardings=sharding.named())


def unpad_sharded_rows(values, sharding: RowSharding, per_shard: int):
    """Per-row outputs of padded shards, back to the caller's rows (split the same way).

    Args:
        values: (S * R', ...) per-row outputs, R' rows per shard after padding.
        sharding: how the rows are split; per_shard: the caller's rows per shard.

    Returns:
        (S * per_shard, ...) outputs.
    """
    if values.shape[0] == sharding.n_shards * per_shard:
        return values
    if isinstance(values, jax.core.Tracer):
        return _unpad_shards(values, n_shards=sharding.n_shards, per_shard=per_shard)
    return _unpad_shards_program(sharding, per_shard)(values)


def shard_rows(X, mesh, axis: str = "data", sample_weight=None):
    """Split (N, D) rows over a mesh axis, padding N to a multiple of its devices.

    JAX cannot split N rows evenly over S devices when S does not divide N; this pads
    with zero-weight copies of row 0 (which change no fit or score) and returns the
    weights that mark them.

    Args:
        X: (N, D) array-like; mesh: a ``jax.sharding.Mesh``; axis: its axis name.
        sample_weight: None (all ones) or (N,) weights.

    Returns:
        X: (N', D) and sample_weight: (N',), N' the next multiple of the device count,
        both split over ``axis``.
    """
    X = np.asarray(X)
    weights = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, float)
    n_shards = mesh.shape[axis]
    pad = -len(X) % n_shards
    if pad:
        X = np.concatenate([X, np.broadcast_to(X[:1], (pad,) + X.shape[1:])])
        weights = np.concatenate([weights, np.zeros(pad)])
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return jax.device_put(X, sharding), jax.device_put(weights.astype(X.dtype), sharding)
