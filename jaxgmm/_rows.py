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
import numpy as np

from jaxgmm._stats import Stats


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows of a data set, split into equal chunks.

    Big data are not padded to whole chunks (the copy would double their memory):
    then ``x`` (and ``mask``, ``noise``) hold the caller's N rows as they are, and the
    last chunk is read as the last C rows, overlapping the chunk before it; the rows
    read twice have weight 0 in that chunk (see :func:`overlapping_layout`).

    Attributes:
        x: (N_chunks, C, D) rows (one chunk: (C, D)), or (N, D) with
            (N_chunks - 1) * C < N < N_chunks * C (the overlapping layout).
        weight: (N_chunks, C) non-negative sample weights; padding rows have 0.
        index: (N_chunks, C) int32 position of each row in the caller's data, so that
            per-row random draws do not depend on padding or on how rows are sharded.
        mask: None (every entry observed), or (N_chunks, C, D) bool (like ``x``:
            (N, D) in the overlapping layout), True where the
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

    @property
    def overlapping(self) -> bool:
        """Whether the rows are stored unpadded, the last chunk overlapping (static)."""
        return self.x.ndim == 2

    def read(self, x: jax.Array) -> jax.Array:
        """Rows as the passes see them: ``x - offset``; (..., D) -> (..., D)."""
        return x if self.offset is None else x - self.offset

    def centred(self, offset: jax.Array) -> Rows:
        """The same rows read as ``x - offset``; offset: (D,)."""
        return dataclasses.replace(self, offset=offset)

    def flat(self) -> tuple[jax.Array, jax.Array]:
        """(weight (M,), index (M,)) of every chunk's positions, chunks concatenated
        (M = N_chunks * C); :meth:`take` reads the rows at such positions."""
        return self.weight.reshape(-1), self.index.reshape(-1)

    def take(self, position: jax.Array) -> jax.Array:
        """The stored rows at positions of :meth:`flat`; (T,) -> (T, D).

        Not read through :meth:`read` (callers centre the few rows they pick).
        """
        if not self.overlapping:
            return self.x.reshape(-1, self.n_features)[position]
        n_chunks, chunk = self.weight.shape
        shift = n_chunks * chunk - self.x.shape[0]
        return self.x[jnp.where(position >= (n_chunks - 1) * chunk, position - shift, position)]

    def _chunk_of(self, a: jax.Array | None, i: jax.Array) -> jax.Array | None:
        """Chunk ``i`` of an unpadded row array (x, mask or noise): rows
        [min(i C, N - C), +C)."""
        if a is None:
            return None
        chunk = self.weight.shape[1]
        start = jnp.minimum(i * chunk, a.shape[0] - chunk)
        return jax.lax.dynamic_slice_in_dim(a, start, chunk, axis=0)

    def chunks(self, incomplete: bool = False) -> tuple:
        """What ``lax.scan`` walks, one leading-axis entry per chunk; :meth:`unpack`
        turns one entry into the chunk's arrays."""
        if self.overlapping:
            return (jnp.arange(self.weight.shape[0]), self.weight, self.index)
        extra = (self.mask, self.noise) if incomplete else ()
        return (self.x, self.weight, self.index, *extra)

    def unpack(self, entry: tuple, incomplete: bool = False) -> tuple:
        """(x (C, D) as stored, weight (C,), index (C,)[, mask, noise]) of one entry
        of :meth:`chunks`."""
        if not self.overlapping:
            return entry
        i, weight, index = entry
        extra = (self._chunk_of(self.mask, i), self._chunk_of(self.noise, i)) if incomplete else ()
        return (self._chunk_of(self.x, i), weight, index, *extra)

    def per_chunk(self, *per_row: jax.Array) -> tuple[jax.Array, ...]:
        """(M, ...) arrays at the positions of :meth:`flat` -> (N_chunks, C, ...)."""
        return tuple(a.reshape(self.weight.shape + a.shape[1:]) for a in per_row)

    def map_chunks(self, fn: Callable, masked: bool = False, per_row: tuple = ()) -> jax.Array:
        """``fn(x)`` for every chunk of rows as read, concatenated; (C, D) -> (C, ...)
        per chunk, (M, ...) in all, at the positions of :meth:`flat`. Only one chunk
        is read at a time. With ``masked``, ``fn(x, mask)`` gets the chunk's (C, D)
        mask too; ``per_row`` arrays ((M, ...), at the positions of :meth:`flat`)
        follow as their (C, ...) chunks."""

        def one(entry):
            entry, more = entry
            x, _, _, *extra = self.unpack(entry, incomplete=masked)
            return fn(self.read(x), *extra[:1], *more)

        entries = (self.chunks(incomplete=masked), self.per_chunk(*per_row))
        if self.weight.shape[0] == 1:
            return one(_first(entries))
        out = jax.lax.map(one, entries)
        return out.reshape((-1,) + out.shape[2:])


def split_rows(
    X: jax.Array,
    weight: jax.Array,
    index: jax.Array,
    chunk_size: int,
    mask: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> Rows:
    """Chunk (N, D) rows into :class:`Rows`.

    Args:
        X: (N, D) rows; weight: (M,); index: (M,) int32 row positions, M a multiple
            of ``chunk_size``. N = M: the rows are reshaped into chunks. N < M: the
            overlapping layout (weight and index from :func:`overlapping_layout`).
        chunk_size: rows per chunk C.
        mask: None or (N, D) bool (True: observed); noise: None, (N, D) or (N, D, D).

    Returns:
        :class:`Rows` with (M / C, C) weights and indices.
    """
    n_chunks = weight.shape[0] // chunk_size
    chunked = X.shape[0] == weight.shape[0]
    if not chunked and not (n_chunks - 1) * chunk_size < X.shape[0] < weight.shape[0]:
        raise ValueError(f"{X.shape[0]} rows do not fit {n_chunks} chunks of {chunk_size}")

    def split(a):
        if a is None or not chunked:
            return a
        return a.reshape((n_chunks, chunk_size) + a.shape[1:])

    return Rows(
        x=split(X),
        weight=weight.reshape(n_chunks, chunk_size),
        index=index.reshape(n_chunks, chunk_size).astype(jnp.int32),
        mask=split(mask),
        noise=split(noise),
    )


def overlapping_layout(weight, n_rows: int, chunk_size: int) -> tuple:
    """Weights and row positions of N unpadded rows in whole chunks, the last chunk
    being the last C rows (see :class:`Rows`).

    Args:
        weight: (N,) the rows' weights (NumPy or JAX); n_rows: N, with
            C <= N; chunk_size: C.

    Returns:
        (weight (M,), index (M,) int32) with M = ceil(N / C) * C; the last chunk's
        first M - N entries (rows also in the chunk before) have weight 0.
    """
    xp = np if isinstance(weight, np.ndarray) else jnp
    n_chunks = -(-n_rows // chunk_size)
    before = (n_chunks - 1) * chunk_size
    repeated = n_chunks * chunk_size - n_rows
    weight = xp.concatenate([weight[:before], xp.zeros(repeated, weight.dtype), weight[before:]])
    index = np.concatenate([np.arange(before), np.arange(n_rows - chunk_size, n_rows)])
    return weight, index.astype(np.int32)


def _first(chunks):
    """The first chunk of each stored array in a pytree (None stays None)."""
    return jax.tree_util.tree_map(lambda a: a[0], chunks)


def add(total, new):
    """total + new: :class:`Stats` exactly, around ``new``'s shift; other pytrees leafwise."""
    if isinstance(new, Stats):
        return new + total
    return jax.tree_util.tree_map(jnp.add, total, new)


@dataclasses.dataclass(frozen=True)
class InMemory:
    """Every row is in this program: sums run as a scan over chunks."""

    def sum(self, fn: Callable, rows: Rows, *, incomplete: bool = False, per_row: tuple = ()):
        """Sum ``fn(x (C, D), weight (C,), index (C,))`` over every chunk of ``rows``
        (``x`` as :meth:`Rows.read` gives it).

        With ``incomplete``, ``fn`` also gets the chunk's ``mask`` (C, D) and ``noise``
        ((C, D), (C, D, D) or None), :class:`Rows`' missing-value and noise fields.
        ``per_row`` arrays ((M, ...), at the positions of :meth:`Rows.flat`) follow
        as their (C, ...) chunks.
        """

        def read_chunk(entry):
            entry, more = entry
            x, weight, index, *extra = rows.unpack(entry, incomplete)
            return fn(rows.read(x), weight, index, *extra, *more)

        chunks = (rows.chunks(incomplete), rows.per_chunk(*per_row))
        if rows.weight.shape[0] == 1:
            return self.all_reduce(read_chunk(_first(chunks)))
        shapes = jax.eval_shape(read_chunk, _first(chunks))
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def add_chunk(total, entry):
            return add(total, read_chunk(entry)), None

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
