"""Shape buckets: many data sizes, few compiled programs.

Every new array shape compiles a new XLA program (about a second), while a small fit
runs in milliseconds. So the functional API pads its inputs to a few sizes before
anything is compiled:

* **rows** are padded with zero-weight rows (they change no sum) to the next size on
  a geometric grid with growth factor :data:`GROWTH` (1.5), so data sets of 500 and
  of 700 rows share one program, and padding never costs more than 1.5x the compute.
  Sizes above :data:`FINE_ABOVE_CHUNKS` chunks, and fits of at least
  :data:`FINE_WORK` (rows x features x components x restarts, x data sets for
  ``fit_many``), use a fine grid (at most 1/16 extra rows), because there the
  compute, not the compilation, is what a user waits for.
  Data of at least :data:`COPY_FREE_BYTES` are not padded at all (a padded copy
  would double the memory they take): their last chunk overlaps the one before it
  (:func:`jaxgmm._rows.overlapping_layout`), and each row count compiles its own
  program, which a fit of that size amortises.
* **components**: a single fit pads ``n_components`` to the next power of two with
  *inactive* components (weight exactly zero, never initialised, never updated,
  never chosen), so K = 5 and K = 6 share one program; on small data (N * D * D at
  most :data:`SMALL_ROW_WORK`) K = 1 to 4 share one program too, and on tiny data
  (at most :data:`TINY_ROW_WORK`) K = 1 to 8 do. The fitted
  parameters are sliced back to the true K before anything is returned.
* **covariance types**: on tiny data all four share one program, which holds every
  covariance as a full matrix and picks the type at run time
  (:class:`jaxgmm._covariance.Projected`).
* **iteration counts**: the ``history`` array has the next power of two of
  ``max_iter`` entries, and ``max_iter`` itself is a traced number, so changing it
  does not recompile.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxgmm._jit import jit

GROWTH = 1.5
# The row grid is ceil(SMALLEST_ROWS * GROWTH**i), rounded up to a multiple of ROW_ALIGN.
SMALLEST_ROWS = 8
ROW_ALIGN = 8
# Above this many chunks the grid steps by at most 1/FINE_STEPS of the size.
FINE_ABOVE_CHUNKS = 16
FINE_STEPS = 16
# Fits with rows x features x components x restarts at least this use the fine grid at
# every size. Such a fit runs ~0.05 s or more, and padding costs it more than the
# growth factor's share (same session, medians): scikit-learn's digits (1,797 x 64,
# K = 10, n_init = 10, spherical) padded to 2,400 rows took 146-152 ms, to 1,856 rows
# 93-101 ms (the restart groups also fit the cache better); W2 (2,000 x 2, K = 4,
# n_init = 256) padded to 2,400 rows 91-94 ms, to 2,048 rows 74-77 ms; W3 (fit_many,
# 1,000 x 500 x 2, K = 3) padded to 712 rows 122-125 ms, to 512 rows 90-92 ms.
FINE_WORK = 1 << 21
# Single fits of data this big (bytes) read the caller's rows unpadded.
COPY_FREE_BYTES = 1 << 27
# Problems with N * D * D at most this pad K <= 4 to 4, and at most TINY_ROW_WORK
# K <= 8 to 8 (see component_bucket).
SMALL_ROW_WORK = 1 << 20
SMALL_PROBLEM_MIN_COMPONENTS = 4
TINY_ROW_WORK = 1 << 14
TINY_PROBLEM_MIN_COMPONENTS = 8


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def row_layout(n_rows: int, max_chunk: int, work: int | None = None) -> tuple[int, int]:
    """Padded row count and rows per chunk for ``n_rows`` rows.

    Args:
        n_rows: N, the number of real rows (>= 1).
        max_chunk: the largest chunk the kernel wants (rows).
        work: a fit's :func:`fit_work`, if known: at least :data:`FINE_WORK` takes
            the fine grid at every size.

    Returns:
        (padded rows N_pad >= N, chunk rows C <= max_chunk) with N_pad a multiple of C;
        every N on the same grid step gets the same pair.
    """
    max_chunk = max(1, int(max_chunk))
    if n_rows > FINE_ABOVE_CHUNKS * max_chunk:
        n_chunks = -(-n_rows // max_chunk)
        step = 2 ** max(0, n_chunks.bit_length() - 1 - int(math.log2(FINE_STEPS)))
        return _round_up(n_chunks, step) * max_chunk, max_chunk
    if work is not None and work >= FINE_WORK:
        bucket = _fine_grid_rows(n_rows)
    else:
        bucket = _grid_rows(n_rows)
    n_chunks = -(-bucket // max_chunk)
    chunk = -(-bucket // n_chunks)
    return n_chunks * chunk, chunk


def copy_free(X, n_rows: int, chunk_size: int) -> bool:
    """Whether a fit reads ``X`` (N, D) unpadded: at least :data:`COPY_FREE_BYTES`
    of it, and at least one chunk of ``chunk_size`` rows."""
    big = np.size(X) * np.dtype(X.dtype).itemsize >= COPY_FREE_BYTES
    return big and n_rows >= chunk_size


def _grid_rows(n_rows: int) -> int:
    """The geometric grid's size for ``n_rows`` rows (before chunking)."""
    bucket = SMALLEST_ROWS
    while bucket < n_rows:
        bucket = math.ceil(bucket * GROWTH)
    return _round_up(bucket, ROW_ALIGN)


def _fine_grid_rows(n_rows: int) -> int:
    """The fine grid's size for ``n_rows`` rows: steps of at most 1/16 of the size."""
    step = 1 << max(0, n_rows.bit_length() - 1 - int(math.log2(FINE_STEPS)))
    return _round_up(n_rows, max(step, ROW_ALIGN))


def fit_work(n_rows: int, n_features: int, n_components: int, n_fits: int) -> int:
    """Rows x features x components x fits (restarts, times data sets for ``fit_many``):
    the ``work`` that :func:`row_layout` compares with :data:`FINE_WORK`."""
    return int(n_rows) * int(n_features) * int(n_components) * int(n_fits)


def row_work(n_rows: int, n_features: int) -> int:
    """N * D * D of ``n_rows`` rows padded to their grid size, for :func:`component_bucket`.

    Taken at the grid size, not at N, so that every row count of one row bucket gets
    the same component bucket (one program per row bucket, not two).
    """
    return _grid_rows(n_rows) * n_features * n_features


def component_bucket(n_components: int, row_work: int | None = None) -> int:
    """The padded component count of a single fit.

    The next power of two up to 8 (1, 2, 4, 8: few programs for small-K sweeps), then
    the next multiple of 4 (12, 16, 20, ...), so padding never costs more than 1.33x
    the compute of the true K above 8 (K = 10 pads to 12, not 16). Small problems
    (``row_work`` at most :data:`SMALL_ROW_WORK`) pad K <= 4 to 4: there each compiled
    program costs about a second and an iteration microseconds, so a sweep over
    K = 1..6 compiles two programs per covariance type instead of four. Tiny problems
    (at most :data:`TINY_ROW_WORK`, e.g. 1,000 rows in 4-D) pad K <= 8 to 8: one
    program per covariance type for K = 1..8, where a fit's time is the program's
    fixed per-operation cost, not its arithmetic.

    Args:
        n_components: the true K.
        row_work: :func:`row_work` of the data times the number of restarts (the
            per-component work of one pass), if known.
    """
    n_components = int(n_components)
    if n_components <= 8:
        bucket = 1 << max(0, n_components - 1).bit_length()
        if row_work is not None and row_work <= TINY_ROW_WORK:
            bucket = max(bucket, TINY_PROBLEM_MIN_COMPONENTS)
        elif row_work is not None and row_work <= SMALL_ROW_WORK:
            bucket = max(bucket, SMALL_PROBLEM_MIN_COMPONENTS)
        return bucket
    return -(-n_components // 4) * 4


def history_length(max_iter: int) -> int:
    """Length of the compiled ``history`` array: the next power of two >= ``max_iter``."""
    return 1 << max(0, int(max_iter) - 1).bit_length()


def first_rows(values: jax.Array, n_rows: int) -> jax.Array:
    """``values[:n_rows]`` of a concrete array, cut on the host.

    Eager indexing would compile a small slicing program for every new ``n_rows``;
    the copy through host memory costs microseconds for the outputs sliced here.
    The result is placed as ``values`` was (e.g. replicated over a mesh). Arrays
    spread over several processes are cut by a compiled slice instead (a host copy
    would have to be checked equal on every process). Traced values (the caller's
    jit, vmap or grad, e.g. over parameters) are sliced in the trace.
    """
    if isinstance(values, jax.core.Tracer):
        return values[:n_rows]
    if isinstance(values, jax.Array) and not values.is_fully_addressable:
        return jit(lambda v: v[:n_rows], out_shardings=values.sharding)(values)
    return jax.device_put(np.asarray(values)[:n_rows], _placement(values))


def _placement(values):
    """Where a host copy of ``values`` goes back to: its sharding if it spans devices."""
    sharding = getattr(values, "sharding", None)
    if sharding is None or len(sharding.device_set) == 1:
        return None
    return sharding
