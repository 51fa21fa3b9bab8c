"""Data read chunk by chunk for :func:`jaxgmm.fit_stream`: files, array-likes, iterators.

A source is opened once (:func:`open_source`) and then read in passes; each pass
yields host blocks of rows (and optional weights) in the source's own sizes.
:class:`ChunkStream` turns a pass into fixed-size, validated, padded chunks:

* a ``.npy`` path is read with plain ``seek``/``readinto`` calls at the offset its
  header gives (no whole-file mapping: only the chunk being read is held);
* an array-like with ``.shape``, ``.dtype`` and row slicing (a NumPy memmap, a zarr
  array, an h5py dataset) is sliced ``a[start:stop]``;
* a zero-argument callable returns a fresh iterator of ``(rows, D)`` arrays or
  ``(rows, weights)`` pairs for every pass.

Every error names the global row or the chunk it found, and says what to do.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy_format


class Chunk(NamedTuple):
    """One fixed-size chunk of rows as the compiled passes take it.

    Attributes:
        x: (C, D) rows in the compute dtype (centred already when ``centred``);
            padding rows (after ``n_rows``) copy the chunk's first row.
        weight: (C,) sample weights, 0 on padding rows.
        start: the global position of the chunk's first row.
        n_rows: real rows in the chunk (<= C).
        number: the chunk's position in the pass (0, 1, ...).
        mask: None, or (C, D) bool, True where observed (``nan_policy="marginalize"``:
            missing entries of ``x`` hold 0, rows with none observed have weight 0).
    """

    x: np.ndarray
    weight: np.ndarray
    start: int
    n_rows: int
    number: int
    mask: np.ndarray | None = None


def _check_dtype(dtype, what: str) -> np.dtype:
    """Numeric real dtypes only; -> the dtype."""
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(
            f"{what} has dtype {dtype}; fit_stream needs real numbers (float or int). "
            "Convert the data to float32 or float64 first."
        )
    return dtype


class NpyFile:
    """A 2-D C-ordered ``.npy`` file read block by block with plain reads.

    Args:
        path: the file; block_rows: rows per read.
    """

    def __init__(self, path, block_rows: int):
        self.path = os.fspath(path)
        self.block_rows = block_rows
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"fit_stream: no such file {self.path!r}.")
        with open(self.path, "rb") as f:
            try:
                version = npy_format.read_magic(f)
                read_header = (
                    npy_format.read_array_header_1_0
                    if version == (1, 0)
                    else npy_format.read_array_header_2_0
                )
                shape, fortran_order, dtype = read_header(f)
            except ValueError as err:
                raise ValueError(
                    f"{self.path!r} is not a readable .npy file ({err}). Save the data "
                    "with numpy.save, or pass an array-like or a callable instead."
                ) from None
            self.offset = f.tell()
        if len(shape) != 2:
            raise ValueError(
                f"{self.path!r} holds an array of shape {shape}; fit_stream needs (N, D) "
                "rows. Reshape it (e.g. X.reshape(-1, 1) for one feature) and save it again."
            )
        if fortran_order:
            raise ValueError(
                f"{self.path!r} is stored in Fortran (column-major) order, so its rows are "
                "not contiguous on disk. Save np.ascontiguousarray(X) instead."
            )
        self.dtype = _check_dtype(dtype, f"{self.path!r}")
        self.n_rows, self.n_features = (int(n) for n in shape)
        self.row_bytes = self.n_features * self.dtype.itemsize
        self._check_size()

    def _check_size(self) -> None:
        """Raise if the file holds fewer bytes than its header promises."""
        size = os.path.getsize(self.path)
        complete = (size - self.offset) // max(self.row_bytes, 1)
        if complete < self.n_rows:
            raise ValueError(
                f"{self.path!r} is truncated: its header promises {self.n_rows} rows of "
                f"{self.n_features} {self.dtype} values, but the file holds only {complete} "
                f"complete rows (row {complete} is the first missing one). The file was "
                "probably not written completely; write it again."
            )

    def blocks(self) -> Iterator[tuple[np.ndarray, None]]:
        """One pass: (rows, None) blocks of ``block_rows`` rows, read with ``readinto``."""
        self._check_size()
        with open(self.path, "rb", buffering=0) as f:
            for start in range(0, self.n_rows, self.block_rows):
                n = min(self.block_rows, self.n_rows - start)
                block = aligned_empty((n, self.n_features), self.dtype)
                f.seek(self.offset + start * self.row_bytes)
                view, got = memoryview(block).cast("B"), 0
                while got < view.nbytes:
                    read = f.readinto(view[got:])
                    if not read:
                        raise ValueError(
                            f"{self.path!r} ended at row {start + got // self.row_bytes} "
                            f"while reading rows {start}..{start + n - 1}: the file shrank "
                            "while fitting. Do not change the data during a fit."
                        )
                    got += read
                yield block, None


class ArraySource:
    """Any 2-D array-like with ``.shape``, ``.dtype`` and row slicing.

    Args:
        array: the rows; block_rows: rows per slice; sample_weight: None or an (N,)
            array-like sliced alongside.
    """

    def __init__(self, array, block_rows: int, sample_weight=None):
        shape = tuple(int(n) for n in array.shape)
        if len(shape) != 2:
            raise ValueError(
                f"fit_stream needs (N, D) rows; the array-like has shape {shape}. Reshape "
                "it (e.g. X.reshape(-1, 1) for one feature)."
            )
        self.array = array
        self.block_rows = block_rows
        self.dtype = _check_dtype(array.dtype, "the array-like")
        self.n_rows, self.n_features = shape
        self.sample_weight = sample_weight
        if sample_weight is not None and tuple(np.shape(sample_weight)) != (self.n_rows,):
            raise ValueError(
                f"sample_weight must have shape ({self.n_rows},), one weight per row, got "
                f"shape {tuple(np.shape(sample_weight))}."
            )

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """One pass: ``array[start:stop]`` blocks (and their weights)."""
        for start in range(0, self.n_rows, self.block_rows):
            stop = min(start + self.block_rows, self.n_rows)
            weight = None
            if self.sample_weight is not None:
                weight = np.asarray(self.sample_weight[start:stop])
            yield np.asarray(self.array[start:stop]), weight


class CallableSource:
    """A zero-argument callable returning a fresh iterator of chunks for every pass."""

    def __init__(self, make_iterator: Callable[[], object]):
        self.make_iterator = make_iterator
        self.n_rows = None
        self.n_features = None
        self.dtype = None

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """One pass: the callable's items as (rows, weights or None)."""
        items = self.make_iterator()
        try:
            items = iter(items)
        except TypeError:
            raise TypeError(
                "fit_stream's callable source must return an iterable of (rows, D) arrays "
                f"or (rows, weights) pairs, got {type(items).__name__}."
            ) from None
        for number, item in enumerate(items):
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise ValueError(
                        f"chunk {number} of the source is a tuple of {len(item)} items; "
                        "yield an array of rows or a (rows, weights) pair."
                    )
                rows, weight = item
                yield np.asarray(rows), None if weight is None else np.asarray(weight)
            else:
                yield np.asarray(item), None


def open_source(source, block_rows: int, sample_weight=None):
    """The reader for ``source`` (see the module docstring).

    Args:
        source: a ``.npy`` path, an array-like, or a zero-argument callable.
        block_rows: rows per read for paths and array-likes.
        sample_weight: None, or (N,) weights (paths and array-likes only).

    Returns:
        An object with ``blocks()``, ``n_rows``, ``n_features`` and ``dtype`` (the last
        three None for callables until the first pass has run).
    """
    if isinstance(source, (str, os.PathLike)):
        reader = NpyFile(source, block_rows)
        if sample_weight is not None:
            reader = _Weighted(reader, sample_weight)
        return reader
    if all(hasattr(source, name) for name in ("shape", "dtype", "__getitem__")):
        return ArraySource(source, block_rows, sample_weight)
    if callable(source):
        if sample_weight is not None:
            raise ValueError(
                "sample_weight cannot be combined with a callable source: yield "
                "(rows, weights) pairs from the iterator instead."
            )
        return CallableSource(source)
    raise TypeError(
        "fit_stream's source must be a path to a .npy file, an array-like with .shape, "
        ".dtype and row slicing, or a zero-argument callable returning an iterator of "
        f"chunks; got {type(source).__name__}."
    )


class _Weighted:
    """A path source with an (N,) weight array-like sliced alongside its blocks."""

    def __init__(self, reader: NpyFile, sample_weight):
        self.reader = reader
        self.n_rows, self.n_features, self.dtype = reader.n_rows, reader.n_features, reader.dtype
        if tuple(np.shape(sample_weight)) != (self.n_rows,):
            raise ValueError(
                f"sample_weight must have shape ({self.n_rows},), one weight per row, got "
                f"shape {tuple(np.shape(sample_weight))}."
            )
        self.sample_weight = sample_weight

    def blocks(self):
        """One pass of the file's blocks with their weights."""
        start = 0
        for rows, _ in self.reader.blocks():
            yield rows, np.asarray(self.sample_weight[start : start + len(rows)])
            start += len(rows)


def _checksum(rows: np.ndarray) -> int:
    """A cheap fingerprint of a block's bytes (its first 64 KiB)."""
    data = np.ascontiguousarray(rows).view(np.uint8).reshape(-1)[: 1 << 16]
    return zlib.crc32(data.tobytes())


class ChunkStream:
    """Passes over a source as fixed-size, validated, padded :class:`Chunk` s.

    Every pass checks each block's width, dtype and finiteness, its weights, and that
    the source gives the same number of rows and the same first block as the first
    pass did.

    Args:
        reader: from :func:`open_source`.
        chunk_rows: real rows per chunk (the last chunk may have fewer).
        device_rows: C >= chunk_rows, the rows of every chunk as passed on: chunks
            are padded to C with zero-weight rows, so one compiled program serves all.
        nan_policy: ``"raise"`` (a NaN is an error naming its row), ``"omit"``
            (rows with NaN are dropped as they are read; the first pass warns with
            their count, and every later pass must drop the same number) or
            ``"marginalize"`` (every chunk carries its observed-entry mask).
    """

    def __init__(
        self, reader, chunk_rows: int, device_rows: int | None = None, nan_policy: str = "raise"
    ):
        self.reader = reader
        self.nan_policy = nan_policy
        self.chunk_rows = chunk_rows
        self.device_rows = device_rows or chunk_rows
        self.n_rows = reader.n_rows
        self.n_features = reader.n_features
        self.dtype = reader.dtype
        self.passes = 0
        self._first = None  # (rows per pass, first block's checksum) of the first pass

    def chunks(self, dtype, offset: np.ndarray | None = None) -> Iterator[Chunk]:
        """One pass over the data as chunks in ``dtype``.

        Args:
            dtype: the compute dtype.
            offset: None, or (D,) float64 subtracted in float64 before the cast (for
                input more precise than the compute dtype).
        """
        number, start, checksum = 0, 0, None
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        have = read = omitted = 0  # rows kept in this chunk; rows read; rows dropped
        for block_number, (rows, weight) in enumerate(self.reader.blocks()):
            rows, weight = self._check_block(rows, weight, read, block_number)
            read += len(rows)
            if self.nan_policy == "omit":
                n_read = len(rows)
                rows, weight = _omit_nan_rows(rows, weight)
                omitted += n_read - len(rows)
            if checksum is None and len(rows):
                checksum = _checksum(rows)
            while len(rows):
                take = min(self.chunk_rows - have, len(rows))
                pending.append((rows[:take], None if weight is None else weight[:take]))
                rows, weight = rows[take:], None if weight is None else weight[take:]
                have += take
                if have == self.chunk_rows:
                    yield self._chunk(pending, start, number, dtype, offset)
                    start, number, pending, have = start + have, number + 1, [], 0
        if have:
            yield self._chunk(pending, start, number, dtype, offset)
            start += have
        self._end_pass(start, checksum, omitted)

    def _check_block(self, rows, weight, first_row: int, block_number: int):
        """Validate one block from the reader; -> (rows (r, D), weight (r,) float64 or
        None for all ones)."""
        where = f"chunk {block_number} of the source (global rows from {first_row})"
        if rows.ndim != 2:
            raise ValueError(f"{where} has shape {rows.shape}; every chunk must be 2-D (rows, D).")
        dtype = _check_dtype(rows.dtype, where)
        if self.n_features is None:
            self.n_features, self.dtype = rows.shape[1], dtype
        if rows.shape[1] != self.n_features:
            raise ValueError(
                f"{where} has {rows.shape[1]} columns, but earlier chunks have "
                f"{self.n_features}: every chunk must have the same number of features."
            )
        # A finite sum means every value is finite (NaN and inf propagate); only
        # otherwise (or on overflow) are the values checked one by one.
        if np.issubdtype(dtype, np.floating) and not np.isfinite(rows.sum()):
            # With nan_policy "omit" or "marginalize" NaN is allowed here, inf is not.
            nan_allowed = self.nan_policy != "raise"
            bad = np.isinf(rows) if nan_allowed else ~np.isfinite(rows)
            if bad.any():
                r, c = (int(i) for i in np.argwhere(bad)[0])
                if nan_allowed:
                    advice = f" (nan_policy='{self.nan_policy}' accepts NaN, not inf)."
                elif np.isnan(rows[r, c]):
                    advice = (
                        ", or pass nan_policy='omit' (drops rows with NaN) or "
                        "nan_policy='marginalize' (uses their observed entries)."
                    )
                else:
                    advice = "."
                raise ValueError(
                    f"{where} contains non-finite values (NaN or inf); the first is at "
                    f"global row {first_row + r}, column {c} (value {rows[r, c]}). Remove or "
                    "impute those rows before fitting" + advice
                )
        if weight is not None:
            weight = np.asarray(weight, np.float64).reshape(-1)
            if weight.shape != (len(rows),):
                raise ValueError(
                    f"{where} has {len(rows)} rows but {weight.size} weights; give one "
                    "weight per row."
                )
            bad = ~np.isfinite(weight) | (weight < 0)
            if bad.any():
                r = int(np.argmax(bad))
                raise ValueError(
                    f"{where} has an invalid sample weight {weight[r]} at global row "
                    f"{first_row + r}; weights must be finite numbers >= 0."
                )
        return rows, weight

    def _chunk(self, pieces, start: int, number: int, dtype, offset) -> Chunk:
        """Concatenate, centre/cast and pad one chunk (and mask its missing entries)."""
        rows = pieces[0][0] if len(pieces) == 1 else np.concatenate([p[0] for p in pieces])
        n = len(rows)
        mask = None
        if self.nan_policy == "marginalize":
            mask = aligned_empty((self.device_rows, rows.shape[1]), np.bool_)
            mask[:n] = ~np.isnan(rows)
            mask[n:] = mask[:1]
        if offset is not None:
            rows = rows.astype(np.float64) - offset
        full = n == self.device_rows
        if full and rows.dtype == dtype and rows.flags.c_contiguous and mask is None:
            x = rows  # a whole chunk as read: no copy
        else:
            x = aligned_empty((self.device_rows, rows.shape[1]), dtype)
            x[:n] = rows
            x[n:] = x[:1]
            if mask is not None:
                x[~mask] = 0  # the source's own array is never written
        if all(p[1] is None for p in pieces) and full and mask is None:
            w = self._ones(dtype)  # shared, never written
        else:
            w = aligned_empty((self.device_rows,), dtype)
            w[n:] = 0
            w[:n] = np.concatenate([np.ones(len(p[0])) if p[1] is None else p[1] for p in pieces])
            if mask is not None:
                w[:n][~mask[:n].any(axis=1)] = 0  # rows with no observed entry
        return Chunk(x, w, start, n, number, mask)

    def _ones(self, dtype) -> np.ndarray:
        """(C,) ones in ``dtype``, made once per stream."""
        ones = getattr(self, "_ones_cache", None)
        if ones is None or ones.dtype != dtype:
            ones = self._ones_cache = aligned_empty((self.device_rows,), dtype)
            ones[:] = 1
            ones.flags.writeable = False
        return ones

    def _end_pass(self, n_rows: int, checksum, omitted: int = 0) -> None:
        """Check the pass against the first one (row count, first block)."""
        self.passes += 1
        if n_rows == 0 and omitted:
            raise ValueError(
                f"Every row of the source ({omitted}) contains NaN, so nan_policy='omit' "
                "leaves no data; fill the missing values first, or fit in memory with "
                "jaxgmm.fit(..., nan_policy='marginalize')."
            )
        if n_rows == 0:
            raise ValueError(
                "the source gave no rows: fit_stream needs at least n_components rows. "
                "(A callable source must return a fresh iterator on every call.)"
            )
        if omitted and self.passes == 1:
            warnings.warn(
                f"nan_policy='omit': dropped {omitted} of {n_rows + omitted} rows of the "
                "source that contain NaN.",
                UserWarning,
                stacklevel=2,
            )
        if self._first is None:
            self._first = (n_rows, checksum)
            self.n_rows = n_rows
            return
        first_rows, first_checksum = self._first
        if n_rows != first_rows:
            raise ValueError(
                f"the source gave {n_rows} rows in pass {self.passes}, but {first_rows} in "
                "the first pass: the data changed while fitting (a callable source must "
                "give the same rows on every call)."
            )
        if checksum != first_checksum:
            raise ValueError(
                f"the first chunk of the source changed between passes (pass "
                f"{self.passes} differs from the first): the data must not change while "
                "fitting."
            )


def _omit_nan_rows(rows: np.ndarray, weight):
    """(rows, weight) without the rows that hold NaN (weight None: all ones)."""
    if not np.issubdtype(rows.dtype, np.floating) or np.isfinite(rows.sum()):
        return rows, weight  # a finite sum: no NaN (checked rows hold no inf)
    keep = ~np.isnan(rows).any(axis=1)
    if keep.all():
        return rows, weight
    return rows[keep], None if weight is None else np.asarray(weight).reshape(-1)[keep]


# jax.device_put of a NumPy array this aligned is zero-copy on the CPU (the device
# array uses the chunk's memory): one copy of every chunk less per pass.
_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data start on a :data:`_ALIGNMENT`-byte boundary."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n_bytes + _ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % _ALIGNMENT
    return raw[offset : offset + n_bytes].view(dtype).reshape(shape)


_DONE = object()


def read_ahead(chunks: Iterator, depth: int = 2) -> Iterator:
    """Iterate ``chunks`` on a background thread, at most ``depth`` items ahead.

    Exceptions raised while reading are re-raised in the consumer. Closing the
    returned generator (or an exception in the consumer) stops the thread.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in chunks:
                if not put((chunk, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # forwarded to the consumer
            put((_DONE, err))

    thread = threading.Thread(target=work, name="jaxgmm-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            try:  # short waits: Ctrl-C reaches the consumer between them
                item, err = items.get(timeout=0.1)
            except queue.Empty:
                if not thread.is_alive() and items.empty():
                    return
                continue
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)
