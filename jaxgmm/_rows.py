"""The data as one pytree, and the reducers that sum functions of it.

Every pass over the data (centring, k-means, the E-step, scoring) is written once as a
function of one chunk of :class:`Rows` and handed to a reducer, which decides where
the rows live:

* :class:`InMemory`: all rows in this program, summed chunk by chunk with ``lax.scan``
  so intermediates stay chunk-sized;
* :class:`Sharded`: inside ``shard_map``, each device sums its own rows as
  :class:`InMemory` does, then one all-reduce (``psum``) over the mesh axis adds the
  devices' sums. Only these sums cross devices, never the rows.

A host-driven reducer for data streamed from disk plugs in at the same seam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgmm._stats import Stats


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows of a data set, split into equal chunks.

    Attributes:
        x: (N_chunks, C, D) rows (one chunk: (C, D)).
        weight: (N_chunks, C) non-negative sample weights; padding rows have 0.
        index: (N_chunks, C) int32 position of each row in the caller's data, so that
            per-row random draws do not depend on padding or on how rows are sharded.
        mask: None (every entry observed), or (N_chunks, C, D) bool, True where the
            entry is observed (missing entries are stored as the column's mean, so
            passes that ignore the mask read them as about 0 once centred).
        noise: None, or the rows' known measurement-noise covariances: (N_chunks, C, D)
            diagonal or (N_chunks, C, D, D) full (see :mod:`jaxgmm._incomplete`).
        offset: None, or (D,) subtracted from every row as it is read (the data's
            centre): the centred rows are never stored as a second (N, D) array.
    """

    x: jax.Array
    weight: jax.Array
    index: jax.Array
    mask: jax.Array | None = None
    offset: jax.Array | None = None
    noise: jax.Array | None = None

    @property
    def incomplete(self) -> bool:
        """Whether the rows carry a missing-value mask or noise covariances (static)."""
        return self.mask is not None or self.noise is not None

    @property
    def n_features(self) -> int:
        """D."""
        return self.x.shape[-1]

    def read(self, x: jax.Array) -> jax.Array:
        """Rows as the passes see them: ``x - offset``; (..., D) -> (..., D)."""
        return x if self.offset is None else x - self.offset

    def centred(self, offset: jax.Array) -> Rows:
        """The same rows read as ``x - offset``; offset: (D,)."""
        return dataclasses.replace(self, offset=offset)

    def flat(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(x (N, D) as stored, weight (N,), index (N,)), chunks concatenated.

        ``x`` is *not* read through :meth:`read` (that would store a centred copy):
        callers read the few rows they pick, or use :meth:`map_chunks`.
        """
        return (
            self.x.reshape(-1, self.n_features),
            self.weight.reshape(-1),
            self.index.reshape(-1),
        )

    def map_chunks(self, fn: Callable, masked: bool = False) -> jax.Array:
        """``fn(x)`` for every chunk of rows as read, concatenated; (C, D) -> (C, ...)
        per chunk, (N, ...) in all. Only one chunk is read at a time. With ``masked``,
        ``fn(x, mask)`` gets the chunk's (C, D) mask too."""
        if not masked:
            if self.x.shape[0] == 1:
                return fn(self.read(self.x[0]))
            out = jax.lax.map(lambda x: fn(self.read(x)), self.x)
            return out.reshape((-1,) + out.shape[2:])
        if self.x.shape[0] == 1:
            return fn(self.read(self.x[0]), self.mask[0])
        out = jax.lax.map(lambda c: fn(self.read(c[0]), c[1]), (self.x, self.mask))
        return out.reshape((-1,) + out.shape[2:])

    def chunks(self) -> tuple[jax.Array, ...]:
        """The stored arrays with a leading chunk axis, as ``lax.scan`` walks them
        (``x`` before :meth:`read`)."""
        return (self.x, self.weight, self.index)


def split_rows(
    X: jax.Array,
    weight: jax.Array,
    index: jax.Array,
    chunk_size: int,
    mask: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> Rows:
    """Chunk (N, D) rows with N a multiple of ``chunk_size`` into :class:`Rows`.

    Args:
        X: (N, D) rows; weight: (N,); index: (N,) int32 row positions.
        chunk_size: rows per chunk C (divides N).
        mask: None or (N, D) bool (True: observed); noise: None, (N, D) or (N, D, D).

    Returns:
        :class:`Rows` with (N / C, C, ...) arrays.
    """
    n_chunks = X.shape[0] // chunk_size

    def split(a):
        return None if a is None else a.reshape((n_chunks, chunk_size) + a.shape[1:])

    return Rows(
        x=split(X),
        weight=weight.reshape(n_chunks, chunk_size),
        index=index.reshape(n_chunks, chunk_size).astype(jnp.int32),
        mask=split(mask),
        noise=split(noise),
    )


def _first(chunks: tuple) -> tuple:
    """The first chunk of each stored array (None stays None)."""
    return tuple(None if a is None else a[0] for a in chunks)


def add(total, new):
    """total + new: :class:`Stats` exactly, around ``new``'s shift; other pytrees leafwise."""
    if isinstance(new, Stats):
        return new + total
    return jax.tree_util.tree_map(jnp.add, total, new)


@dataclasses.dataclass(frozen=True)
class InMemory:
    """Every row is in this program: sums run as a scan over chunks."""

    def sum(self, fn: Callable, rows: Rows, *, incomplete: bool = False):
        """Sum ``fn(x (C, D), weight (C,), index (C,))`` over every chunk of ``rows``
        (``x`` as :meth:`Rows.read` gives it).

        With ``incomplete``, ``fn`` also gets the chunk's ``mask`` (C, D) and ``noise``
        ((C, D), (C, D, D) or None), :class:`Rows`' missing-value and noise fields.
        """

        def read_chunk(x, weight, index, *extra):
            return fn(rows.read(x), weight, index, *extra)

        chunks = rows.chunks() + ((rows.mask, rows.noise) if incomplete else ())
        if rows.x.shape[0] == 1:
            return self.all_reduce(read_chunk(*_first(chunks)))
        shapes = jax.eval_shape(read_chunk, *_first(chunks))
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def add_chunk(total, chunk):
            return add(total, read_chunk(*chunk)), None

        total, _ = jax.lax.scan(add_chunk, zeros, chunks)
        return self.all_reduce(total)

    def all_reduce(self, tree):
        """The sum of ``tree`` over shards (here: itself)."""
        return tree

    def all_gather(self, x: jax.Array) -> jax.Array:
        """Every shard's ``x`` stacked along a new leading (S,) axis (S shards)."""
        return x[None]

    def shard_index(self) -> jax.Array:
        """This shard's position along the mesh axis, () int32."""
        return jnp.zeros((), jnp.int32)

    def is_first_shard(self) -> jax.Array:
        """() bool, true on exactly one shard (for side effects such as progress)."""
        return jnp.asarray(True)


@dataclasses.dataclass(frozen=True)
class Sharded(InMemory):
    """Rows split over the devices of a mesh axis; run inside ``shard_map`` over it.

    Attributes:
        axis_name: the mesh axis (or axes) the rows are split over.
    """

    axis_name: str | tuple[str, ...] = "data"

    def all_reduce(self, tree):
        """The sum of ``tree`` over every device of the axis (one all-reduce)."""
        if isinstance(tree, Stats):
            return tree.psum(self.axis_name)
        return jax.lax.psum(tree, self.axis_name)

    def all_gather(self, x: jax.Array) -> jax.Array:
        """Every device's ``x`` stacked along a new leading (S,) axis (S shards)."""
        return jax.lax.all_gather(x, self.axis_name)

    def shard_index(self) -> jax.Array:
        """This device's position along the axis."""
        return jax.lax.axis_index(self.axis_name).astype(jnp.int32)

    def is_first_shard(self) -> jax.Array:
        """True on the axis's first device."""
        return self.shard_index() == 0


IN_MEMORY = InMemory()
