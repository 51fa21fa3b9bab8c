"""``jaxgmm.fit_stream``: exact EM over data read from disk chunk by chunk.

The streamed reducer of the engine (:mod:`jaxgmm._rows`): a short host loop reads
the data in fixed-size chunks (:mod:`jaxgmm._sources`, on a background thread),
copies each to the device ahead of use, and calls one jitted function per chunk that
adds the chunk's statistics, for every restart, to running totals. Within a chunk the
rows are summed by the in-memory reducer, so every per-chunk function is the one
``jaxgmm.fit`` uses: the EM iteration is the same computation, with the sum over
chunks driven from Python. Each EM iteration is one pass over the data (plus, rarely,
the exact pass :func:`jaxgmm._em.lost_precision` asks for, as ``fit`` does).

Passes of a fit:

1. a scan: row count, weighted centre and variance (each chunk's sums on the device,
   their totals in float64 on the host), range checks, and a uniform sample of
   :func:`sample_size` rows (bottom-k of per-row random priorities, so it does not
   depend on the chunk size);
2. initialisation: k-means++ / ``random_from_data`` seeds and k-means (Lloyd) run on
   the sample in memory; ``kmeans`` then continues Lloyd over the stream (one pass
   per step) until the centres move less than k-means' tolerance; one more pass gives
   the initial M-step. When the sample holds every row, this is ``fit``'s
   initialisation exactly;
3. EM: one pass per iteration for all ``n_init`` restarts together.

After every iteration the loop states are checkpointed (write, then rename).
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._batching import map_in_groups
from jaxgmm._buckets import first_rows, history_length
from jaxgmm._checkpoint import fingerprint, load_checkpoint, save_checkpoint
from jaxgmm._covariance import covariance_model
from jaxgmm._driver import _apply_user_init, best_restart, restart_elements, restart_keys
from jaxgmm._em import exact_e_step, lost_precision, m_step
from jaxgmm._fit import _ill_defined_message, _max_chunk
from jaxgmm._fit_progress import fit_progress, report_iteration
from jaxgmm._init import (
    _top_rows_by_gumbel,
    kmeans_centers,
    kmeans_plusplus,
    lloyd_sums,
    lloyd_tolerance,
    lloyd_update,
    nearest_center,
    random_responsibilities,
)
from jaxgmm._iterate import LoopState, record, running, start, status
from jaxgmm._jit import jit
from jaxgmm._keys import as_key
from jaxgmm._options import DEFAULTS, FitOptions
from jaxgmm._params import FitResult, GaussianMixtureParams, Status
from jaxgmm._progress import progress_bar
from jaxgmm._rows import IN_MEMORY, add, split_rows
from jaxgmm._solver import EM
from jaxgmm._sources import ChunkStream, open_source, read_ahead
from jaxgmm._stats import assigned_stats
from jaxgmm._validation import (
    _check_range,
    _warn_if_unresolved,
    check_initial_params,
    check_key,
    check_n_samples,
    compute_dtype,
    mark_checked,
)

# A chunk read from disk holds about this many values (16 MiB in float32): large
# enough that the host's per-chunk work is negligible, small enough that the few
# chunks alive at once (read ahead, on the device, being summed) stay well below
# the memory a fit may use.
CHUNK_VALUES = 2**22
# Lloyd steps over the stream (after k-means has converged on the sample).
_LLOYD_MAX_PASSES = 300


def sample_size(n_rows: int, n_components: int) -> int:
    """Rows sampled for seeding: min(N, max(10_000, 100 K))."""
    return int(min(n_rows, max(10_000, 100 * n_components)))


def _key_words(key) -> np.ndarray:
    """The uint32 words of a JAX key (new-style or raw)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, np.uint32).reshape(-1)


def _wrapped_int32(value: int) -> int:
    """``value`` as the int32 with the same low 32 bits (row positions beyond 2**31)."""
    return int((value + 2**31) % 2**32 - 2**31)


# ------------------------------------------------------------------ per-chunk sums


def _pass_function(kind: str, covariance_type: str, n_components: int):
    """The per-restart function of one chunk's :class:`~jaxgmm._rows.Rows` for a pass."""
    if kind == "em":

        def fn(rows, member, shared, start):
            return EM(reg_covar=shared).statistics(rows, member)

    elif kind == "exact":

        def fn(rows, member, shared, start):
            return exact_e_step(rows, member, member.means)

    elif kind == "lloyd":

        def fn(rows, member, shared, start):
            def sums(x, w, i, mask=None, noise=None):
                return lloyd_sums(x, w, member, None, mask)

            return IN_MEMORY.sum(sums, rows, incomplete=rows.incomplete)

    elif kind in ("kmeans", "seeds", "random"):

        def fn(rows, member, shared, start):
            shift, extra = member

            def resp(x, index, mask):
                if kind == "kmeans":
                    return nearest_center(x, shift, None, mask)
                if kind == "seeds":  # extra: (K,) seed positions within this chunk
                    return ((index - start)[:, None] == extra[None, :]).astype(x.dtype)
                active = jnp.ones(n_components, bool)
                return random_responsibilities(extra, index, n_components, active, x.dtype)

            def stats(x, w, i, mask=None, noise=None):
                return assigned_stats(x, resp(x, i, mask), w, shift, covariance_type)

            return IN_MEMORY.sum(stats, rows, incomplete=rows.incomplete)

    else:  # pragma: no cover - internal
        raise ValueError(kind)
    return fn


@jit(
    data_argnum=1,
    static_argnames=("kind", "chunk_size", "covariance_type", "n_components", "matmul_precision"),
)
def _chunk_sums(
    total,
    x: jax.Array,
    weight: jax.Array,
    start: jax.Array,
    center: jax.Array,
    members,
    shared,
    mask: jax.Array | None = None,
    *,
    kind: str,
    chunk_size: int,
    covariance_type: str,
    n_components: int,
    matmul_precision: str,
):
    """``total`` plus one chunk's sums for every restart (one compiled program per pass kind).

    Args:
        total: the running totals (a pytree with a leading (R,) restarts axis), or
            zeros.
        x: (C, D) rows as read (C a multiple of ``chunk_size``); weight: (C,), 0 on
            padding; start: () int32 global position of the first row (wrapped);
            center: (D,) subtracted from every row as it is read.
        members: per-restart inputs with a leading (R,) axis (parameters, centres).
        shared: inputs common to every restart (reg_covar, the chunk's start).
        mask: None, or (C, D) bool, True where observed: missing entries then read
            as the centre (0 once centred), and the passes use the observed entries
            only, as ``fit(..., nan_policy="marginalize")`` does.
        kind: which pass (``em``, ``exact``, ``lloyd``, ``kmeans``, ``seeds``, ``random``).

    Returns:
        The new totals.
    """
    with jax.default_matmul_precision(matmul_precision):
        index = start + jnp.arange(x.shape[0], dtype=jnp.int32)
        if mask is not None:
            x = jnp.where(mask, x, center)
        rows = split_rows(x, weight, index, chunk_size, mask).centred(center)
        fn = _pass_function(kind, covariance_type, n_components)
        elements = restart_elements(chunk_size, x.shape[1], n_components, covariance_type)
        if jax.tree_util.tree_leaves(members)[0].shape[0] == 1:  # one restart: unbatched
            one = fn(rows, jax.tree_util.tree_map(lambda a: a[0], members), shared, start)
            part = jax.tree_util.tree_map(lambda a: a[None], one)
        else:
            part = map_in_groups(lambda m: fn(rows, m, shared, start), members, elements)
        if total is None:  # (shapes only: the zeros the first chunk is added to)
            return part
        return jax.vmap(add)(total, part)


class _Passes:
    """Runs passes over the stream: one :func:`_chunk_sums` call per chunk.

    Attributes:
        stream: the :class:`~jaxgmm._sources.ChunkStream`.
        dtype: the compute dtype; offset: None or (D,) float64 subtracted on the host.
        center: (D,) subtracted on the device; static: :func:`_chunk_sums`' static args.
        progress: show one bar of rows per pass.
    """

    def __init__(self, stream: ChunkStream, dtype, static: dict, progress: bool):
        self.stream = stream
        self.dtype = dtype
        self.static = static
        self.progress = progress
        self.offset = None
        self.center = None
        self._shapes: dict = {}

    def chunks(self, description: str, dtype=None):
        """One pass's chunks (in ``dtype``, default the compute dtype), read ahead on a
        thread, with a progress bar of rows."""
        bar = progress_bar(
            total=self.stream.n_rows,
            desc=description,
            enabled=True if self.progress else False,
            unit="rows",
        )
        chunks = read_ahead(self.stream.chunks(dtype or self.dtype, self.offset))
        try:
            for chunk in chunks:
                yield chunk
                bar.update(chunk.n_rows)
        finally:
            chunks.close()
            bar.close()

    def run(self, kind: str, members, shared=None, per_chunk=None, description="pass"):
        """Sum ``kind`` over every chunk, for every restart; -> totals.

        Args:
            kind: the pass (see :func:`_chunk_sums`); members: per-restart inputs.
            shared: inputs common to all restarts.
            per_chunk: None, or ``per_chunk(chunk) -> (members, shared)`` for inputs
                that depend on the chunk (seed positions).
        """
        total = None
        pending = None
        for chunk in self.chunks(description):
            x, w = jax.device_put(chunk.x), jax.device_put(chunk.weight)  # ahead of use
            mask = None if chunk.mask is None else jax.device_put(chunk.mask)
            start = jnp.asarray(_wrapped_int32(chunk.start), jnp.int32)
            m, s = (members, shared) if per_chunk is None else per_chunk(chunk)
            if total is None:  # zeros of the pass's totals (their shapes traced once)
                if kind not in self._shapes:
                    self._shapes[kind] = jax.eval_shape(
                        partial(_chunk_sums, kind=kind, **self.static),
                        None,
                        x,
                        w,
                        start,
                        self.center,
                        m,
                        s,
                        mask,
                    )
                total = jax.tree_util.tree_map(
                    lambda a: np.zeros(a.shape, a.dtype), self._shapes[kind]
                )
            if pending is not None:  # at most one chunk computing while the next is copied
                jax.block_until_ready(pending)
            total = _chunk_sums(
                total, x, w, start, self.center, m, s, mask, kind=kind, **self.static
            )
            pending = total
        return total


# ----------------------------------------------------------------- scan and sample


@dataclasses.dataclass
class _Scan:
    """What the first pass learns: counts, centre, spread, range and a sample."""

    n_rows: int = 0
    n_positive: int = 0
    total_weight: float = 0.0
    sum_x: np.ndarray | None = None
    sum_sq: np.ndarray | None = None
    pivot: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    sample_x: np.ndarray | None = None
    sample_w: np.ndarray | None = None
    sample_index: np.ndarray | None = None
    sample_priority: np.ndarray | None = None
    sample_mask: np.ndarray | None = None

    def add_moments(self, moments) -> None:
        """Fold one chunk's :func:`_chunk_moments` into the totals (float64)."""
        total, sum_x, sum_sq, lo, hi, n_positive = (np.asarray(m, np.float64) for m in moments)
        if self.sum_x is None:
            self.sum_x, self.sum_sq, self.lo, self.hi = sum_x, sum_sq, lo, hi
        else:
            self.sum_x, self.sum_sq = self.sum_x + sum_x, self.sum_sq + sum_sq
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        # () summed weight, or (D,) per column over the observed entries (with a mask).
        self.total_weight = self.total_weight + total
        self.n_positive += int(n_positive)

    def add_sample(
        self, x: np.ndarray, weight: np.ndarray, start: int, rng, n_sample: int, mask=None
    ):
        """Keep the rows with the n_sample smallest uniform priorities seen so far.

        Bottom-k of one uniform draw per row (in row order): a uniform sample without
        replacement, whatever the chunking. Zero-weight rows are never preferred.
        ``mask``: None, or the rows' (n, D) observed entries, kept with them.
        """
        priority = rng.random(len(x))
        priority[weight <= 0] = np.inf
        index = np.arange(start, start + len(x))
        new = [x, weight, index, priority] + ([] if mask is None else [mask])
        if self.sample_x is not None:
            old = [self.sample_x, self.sample_w, self.sample_index, self.sample_priority]
            old += [] if mask is None else [self.sample_mask]
            new = [np.concatenate([a, b]) for a, b in zip(old, new, strict=True)]
        if len(new[3]) > n_sample:
            best = np.argpartition(new[3], n_sample - 1)[:n_sample]
            best.sort()
            new = [a[best] for a in new]
        else:  # only rows of this pass so far: copy the chunk's views
            new = [np.array(a) for a in new]
        self.sample_x, self.sample_w, self.sample_index, self.sample_priority = new[:4]
        if mask is not None:
            self.sample_mask = new[4]

    @property
    def mean(self) -> np.ndarray:
        """(D,) weighted mean, float64."""
        return self.pivot + self.sum_x / self.total_weight

    @property
    def mean_variance(self) -> float:
        """The weighted per-feature variance, averaged over features."""
        shift = self.sum_x / self.total_weight
        return float(np.mean(np.maximum(self.sum_sq / self.total_weight - shift**2, 0.0)))


def _chunk_moments(x, weight, pivot, xp=jnp, mask=None):
    """One chunk's (sum w, sum w (x - pivot), sum w (x - pivot)^2, min, max, #w > 0).

    Padding rows copy a real row and have weight 0, so they change nothing. With a
    (C, D) ``mask`` every sum, minimum and maximum is over the observed entries, and
    sum w is per column, (D,).
    """
    if mask is None:
        d = x - pivot
        wd = weight[:, None] * d
        total, lo, hi = xp.sum(weight), xp.min(x, axis=0), xp.max(x, axis=0)
    else:
        d = xp.where(mask, x - pivot, 0)
        wd = weight[:, None] * d
        total = xp.sum(xp.where(mask, weight[:, None], 0), axis=0)
        lo = xp.min(xp.where(mask, x, xp.inf), axis=0)
        hi = xp.max(xp.where(mask, x, -xp.inf), axis=0)
    return (total, xp.sum(wd, axis=0), xp.sum(wd * d, axis=0), lo, hi, xp.sum(weight > 0))


_device_moments = jit(_chunk_moments)


def _scan(passes: _Passes, n_components: int, n_sample_max: int, seed, precise: bool) -> _Scan:
    """The first pass: counts, centre, spread, range checks and the seeding sample.

    The moments of each chunk are summed on the device in the compute dtype (the
    chunks' sums then in float64 on the host), or, for input more precise than the
    compute dtype, in float64 on the host.
    """
    scan = _Scan()
    rng = np.random.default_rng(seed)
    moments = []
    pivot = None
    for chunk in passes.chunks("scan", np.float64 if precise else None):
        n = chunk.n_rows
        if pivot is None:
            scan.pivot = chunk.x[0].astype(np.float64)
            pivot = chunk.x[0].copy()
        mask = None if chunk.mask is None else chunk.mask[:n]
        if precise:
            moments.append(_chunk_moments(chunk.x[:n], chunk.weight[:n], pivot, np, mask))
        else:
            if moments:  # one chunk computing at a time: memory stays a few chunks
                jax.block_until_ready(moments[-1])
            moments.append(_device_moments(chunk.x, chunk.weight, pivot, mask=chunk.mask))
        scan.n_rows += n
        if n_sample_max:
            scan.add_sample(chunk.x[:n], chunk.weight[:n], chunk.start, rng, n_sample_max, mask)
    for m in jax.device_get(moments):
        scan.add_moments(m)
    check_n_samples(scan.n_rows, n_components)
    if np.ndim(scan.total_weight):  # per column: missing values
        unobserved = np.flatnonzero(scan.total_weight <= 0)
        if unobserved.size:
            raise ValueError(
                f"column(s) {unobserved.tolist()} of the source have no observed entry (all "
                "NaN, or only in rows of weight 0); drop those columns before fitting."
            )
    elif scan.total_weight <= 0:
        raise ValueError("every sample weight is zero; at least one row needs weight > 0.")
    if scan.n_positive < n_components:
        raise ValueError(
            f"Only {scan.n_positive} row(s) have positive weight, fewer than n_components = "
            f"{n_components}. Use fewer components or more data."
        )
    return scan


# -------------------------------------------------------------------- initialisation


def _device_sample(scan: _Scan, center: np.ndarray, dtype, chunk_size: int):
    """The sample as centred, chunked :class:`~jaxgmm._rows.Rows` (zero-weight padding)."""
    n = len(scan.sample_x)
    chunk = min(chunk_size, n)
    n_pad = -(-n // chunk) * chunk
    x = np.empty((n_pad, scan.sample_x.shape[1]), dtype)
    x[:n] = (scan.sample_x - center).astype(dtype)
    x[n:] = x[:1]
    mask = None
    if scan.sample_mask is not None:  # missing entries read as the centre: 0
        mask = np.empty(x.shape, bool)
        mask[:n], mask[n:] = scan.sample_mask, scan.sample_mask[:1]
        x[~mask] = 0
    w = np.zeros(n_pad, dtype)
    w[:n] = scan.sample_w
    # Rows are named by their position in the sample (the global position when the
    # sample holds every row, as fit names them).
    index = np.arange(n_pad, dtype=np.int32)
    return x, w, index, chunk, mask


@jit(data_argnum=1, static_argnames=("init", "n_components", "chunk", "matmul_precision"))
def _seed_sample(keys, x, w, index, mask, *, init, n_components, chunk, matmul_precision):
    """Per restart: k-means centres, or seed rows and their positions in the sample.

    ``mask``: None, or the sample's (n, D) observed entries (masked distances).
    """
    with jax.default_matmul_precision(matmul_precision):
        rows = split_rows(x, w, index, chunk, mask)

        def one(key):
            if init == "kmeans":
                return kmeans_centers(key, rows, n_components), jnp.zeros(n_components, jnp.int32)
            if init == "k-means++":
                return kmeans_plusplus(key, rows, n_components)
            return _top_rows_by_gumbel(key, rows, n_components)

        return jax.vmap(one)(keys)


@jit
def _lloyd_finish(centers, done, counts, sums, tol):
    """One Lloyd step per restart from summed :func:`~jaxgmm._init.lloyd_sums`."""
    new = jax.vmap(lloyd_update)(centers, counts, sums)
    shift = jnp.sum((new - centers) ** 2, axis=(1, 2))
    return jnp.where(done[:, None, None], centers, new), done | (shift <= tol)


@jit(static_argnames=("history_length", "covariance_type"))
def _initial_states(stats, reg_covar, center, inits, history_length, covariance_type):
    """M-step on the initial statistics, the user's overrides, loop states (batched)."""
    weights_init, means_init, precisions_init = inits
    if means_init is not None:
        means_init = means_init - center

    def one(stats):
        params = m_step(stats, reg_covar, covariance_type)
        params = _apply_user_init(params, weights_init, means_init, precisions_init)
        return start(EM(reg_covar=reg_covar), params, history_length)

    return jax.vmap(one)(stats)


def _user_states(inits, center, n_init, n_features, dtype, history, covariance_type):
    """Loop states when the user gave every initial parameter (no init passes)."""
    model = covariance_model(covariance_type)
    n_components = inits[1].shape[0]
    shape = model.shape(n_components, n_features)
    template = GaussianMixtureParams(
        weights=jnp.zeros(n_components, dtype),
        means=jnp.zeros((n_components, n_features), dtype),
        covariances=jnp.zeros(shape, dtype),
        precisions_cholesky=jnp.zeros(shape, dtype),
        covariance_type=covariance_type,
    )
    weights_init, means_init, precisions_init = inits
    params = _apply_user_init(template, weights_init, means_init - center, precisions_init)
    state = start(EM(reg_covar=jnp.zeros((), dtype)), params, history)
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_init,) + a.shape), state)


def _initialise(passes: _Passes, scan: _Scan, options: dict, keys, inits, reg_covar, history):
    """Every restart's loop state before its first EM iteration (batched (R,))."""
    init, n_components = options["init"], options["n_components"]
    covariance_type, dtype = options["covariance_type"], passes.dtype
    n_init = keys.shape[0]
    if init == "random":
        shift = jnp.zeros((n_init, n_components, passes.stream.n_features), dtype)
        stats = passes.run("random", (shift, keys), None, description="init")
    else:
        host_center = passes.offset if passes.offset is not None else np.asarray(passes.center)
        sample = _device_sample(scan, np.asarray(host_center, np.float64), dtype, 4096)
        x, w, index, chunk, mask = sample
        shift, seeds = _seed_sample(
            keys,
            x,
            w,
            index,
            mask,
            init=init,
            n_components=n_components,
            chunk=chunk,
            matmul_precision=options["matmul_precision"],
        )
        whole = len(scan.sample_x) == scan.n_rows
        if init == "kmeans":
            if not whole:
                shift = _stream_lloyd(passes, shift, scan)
            stats = passes.run("kmeans", (shift, seeds), None, description="init")
        else:
            # Seeds are sample rows: their global positions, as positions in each chunk.
            sample_index = np.asarray(scan.sample_index)[np.asarray(seeds)]

            def per_chunk(chunk):
                local = sample_index - chunk.start
                inside = (local >= 0) & (local < chunk.n_rows)
                local = np.where(inside, local, -1).astype(np.int32)
                return (shift, jnp.asarray(local)), None

            stats = passes.run("seeds", None, per_chunk=per_chunk, description="init")
    return _initial_states(stats, reg_covar, passes.center, inits, history, covariance_type)


def _stream_lloyd(passes: _Passes, centers, scan: _Scan):
    """Lloyd steps over the stream until every restart's centres settle; -> (R, K, D)."""
    tol = jnp.asarray(lloyd_tolerance(scan.mean_variance), passes.dtype)
    done = jnp.zeros(centers.shape[0], bool)
    for step in range(_LLOYD_MAX_PASSES):
        counts, sums = passes.run("lloyd", centers, None, description=f"k-means {step + 1}")
        centers, done = _lloyd_finish(centers, done, counts, sums, tol)
        if bool(jnp.all(done)):
            break
    return centers


# ------------------------------------------------------------------------- EM loop


@jit(static_argnames=("covariance_type", "incomplete"))
def _em_finish(states: LoopState, stats, reg_covar, max_iter, covariance_type, incomplete=False):
    """M-step per restart; -> (new params, objectives, which need the exact pass).

    ``incomplete`` (missing values): the statistics are exact expected ones around
    the current means, and never need the exact pass.
    """

    def one(state, stats):
        new = EM(reg_covar=reg_covar).update(stats)
        lost = jnp.asarray(False)
        if covariance_model(covariance_type).expanded_moments and not incomplete:
            lost = lost_precision(stats, new)
        return new, stats.log_lik_sum / stats.n, lost & running(state, max_iter)

    return jax.vmap(one)(states, stats)


@jit
def _exact_update(new, lost, stats, reg_covar):
    """Parameters from the exact pass's statistics where ``lost`` (R,) holds."""
    exact = jax.vmap(lambda s: EM(reg_covar=reg_covar).update(s))(stats)
    return jax.tree_util.tree_map(
        lambda e, n: jnp.where(lost.reshape((-1,) + (1,) * (n.ndim - 1)), e, n), exact, new
    )


@jit
def _record(states: LoopState, new, objective, tol, max_iter):
    """Each running restart's state after its iteration; stopped ones unchanged."""

    def one(state, new, objective):
        after = record(EM, state, new, objective, tol)
        keep = running(state, max_iter)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), after, state)

    return jax.vmap(one)(states, new, objective)


@jit
def _summary(states: LoopState, max_iter):
    """() any restart running, max n_iter, best finite lower bound."""
    best = jnp.max(jnp.where(states.finite, states.lower_bound, -jnp.inf))
    return jnp.any(jax.vmap(lambda s: running(s, max_iter))(states)), jnp.max(states.n_iter), best


@jit
def _result(states: LoopState, center, max_iter):
    """The best restart so far (restarts still running are INTERRUPTED)."""
    statuses = jax.vmap(lambda s: status(s, max_iter))(states)
    return best_restart(states, statuses, center)


# ----------------------------------------------------------------------------- API


def open_stream(
    source,
    chunk_rows: int | None,
    sample_weight,
    nan_policy: str,
    chunk_size: int | None,
    n_components: int,
    covariance_type: str,
) -> tuple[ChunkStream, int]:
    """Check ``chunk_rows``, open ``source`` and cut it into compiled-size chunks.

    Args:
        source, chunk_rows, sample_weight, nan_policy, chunk_size: as in
            :func:`fit_stream`.
        n_components, covariance_type: the model (they size the E-step's blocks).

    Returns:
        The :class:`ChunkStream` (``n_features`` known, also for callables) and the
        rows per E-step block within a chunk.
    """
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool)
        or not isinstance(chunk_rows, (int, np.integer))
        or chunk_rows < 1
    ):
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
    reader = open_source(source, int(chunk_rows or 1), sample_weight)
    n_features = reader.n_features
    if n_features is None:  # a callable: look at its first chunk
        n_features = _peek_features(reader)
    default_rows = max(1, CHUNK_VALUES // max(n_features, 1))
    rows_per_chunk = int(chunk_rows or default_rows)
    if reader.n_rows is not None:
        rows_per_chunk = min(rows_per_chunk, max(reader.n_rows, 1))
    if hasattr(reader, "block_rows"):
        reader.block_rows = rows_per_chunk
    if hasattr(reader, "reader"):
        reader.reader.block_rows = rows_per_chunk
    sub = min(_max_chunk(chunk_size, n_components, n_features, covariance_type), rows_per_chunk)
    device_rows = -(-rows_per_chunk // sub) * sub
    stream = ChunkStream(reader, rows_per_chunk, device_rows, nan_policy)
    stream.n_features = n_features
    return stream, sub


def fit_stream(
    source,
    n_components: int,
    *,
    chunk_rows: int | None = None,
    checkpoint=None,
    progress: bool = False,
    covariance_type: str = DEFAULTS.covariance_type,
    tol: float = DEFAULTS.tol,
    reg_covar: float = DEFAULTS.reg_covar,
    max_iter: int = DEFAULTS.max_iter,
    n_init: int = DEFAULTS.n_init,
    init: str = DEFAULTS.init,
    key=0,
    weights_init=None,
    means_init=None,
    precisions_init=None,
    sample_weight=None,
    chunk_size: int | None = DEFAULTS.chunk_size,
    matmul_precision: str = DEFAULTS.matmul_precision,
    on_interrupt: str = DEFAULTS.on_interrupt,
    nan_policy: str = DEFAULTS.nan_policy,
) -> FitResult:
    """Fit a Gaussian mixture by exact EM to data read from disk chunk by chunk.

    One pass over the data per EM iteration, for all ``n_init`` restarts together;
    only a few chunks are in memory at a time, whatever the number of rows. From the
    same initial parameters the result is ``jaxgmm.fit``'s on the same rows (to
    round-off). The next chunk is read on a background thread while the current one
    is computed.

    Initialisation does not hold the data: ``k-means++`` and ``random_from_data``
    draw their seeds from a uniform sample of min(N, max(10 000, 100 K)) rows;
    ``kmeans`` runs k-means on that sample, then continues its Lloyd steps over the
    whole stream (one pass each) until the centres settle; ``random`` draws per-row
    responsibilities as ``fit`` does. When the sample holds every row, the
    initialisation is ``fit``'s. User initial parameters override as in ``fit``.

    Args:
        source: the rows: a path to a 2-D ``.npy`` file (read with plain file reads),
            an array-like with ``.shape``, ``.dtype`` and row slicing (a NumPy memmap,
            a zarr array, an h5py dataset), or a zero-argument callable returning a
            fresh iterator of (rows, D) arrays, or (rows, weights) pairs, for every
            pass (it must give the same rows each time; it is called once more to
            look at the first chunk's width).
        n_components: K.
        chunk_rows: rows read per chunk; default about 2**22 values per chunk
            (524 288 rows for D = 8).
        checkpoint: None, or a file path: the state of every restart is written there
            after every iteration (atomically); calling ``fit_stream`` again with the
            same arguments resumes from it and ends with the uninterrupted result.
            The file is left in place when the fit ends.
        progress: show a progress bar of rows for every pass, and one of iterations.
        covariance_type, tol, reg_covar, max_iter, n_init, init, key, weights_init,
            means_init, precisions_init, chunk_size, matmul_precision, on_interrupt:
            as in :func:`jaxgmm.fit` (``chunk_size``: rows per E-step block within a
            chunk; ``on_interrupt``: Ctrl-C is handled between chunks).
        sample_weight: None, or (N,) weights (an array-like) for path and array-like
            sources; callables yield (rows, weights) pairs instead.
        nan_policy: ``"raise"`` (a NaN is an error naming its row), ``"omit"``
            (rows with NaN are dropped as they are read, in every pass; the first
            pass warns with their count) or ``"marginalize"`` (exact EM for
            incomplete data, as :func:`jaxgmm.fit` does: the centre and the
            k-means distances use the observed entries, every E-step the density of
            each row's observed entries; a column with no observed entry is an error).

    Returns:
        A :class:`FitResult`, as :func:`jaxgmm.fit` returns.

    Raises:
        ValueError, TypeError: invalid options or data; data errors name the global
            row or the chunk (non-finite values, chunks of different widths, a source
            that changed between passes, an empty source, a truncated file).
        KeyboardInterrupt: interrupted, with ``on_interrupt="raise"``.
    """
    FitOptions(
        covariance_type,
        tol,
        reg_covar,
        max_iter,
        n_init,
        init,
        chunk_size,
        matmul_precision,
        on_interrupt,
        nan_policy,
    ).check(n_components)
    check_key(key)
    stream, sub = open_stream(
        source, chunk_rows, sample_weight, nan_policy, chunk_size, n_components, covariance_type
    )
    n_features = stream.n_features
    source_dtype = stream.reader.dtype  # (a callable's: its first chunk's)
    dtype = compute_dtype(source_dtype)
    inits = check_initial_params(
        weights_init, means_init, precisions_init, covariance_type, n_components, n_features, dtype
    )
    static = dict(
        chunk_size=sub,
        covariance_type=covariance_type,
        n_components=n_components,
        matmul_precision=matmul_precision,
    )
    passes = _Passes(stream, dtype, static, progress)
    options = dict(
        n_components=n_components,
        covariance_type=covariance_type,
        tol=float(tol),
        reg_covar=float(reg_covar),
        max_iter=int(max_iter),
        n_init=int(n_init),
        init=init,
        matmul_precision=matmul_precision,
        nan_policy=nan_policy,
        inits=[None if a is None else np.asarray(a).tolist() for a in inits],
    )
    key = as_key(key)
    history = history_length(max_iter)
    tol_, reg_, max_iter_ = (
        jnp.asarray(tol, dtype),
        jnp.asarray(reg_covar, dtype),
        jnp.asarray(max_iter, jnp.int32),
    )
    path = None if checkpoint is None else os.fspath(checkpoint)
    stamp = fingerprint(options, stream.n_rows, n_features, _key_words(key)) if path else None
    resumed = load_checkpoint(path, stamp, covariance_type) if path else None
    precise_input = np.dtype(source_dtype) != dtype
    if resumed is not None:
        states, passes.center, passes.offset, first = resumed
        stream._first = first
        stream.n_rows = None if first is None else first[0]
    else:
        user_only = all(a is not None for a in inits)
        n_sample = 0 if user_only or init == "random" else sample_size(2**62, n_components)
        # The scan reads raw rows (no offset yet); the sample is capped below.
        scan = _scan(passes, n_components, n_sample, _key_words(key), precise_input)
        if n_sample:
            _trim_sample(scan, n_components)
        _check_range(scan.lo, scan.hi, (scan.n_rows, n_features), dtype, precise_input, "the data")
        if dtype.itemsize < 8:
            _warn_if_unresolved(scan.lo, scan.hi, dtype, "the data")
        mean = scan.mean
        if precise_input:  # centred on the host in float64 before the cast, as fit does
            passes.offset = mean
            passes.center = jnp.zeros(n_features, dtype)
            inits = check_initial_params(
                weights_init,
                means_init,
                precisions_init,
                covariance_type,
                n_components,
                n_features,
                dtype,
                means_offset=mean,
            )
        else:
            passes.center = jnp.asarray(mean.astype(dtype))
        keys = restart_keys(key, n_init)
        if user_only:
            states = _user_states(
                inits, passes.center, n_init, n_features, dtype, history, covariance_type
            )
        else:
            states = _initialise(passes, scan, options, keys, inits, reg_, history)
        if path:
            save_checkpoint(path, stamp, states, passes.center, passes.offset, stream._first)
    states = _em_loop(passes, states, tol_, reg_, max_iter_, options, on_interrupt, path, stamp)
    result = _result(states, passes.center, max_iter_)
    result = dataclasses.replace(result, history=first_rows(result.history, max_iter))
    if int(result.status) == Status.NON_FINITE:
        raise ValueError(_ill_defined_message(reg_covar, covariance_type, n_components))
    if passes.offset is not None:
        means = np.asarray(result.params.means, np.float64) + passes.offset
        params = dataclasses.replace(result.params, means=jnp.asarray(means.astype(dtype)))
        result = dataclasses.replace(result, params=params)
    mark_checked(result.params)
    return result


def _trim_sample(scan: _Scan, n_components: int) -> None:
    """Cap the sample at :func:`sample_size` for the now known row count."""
    n = sample_size(scan.n_rows, n_components)
    if len(scan.sample_x) > n:  # pragma: no cover - the scan keeps at most that many
        best = np.sort(np.argpartition(scan.sample_priority, n - 1)[:n])
        scan.sample_x, scan.sample_w = scan.sample_x[best], scan.sample_w[best]
        scan.sample_index = scan.sample_index[best]


def _peek_features(reader) -> int:
    """D of a callable source, from the first item of one extra iterator."""
    for rows, _ in reader.blocks():
        if rows.ndim != 2:
            raise ValueError(
                f"chunk 0 of the source has shape {rows.shape}; every chunk must be 2-D (rows, D)."
            )
        reader.dtype = rows.dtype
        return int(rows.shape[1])
    raise ValueError(
        "the source gave no rows: fit_stream needs at least n_components rows. (A "
        "callable source must return a fresh iterator on every call.)"
    )


def _em_loop(passes, states, tol, reg_covar, max_iter, options, on_interrupt, path, stamp):
    """EM iterations, one pass each, until every restart has stopped; -> states."""
    covariance_type = options["covariance_type"]
    description = f"EM fit (streamed), K={options['n_components']}"
    bar = fit_progress(options["max_iter"], description) if passes.progress else None
    if bar is not None:
        bar.__enter__()
    try:
        while True:
            still, n_iter, best = jax.device_get(_summary(states, max_iter))
            if bar is not None:
                report_iteration(n_iter, best)
            if not still:
                return states
            stats = passes.run("em", states.params, reg_covar, description=f"EM {n_iter + 1}")
            new, objective, lost = _em_finish(
                states,
                stats,
                reg_covar,
                max_iter,
                covariance_type,
                incomplete=passes.stream.nan_policy == "marginalize",
            )
            if bool(jnp.any(lost)):  # rare: moments cancelled; redo them exactly
                exact = passes.run("exact", states.params, None, description="exact")
                new = _exact_update(new, lost, exact, reg_covar)
            states = _record(states, new, objective, tol, max_iter)
            if path:
                save_checkpoint(
                    path, stamp, states, passes.center, passes.offset, passes.stream._first
                )
    except KeyboardInterrupt as interrupt:
        interrupt.n_iter = int(jnp.max(states.n_iter))
        if on_interrupt == "raise":
            raise
        return states
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
