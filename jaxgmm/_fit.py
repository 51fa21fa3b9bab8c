"""``jaxgmm.fit`` and ``jaxgmm.fit_many``: validated entry points to the compiled EM."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._blocks import fit_advance, fit_many_advance, fit_many_start, fit_start
from jaxgmm._buckets import (
    TINY_ROW_WORK,
    component_bucket,
    copy_free,
    first_rows,
    fit_work,
    history_length,
    row_layout,
    row_work,
)
from jaxgmm._chunking import chunk_size_for
from jaxgmm._covariance import (
    COVARIANCE_TYPES,
    Projected,
    ProjectedRegularisation,
    covariance_model,
)
from jaxgmm._driver import fit_compiled, fit_many_compiled
from jaxgmm._fit_progress import fit_progress
from jaxgmm._host_loop import fits_in_one_block, run_blocks
from jaxgmm._implicit import stop_gradients, with_implicit_gradients
from jaxgmm._jit import jit
from jaxgmm._keys import as_key, keys_for_range
from jaxgmm._options import DEFAULTS, FitOptions
from jaxgmm._params import ARRAY_FIELDS, FitResult, Status, first_components
from jaxgmm._rows import overlapping_layout
from jaxgmm._sharding import leading_axis_sharding, pad_sharded_rows
from jaxgmm._validation import (
    centre_and_cast,
    check_concrete_for_nan_policy,
    check_data_array,
    check_datasets,
    check_initial_params,
    check_key,
    check_n_samples,
    check_noise_covariances,
    check_sample_weight,
    compute_dtype,
    is_traced,
    mark_checked,
    missing_mask,
    omit_nan_rows,
)

ILL_DEFINED_MESSAGE = Status.NON_FINITE.message


def _ill_defined_message(reg_covar, covariance_type: str, n_components: int) -> str:
    """ILL_DEFINED_MESSAGE plus what this fit's settings suggest."""
    if float(reg_covar) == 0.0:
        detail = (
            "With reg_covar = 0 a component that collapses onto one point, onto duplicated "
            "points or onto a lower-dimensional subspace has a singular covariance; the "
            "default reg_covar = 1e-6 (relative to features of unit variance) avoids that."
        )
    else:
        detail = (
            f"reg_covar = {float(reg_covar):.3g} was too small for this data: choose it "
            "relative to the variance of your features, or standardise X first."
        )
    return (
        f"{ILL_DEFINED_MESSAGE} ({covariance_type} covariances, n_components = "
        f"{n_components}.) {detail}"
    )


def _max_chunk(
    chunk_size: int | None,
    n_components: int,
    n_features: int,
    covariance_type: str,
    incomplete: bool = False,
    missing_only: bool = False,
) -> int:
    """The user's chunk size, or the default one (~2 MiB intermediates) for K and D."""
    if chunk_size is not None:
        return chunk_size
    return chunk_size_for(
        2**62, n_components, n_features, covariance_type, incomplete, missing_only
    )


def _incomplete_data(X, sample_weight, nan_policy: str, noise, covariance_type: str, dtype):
    """Apply ``nan_policy`` and check the noise: -> (X, sample_weight, mask, noise).

    ``"omit"`` drops rows with NaN (and their weights and noise); ``"marginalize"``
    fills missing entries with their column's mean and returns the observed-entry mask
    (None when nothing is missing); rows with no observed entry get weight zero.
    """
    n_samples, n_features = X.shape
    if noise is not None:
        noise = check_noise_covariances(noise, n_samples, n_features, covariance_type, dtype)
    if nan_policy == "omit":
        X, sample_weight, noise = omit_nan_rows(X, "X", sample_weight, noise)
        return X, sample_weight, None, noise
    if nan_policy == "marginalize":
        weight = np.ones(n_samples) if sample_weight is None else np.asarray(sample_weight)
        X, mask, weight = missing_mask(X, weight)
        if mask is not None:
            return X, weight, mask, noise
    return X, sample_weight, None, noise


def _pad_like_rows(a, n_rows: int):
    """Pad a per-row array (N, ...) to ``n_rows`` with copies of its first row (or None)."""
    if a is None or a.shape[0] == n_rows:
        return a
    return np.concatenate([a, np.broadcast_to(a[:1], (n_rows - a.shape[0],) + a.shape[1:])])


def _static_options(
    n_components: int,
    covariance_type: str,
    max_iter: int,
    n_init: int,
    init: str,
    chunk_size: int,
    progress: bool,
    matmul_precision: str = DEFAULTS.matmul_precision,
) -> dict:
    """The compiled fits' static options (shapes and program structure only)."""
    return {
        "n_components": n_components,
        "covariance_type": covariance_type,
        "history_length": history_length(max_iter),
        "n_init": n_init,
        "init": init,
        "chunk_size": chunk_size,
        "report_progress": bool(progress),
        "sharding": None,
        "matmul_precision": matmul_precision,
    }


def _pad_rows(X, sample_weight, n_rows: int):
    """Append zero-weight copies of row 0 up to ``n_rows`` rows (they change no sum).

    Copies of a real row, not zeros, keep every padding row's log-density as finite
    as the data's (zeros could lie far outside data centred far from the origin).
    """
    pad = n_rows - X.shape[0]
    if pad == 0:
        return X, sample_weight
    # Host data are padded on the host: no device program per row count.
    xp = np if isinstance(X, np.ndarray) else jnp
    X = xp.concatenate([X, xp.broadcast_to(X[:1], (pad,) + X.shape[1:])])
    sample_weight = xp.asarray(sample_weight)
    return X, xp.concatenate([sample_weight, xp.zeros(pad, sample_weight.dtype)])


def _full_precisions_init(inits: tuple, covariance_type: str, n_components: int, n_features: int):
    """Initial precisions (if any) as (K, D, D) matrices, for a ``Projected`` fit."""
    weights_init, means_init, precisions_init = inits
    if precisions_init is not None:
        precisions = np.asarray(precisions_init)
        model = covariance_model(covariance_type)
        full = model.full_matrices(precisions, n_components, n_features)
        precisions_init = full.astype(precisions.dtype, copy=False)
    return weights_init, means_init, precisions_init


def _pad_components(inits: tuple, covariance_type: str, n_components: int, n_padded: int):
    """Pad user initial parameters to ``n_padded`` components (weight 0, identity precision)."""
    weights_init, means_init, precisions_init = inits
    pad = n_padded - n_components
    if pad == 0:
        return inits
    if weights_init is not None:
        weights_init = jnp.pad(weights_init, (0, pad))
    if means_init is not None:
        means_init = jnp.pad(means_init, ((0, pad), (0, 0)))
    if precisions_init is not None and covariance_model(covariance_type).per_component:
        eye = jnp.ones_like(precisions_init[:1])
        if precisions_init.ndim == 3:
            eye = jnp.eye(precisions_init.shape[-1], dtype=precisions_init.dtype)[None]
        precisions_init = jnp.concatenate(
            [precisions_init, jnp.broadcast_to(eye, (pad,) + precisions_init.shape[1:])]
        )
    return weights_init, means_init, precisions_init


def fit(
    X,
    n_components: int,
    *,
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
    progress: bool = False,
    matmul_precision: str = DEFAULTS.matmul_precision,
    on_interrupt: str = DEFAULTS.on_interrupt,
    nan_policy: str = DEFAULTS.nan_policy,
    noise_covariances=None,
) -> FitResult:
    """Fit a Gaussian mixture to data by expectation-maximisation.

    The fit (initialisation, EM loop, ``n_init`` restarts run in parallel by ``vmap``)
    is compiled; a second call with the same shapes and static options does not
    compile again. On concrete input the EM iterations run as compiled blocks of
    about half a second driven by a short Python loop, so Ctrl-C stops a fit
    at once (see ``on_interrupt``). ``fit`` works under ``jax.jit`` and
    ``jax.vmap``: there the whole fit is one compiled loop, which Python cannot
    interrupt.

    ``fit`` is differentiable in reverse mode (``jax.grad``, ``jax.vjp``,
    ``jax.jacrev``): ``params`` and ``lower_bound`` have gradients with respect to X,
    ``sample_weight`` and ``reg_covar`` by the implicit function theorem at the
    fitted fixed point of EM (see :mod:`jaxgmm._implicit`); the iterations are never
    differentiated. The choice of restart, ``n_iter``, ``status``, ``history`` and
    ``restart_lower_bounds`` are constants; initial parameters get zero gradients
    (the fixed point does not move with them). A fit stopped at ``max_iter`` gets the
    implicit gradient at the parameters it returns, as if they were the fixed point
    (accurate once EM has converged well beyond ``tol``); a ``NON_FINITE`` fit gets
    NaN gradients. Forward mode (``jax.jvp``, ``jax.jacfwd``) and second derivatives
    are not supported.

    Args:
        X: (N, D) data. float64 input is fitted in float64 when x64 is enabled,
            everything else in float32. More precise input than the compute dtype
            (e.g. float64 with x64 off) is centred in its own precision before the
            cast; the means are returned in the compute dtype.
        n_components: K, the number of mixture components.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        tol: stop when the mean log-likelihood per point changes by less than this.
        reg_covar: non-negative value added to the diagonal of every covariance.
        max_iter: maximum number of EM iterations per restart.
        n_init: number of restarts; the best final lower bound wins, and restarts
            that turn non-finite are never chosen.
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        key: an int seed or a JAX PRNG key.
        weights_init: (K,) initial weights, overriding the init method's.
        means_init: (K, D) initial means.
        precisions_init: initial precision matrices, shaped like the covariances:
            (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical.
        sample_weight: (N,) non-negative per-point weights (default all ones).
        chunk_size: rows per E-step chunk; default keeps intermediates ~2 MiB.
        progress: show a progress bar of EM iterations (tqdm), updated from inside
            the compiled loop. Off by default; has no effect under the user's own
            ``jit``.
        matmul_precision: ``"highest"`` (full float32 matrix products, default),
            ``"high"`` or ``"default"`` (TF32 on recent NVIDIA GPUs: faster, less
            accurate; see the README).
        on_interrupt: what a KeyboardInterrupt (Ctrl-C, a notebook's interrupt
            button) during the EM iterations does: ``"raise"`` (default) closes the
            progress bar and raises it within a second; ``"return"`` returns the
            parameters of the last finished iteration instead, with ``status ==
            Status.INTERRUPTED`` (a restart that had finished is always chosen over an
            interrupted one, and then gives its own status). An interrupt during
            compilation or initialisation is always raised.
        nan_policy: what NaN entries of X mean. ``"raise"`` (default): an error;
            ``"omit"``: rows with any NaN are dropped (a warning gives the count);
            ``"marginalize"``: NaN entries are missing values and EM runs exactly on
            the observed entries of every row (the lower bound is the observed-data
            log-likelihood per row; rows with no observed entry count for nothing;
            a column with no observed entry is an error). Initialisation then runs
            k-means on the observed coordinates only.
        noise_covariances: None, or each row's known measurement-noise covariance,
            (N, D) diagonal or (N, D, D) full ("extreme deconvolution"): the fitted
            mixture is that of the noise-free points, each row being one draw plus
            its noise. Needs ``covariance_type="full"`` (or ``"diag"`` with diagonal
            noise); combines with ``nan_policy="marginalize"``.

    Returns:
        A :class:`FitResult` with ``params``, ``lower_bound``, ``n_iter``,
        ``converged``, ``status`` and ``history``.

    Raises:
        ValueError, TypeError: invalid input, before anything is traced.
        ValueError: every restart produced non-finite values (on concrete input;
            under ``jit``/``vmap`` check ``result.status`` instead).
        KeyboardInterrupt: interrupted, with ``on_interrupt="raise"``; its ``n_iter``
            attribute holds the iterations run.

    Warns:
        UserWarning: the compute dtype cannot resolve numbers near the data to 1% of
            their spread (data far from the origin in float32); centre X first.
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
    check_concrete_for_nan_policy((X, sample_weight), nan_policy, noise_covariances)
    X = check_data_array(X, allow_nan=nan_policy != "raise")
    mask = noise = None
    if nan_policy != "raise" or noise_covariances is not None:
        if leading_axis_sharding(X) is not None:
            raise ValueError(
                "nan_policy='omit'/'marginalize' and noise_covariances are not supported "
                "for row-sharded X yet; fit a host (numpy) array instead."
            )
        X = np.asarray(X)
        dtype = compute_dtype(X.dtype)
        if sample_weight is not None:
            sample_weight = check_sample_weight(sample_weight, X.shape[0], dtype, 1)
        X, sample_weight, mask, noise = _incomplete_data(
            X, sample_weight, nan_policy, noise_covariances, covariance_type, dtype
        )
    n_samples, n_features = X.shape
    check_n_samples(n_samples, n_components)
    dtype = compute_dtype(X.dtype)
    sample_weight = check_sample_weight(sample_weight, n_samples, dtype, n_components)
    # float64 data fitted in float32 are centred in float64 first (offset added back below).
    X, offset = centre_and_cast(X, sample_weight, dtype)
    inits = check_initial_params(
        weights_init,
        means_init,
        precisions_init,
        covariance_type,
        n_components,
        n_features,
        X.dtype,
        means_offset=offset,
    )
    # Shape buckets (jaxgmm._buckets): padding rows and components, so that nearby
    # sizes share one compiled program. Traced input keeps its own shapes.
    max_chunk = _max_chunk(
        chunk_size,
        n_components,
        n_features,
        covariance_type,
        incomplete=mask is not None or noise is not None,
        missing_only=noise is None,
    )
    n_padded = n_components
    projected = False
    traced = any(is_traced(a) for a in (X, sample_weight, tol, reg_covar, *inits))
    sharding = leading_axis_sharding(X)
    if sharding is not None:  # each shard padded where it lives; stats cross devices
        if not traced:
            n_padded = component_bucket(n_components)
            inits = _pad_components(inits, covariance_type, n_components, n_padded)
        local = -(-max(n_samples, n_padded) // sharding.n_shards)
        local_rows, chunk = row_layout(local, max_chunk)
        X, sample_weight, row_index = pad_sharded_rows(X, sample_weight, sharding, local_rows)
    elif traced:
        chunk = min(max_chunk, n_samples)
        X, sample_weight = _pad_rows(X, sample_weight, -(-n_samples // chunk) * chunk)
        row_index = np.arange(X.shape[0], dtype=np.int32)
    else:
        # Restarts multiply the work of every padded component (W2: 256 of them).
        work = row_work(n_samples, n_features) * int(n_init)
        n_padded = component_bucket(n_components, work)
        n_rows, chunk = row_layout(
            max(n_samples, n_padded),
            max_chunk,
            fit_work(n_samples, n_features, n_components, n_init),
        )
        inits = _pad_components(inits, covariance_type, n_components, n_padded)
        # Tiny problems: one program for all four covariance types (_covariance.Projected);
        # not inside the caller's jit, which compiles its own program anyway.
        projected = work <= TINY_ROW_WORK and mask is None and noise is None
        projected = projected and not under_trace(())
        if projected:
            inits = _full_precisions_init(inits, covariance_type, n_padded, n_features)
        if copy_free(X, n_samples, chunk):  # no padded copy of big data
            sample_weight, row_index = overlapping_layout(sample_weight, n_samples, chunk)
        else:
            X, sample_weight = _pad_rows(X, sample_weight, n_rows)
            row_index = np.arange(n_rows, dtype=np.int32)
            mask, noise = _pad_like_rows(mask, n_rows), _pad_like_rows(noise, n_rows)
    fitted_type = Projected.name if projected else covariance_type
    static = _static_options(
        n_padded, fitted_type, max_iter, n_init, init, chunk, progress, matmul_precision
    )
    static["sharding"] = sharding
    regularisation = _scalar(reg_covar, X.dtype)
    if projected:
        kind = np.int32(COVARIANCE_TYPES.index(covariance_type))
        regularisation = ProjectedRegularisation(regularisation, kind)
    args = (
        X,
        sample_weight,
        row_index,
        as_key(key),
        _scalar(tol, X.dtype),
        regularisation,
        _scalar(max_iter, np.int32),
        _scalar(n_components, np.int32),
        *inits,
        mask,
        noise,
    )
    description = f"EM fit, K={n_components}" if progress else None
    small = fits_in_one_block(X.shape[0], n_padded, n_features, n_init, max_iter)
    if traced or small or under_trace(args):
        # Traced input (the user's jit/vmap/grad): gradients by the implicit function
        # theorem (jaxgmm._implicit), never through the loop.
        result = _fit_one_program(args, static, max_iter, description, differentiable=traced)
    else:
        result = _fit_in_blocks(args, static, max_iter, description, on_interrupt)
    concrete = not traced and not is_traced(result.status)  # else: NaN gradients, no raise
    if concrete and int(result.status) == Status.NON_FINITE:
        raise ValueError(_ill_defined_message(reg_covar, covariance_type, n_components))
    if concrete and _on_one_device(result):
        result = _finish_on_host(result, n_components, max_iter, covariance_type, projected, offset)
        return dataclasses.replace(result, params=mark_checked(result.params))
    history = result.history
    history = history[:max_iter] if is_traced(history) else first_rows(history, max_iter)
    params = first_components(result.params, n_components)  # (never Projected here)
    result = dataclasses.replace(result, params=params, history=history)
    if offset is not None and is_traced(result.params.means):  # traced reg_covar or inits
        means = result.params.means + jnp.asarray(offset, X.dtype)
        result = dataclasses.replace(result, params=dataclasses.replace(result.params, means=means))
    elif offset is not None:
        means = np.asarray(result.params.means, np.float64) + offset
        params = dataclasses.replace(result.params, means=jax.device_put(means.astype(X.dtype)))
        result = dataclasses.replace(result, params=params)
    if concrete:
        mark_checked(result.params)  # finite (NON_FINITE raised above), weights sum to 1
    return result


def _on_one_device(result: FitResult) -> bool:
    """Whether a concrete fit's parameters and history are JAX arrays on one device."""
    arrays = (result.history, *jax.tree_util.tree_leaves(result.params))
    return all(isinstance(a, jax.Array) and len(a.sharding.device_set) == 1 for a in arrays)


def _finish_on_host(
    result: FitResult,
    n_components: int,
    max_iter: int,
    covariance_type: str,
    projected: bool,
    offset: np.ndarray | None,
) -> FitResult:
    """The padded outputs of a concrete fit cut to the true K and ``max_iter`` in NumPy.

    Components and history are cut, a ``Projected`` fit's matrices written in
    ``covariance_type``'s shapes and the float64 centre added back to the means, all on
    the host; the arrays then go back to the device in one transfer, or stay NumPy
    arrays inside :func:`host_results` (the estimator reads them there). Each transfer
    costs ~20-50 us; a tiny fit's program runs in ~300 us.
    """
    params = result.params
    arrays = {name: np.asarray(getattr(params, name)) for name in ARRAY_FIELDS}
    dtype = arrays["means"].dtype
    arrays["weights"] = arrays["weights"][:n_components]
    arrays["means"] = arrays["means"][:n_components]
    if offset is not None:
        arrays["means"] = (arrays["means"].astype(np.float64) + offset).astype(dtype)
    model = covariance_model(params.covariance_type)
    for name in ("covariances", "precisions_cholesky"):
        if model.per_component:
            arrays[name] = arrays[name][:n_components]
        if projected:
            arrays[name] = covariance_model(covariance_type).from_full_matrices(arrays[name])
    arrays["history"] = np.asarray(result.history)[:max_iter]
    if not _host_results.get():
        arrays = jax.device_put(arrays)
    history = arrays.pop("history")
    params = dataclasses.replace(params, **arrays, covariance_type=covariance_type)
    return dataclasses.replace(result, params=params, history=history)


# Inside host_results(), concrete fits return NumPy parameters and history.
_host_results: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jaxgmm_host_results", default=False
)


@contextmanager
def host_results() -> Iterator[None]:
    """Within this block, concrete fits of :func:`fit` return their parameters and
    history as NumPy arrays (no transfer back to the device): for callers that read
    them on the host, such as the estimator."""
    token = _host_results.set(True)
    try:
        yield
    finally:
        _host_results.reset(token)


def _as_dtype(values, dtype):
    """``values`` in ``dtype``: host arrays cast by NumPy (no eager device program to
    compile in every new process), device or traced arrays by JAX."""
    if isinstance(values, np.ndarray):
        return values.astype(dtype, copy=False)
    return jnp.asarray(values, dtype)


def _scalar(value, dtype):
    """A () array of ``dtype``: NumPy for a concrete value (no eager device program to
    compile in every new process), JAX for a traced one (e.g. ``reg_covar`` under grad)."""
    return jnp.asarray(value, dtype) if is_traced(value) else np.asarray(value, dtype)


def under_trace(values) -> bool:
    """Whether ``fit`` runs on traced values or inside a staging trace (the user's jit).

    There the whole fit must be one program; elsewhere it runs as blocks of
    iterations driven from Python (:mod:`jaxgmm._host_loop`).
    """
    if any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(values)):
        return True
    # Inside jit (even on constants) every operation is staged: a new array is a tracer.
    return is_traced(jnp.zeros((), jnp.int32))


def _fit_one_program(
    args: tuple, static: dict, max_iter: int, description, differentiable: bool = False
) -> FitResult:
    """The fit as one compiled program (under the user's jit/vmap/grad).

    With ``differentiable``, the program runs on stop-gradient inputs and the result
    carries gradients by the implicit function theorem (:mod:`jaxgmm._implicit`).
    """
    with fit_progress(max_iter, description) if description else nullcontext():
        if differentiable:
            X, sample_weight, reg_covar = args[0], args[1], args[5]
            result = fit_compiled(*stop_gradients(args), **static)
            result = with_implicit_gradients(
                result, X, sample_weight, reg_covar, static["chunk_size"]
            )
        else:
            result = fit_compiled(*args, **static)
        if description and not is_traced(result.status):
            jax.block_until_ready(result)
    return result


def _fit_in_blocks(
    args: tuple, static: dict, max_iter: int, description, on_interrupt: str
) -> FitResult:
    """The fit as compiled blocks of EM iterations driven by a host loop."""
    X, sample_weight, row_index, key, tol, reg_covar, max_iter_, n_active, *inits = args
    # Host arrays go to the device once, not once per block.
    X, sample_weight, row_index, *inits = (
        a if a is None or isinstance(a, jax.Array) else jax.device_put(a)
        for a in (X, sample_weight, row_index, *inits)
    )
    static = {name: value for name, value in static.items() if name != "report_progress"}

    def start():
        return fit_start(X, sample_weight, row_index, key, reg_covar, n_active, *inits, **static)

    mask, noise = inits[3:]

    def advance(state, budget):
        center, restarts = state
        restarts, result, summary = fit_advance(
            *(X, sample_weight, row_index, mask, noise, center, restarts),
            *(tol, reg_covar, max_iter_, n_active, budget),
            **static,
        )
        return (center, restarts), result, summary

    program = ("fit", X.shape, str(X.dtype), tuple(static.items()))
    return run_blocks(
        start,
        advance,
        max_iter=max_iter,
        on_interrupt=on_interrupt,
        program=program,
        progress=description,
    )


def stack_datasets(datasets, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Stack data sets into one zero-weight-padded batch.

    Args:
        datasets: a (B, N, D) array, or a sequence of B arrays (N_b, D) with the same D.
        sample_weight: None, a (B, N) array, or a sequence of B arrays (N_b,).

    Returns:
        X: (B, N_max, D) and weights: (B, N_max); padded rows have weight 0.
    """
    if isinstance(datasets, (np.ndarray, jax.Array)) and np.ndim(datasets) == 3:
        X = np.asarray(datasets)
        if sample_weight is None:  # fast path: nothing to pad
            return X, np.ones(X.shape[:2])
        arrays = list(X)
    elif isinstance(datasets, Sequence) and not isinstance(datasets, (str, bytes)):
        arrays = [np.asarray(d) for d in datasets]
    else:
        raise ValueError(
            "fit_many expects a (B, N, D) array or a list of (N_b, D) arrays, got "
            f"{type(datasets).__name__} with shape {np.shape(datasets)}."
        )
    if not arrays:
        raise ValueError("fit_many needs at least one data set.")
    for b, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(f"data set {b} must be 2-D (N_b, D), got shape {a.shape}.")
    n_features = {a.shape[1] for a in arrays}
    if len(n_features) != 1:
        raise ValueError(f"all data sets must have the same number of features, got {n_features}.")
    if sample_weight is None:
        weights = [np.ones(len(a)) for a in arrays]
    else:
        weights = [np.asarray(w) for w in sample_weight]
        if len(weights) != len(arrays):
            raise ValueError(
                f"sample_weight has {len(weights)} entries but there are {len(arrays)} data sets."
            )
    n_max = max(len(a) for a in arrays)
    dtype = np.result_type(*[a.dtype for a in arrays])
    X = np.zeros((len(arrays), n_max, n_features.pop()), dtype=dtype)
    W = np.zeros((len(arrays), n_max))
    for b, (a, w) in enumerate(zip(arrays, weights, strict=True)):
        if w.shape != (len(a),):
            raise ValueError(
                f"sample_weight for data set {b} must have shape ({len(a)},), got {w.shape}."
            )
        X[b, : len(a)] = a
        W[b, : len(a)] = w
    return X, W


def fit_many(
    datasets,
    n_components: int,
    *,
    sample_weight=None,
    key=0,
    progress: bool = False,
    covariance_type: str = DEFAULTS.covariance_type,
    tol: float = DEFAULTS.tol,
    reg_covar: float = DEFAULTS.reg_covar,
    max_iter: int = DEFAULTS.max_iter,
    n_init: int = DEFAULTS.n_init,
    init: str = DEFAULTS.init,
    weights_init=None,
    means_init=None,
    precisions_init=None,
    chunk_size: int | None = DEFAULTS.chunk_size,
    matmul_precision: str = DEFAULTS.matmul_precision,
    on_interrupt: str = DEFAULTS.on_interrupt,
    nan_policy: str = DEFAULTS.nan_policy,
) -> FitResult:
    """Fit one independent mixture per data set, all in one compiled program.

    Data sets of different lengths are padded with zero-weight rows, which change
    nothing in the fit. Model ``b`` uses key ``fold_in(key, b)`` and gets the same
    result as ``fit`` with that key (up to vectorised round-off). The models run
    vmapped in cache-sized groups, one group after another (see ``jaxgmm._batching``).

    Args:
        datasets: a (B, N, D) array or a sequence of B arrays (N_b, D).
        n_components: K for every model.
        sample_weight: None, (B, N), or a sequence of (N_b,) weight arrays.
        key: an int seed or a JAX PRNG key.
        progress: show one progress bar of EM iterations for the whole batch.
        covariance_type, tol, reg_covar, max_iter, n_init, init, weights_init,
            means_init, precisions_init, chunk_size, matmul_precision, nan_policy:
            as in :func:`fit`, the same for every model (initial parameters: (K,),
            (K, D), covariance-shaped). ``"omit"`` drops each data set's rows with
            NaN; ``"marginalize"`` fits each data set's observed entries exactly.

    Returns:
        A :class:`FitResult` whose every leaf has a leading (B,) axis. Models whose
        every restart went non-finite have ``status == Status.NON_FINITE``; no error is
        raised for them.

    Raises:
        ValueError, TypeError: invalid input (naming the data set), before tracing.
        TypeError: traced data sets (inside ``jit``/``vmap``/``grad``): use
            ``jax.vmap`` over :func:`fit` there.
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
    if any(is_traced(a) for a in jax.tree_util.tree_leaves((datasets, sample_weight))):
        raise TypeError(
            "fit_many pads and checks the data sets on the host, so it cannot run inside "
            "jax.jit, jax.vmap or jax.grad. There, vmap fit instead: "
            "jax.vmap(lambda x, w: jaxgmm.fit(x, K, sample_weight=w))(X, W)."
        )
    models_sharding = None
    if isinstance(datasets, jax.Array) and datasets.ndim == 3:
        models_sharding = leading_axis_sharding(datasets, "datasets")
    if models_sharding is not None and nan_policy != "raise":
        raise ValueError(
            f"nan_policy={nan_policy!r} is not supported for data sets sharded over devices "
            "yet; pass host (numpy) data sets instead."
        )
    if models_sharding is not None:
        return _fit_sharded_models(
            datasets,
            n_components,
            models_sharding,
            sample_weight=sample_weight,
            key=key,
            progress=progress,
            covariance_type=covariance_type,
            tol=tol,
            reg_covar=reg_covar,
            max_iter=max_iter,
            n_init=n_init,
            init=init,
            inits=(weights_init, means_init, precisions_init),
            chunk_size=chunk_size,
            matmul_precision=matmul_precision,
            on_interrupt=on_interrupt,
        )
    if nan_policy == "omit":
        datasets, sample_weight = _omit_in_datasets(datasets, sample_weight)
    X, W = stack_datasets(datasets, sample_weight)
    mask = None
    if nan_policy == "marginalize":
        X, W, mask = _datasets_missing_mask(X, W)
    n_models, n_samples, n_features = X.shape
    check_n_samples(n_samples, n_components)
    dtype = compute_dtype(X.dtype)
    check_datasets(X, W, dtype, n_components)
    user_means_init = means_init
    weights_init, means_init, precisions_init = check_initial_params(
        weights_init,
        means_init,
        precisions_init,
        covariance_type,
        n_components,
        n_features,
        dtype,
    )
    # Input more precise than the compute dtype (float64 with x64 off, int64) is centred
    # per data set in float64 before the cast, as fit does; means are shifted back below.
    offsets = None
    if X.dtype != dtype:
        offsets = np.einsum("bn,bnd->bd", W, X.astype(np.float64)) / W.sum(axis=1)[:, None]
        X = X.astype(np.float64) - offsets[:, None, :]
        if means_init is not None:  # per data set now: (B, K, D)
            user_means = np.asarray(user_means_init, np.float64)[None]
            means_init = jnp.asarray((user_means - offsets[:, None, :]).astype(dtype))
    max_chunk = _max_chunk(
        chunk_size,
        n_components,
        n_features,
        covariance_type,
        incomplete=mask is not None,
        missing_only=True,
    )
    work = fit_work(n_samples, n_features, n_components, n_models * n_init)
    n_rows, chunk = row_layout(n_samples, max_chunk, work)
    if n_rows > n_samples:  # zero-weight copies of each data set's first row
        pad = n_rows - n_samples
        X = np.concatenate([X, np.broadcast_to(X[:, :1], (n_models, pad, n_features))], axis=1)
        W = np.concatenate([W, np.zeros((n_models, pad), W.dtype)], axis=1)
        if mask is not None:
            first = np.broadcast_to(mask[:, :1], (n_models, pad, n_features))
            mask = np.concatenate([mask, first], axis=1)
    static = _static_options(
        n_components, covariance_type, max_iter, n_init, init, chunk, progress, matmul_precision
    )
    keys = keys_for_range(key, n_models)
    args = (
        _as_dtype(X, dtype),
        _as_dtype(W, dtype),
        keys,
        _scalar(tol, dtype),
        _scalar(reg_covar, dtype),
        _scalar(max_iter, np.int32),
        _scalar(n_components, np.int32),
        weights_init,
        means_init,
        precisions_init,
        None if mask is None else jnp.asarray(mask),
    )
    description = f"EM fit of {n_models} models, K={n_components}" if progress else None
    result = _fit_many_programs(args, static, max_iter, description, on_interrupt)
    history = result.history  # (B, bucketed length)
    if is_traced(history):
        history = history[:, :max_iter]
    else:  # cut on the host: no eager slicing or transposing program
        history = jax.device_put(np.asarray(history)[:, :max_iter])
    result = dataclasses.replace(result, history=history)
    if offsets is not None:
        means = np.asarray(result.params.means, np.float64) + offsets[:, None, :]
        params = dataclasses.replace(result.params, means=jnp.asarray(means.astype(dtype)))
        result = dataclasses.replace(result, params=params)
    return result


def _omit_in_datasets(datasets, sample_weight):
    """``nan_policy="omit"`` for fit_many: drop each data set's rows with NaN (warns)."""
    if isinstance(datasets, (np.ndarray, jax.Array)) and np.ndim(datasets) == 3:
        datasets = list(np.asarray(datasets))
    if not isinstance(datasets, Sequence) or isinstance(datasets, (str, bytes)):
        return datasets, sample_weight  # stack_datasets raises the plain message
    arrays = [np.asarray(d) for d in datasets]
    weights = [None] * len(arrays) if sample_weight is None else list(sample_weight)
    kept_x, kept_w = [], []
    for b, (a, w) in enumerate(zip(arrays, weights, strict=False)):
        if a.ndim == 2:
            a, w = omit_nan_rows(a, f"data set {b}", w)
        kept_x.append(a)
        kept_w.append(np.ones(len(a)) if w is None else w)
    return kept_x, kept_w


def _datasets_missing_mask(X: np.ndarray, W: np.ndarray):
    """``nan_policy="marginalize"`` for stacked (B, N, D) data sets: -> (X, W, mask).

    Per data set, as :func:`jaxgmm._validation.missing_mask` does for one.
    """
    if not np.issubdtype(X.dtype, np.inexact) or not np.isnan(X).any():
        return X, W, None
    masks = []
    X, W = X.copy(), W.copy()
    for b in range(X.shape[0]):
        try:
            X[b], mask, W[b] = missing_mask(X[b], W[b])
        except ValueError as error:
            raise ValueError(f"data set {b}: {error}") from None
        masks.append(np.ones(X.shape[1:], bool) if mask is None else mask)
    return X, W, np.stack(masks)


def _fit_many_programs(
    args: tuple, static: dict, max_iter: int, description, on_interrupt: str
) -> FitResult:
    """``fit_many_compiled``, as blocks of iterations outside the user's jit."""
    X, W, keys, tol, reg_covar, max_iter_, n_active, *inits = args
    n_fits = X.shape[0] * static["n_init"]
    small = fits_in_one_block(X.shape[1], static["n_components"], X.shape[2], n_fits, max_iter)
    if small or under_trace(args):
        with fit_progress(max_iter, description) if description else nullcontext():
            return fit_many_compiled(*args, **static)
    static = {name: value for name, value in static.items() if name != "report_progress"}
    n_models = X.shape[0]

    def start():
        return fit_many_start(X, W, keys, reg_covar, n_active, *inits, **static)

    def advance(state, budget):
        data, restarts = state
        restarts, result, summary = fit_many_advance(
            data, restarts, tol, reg_covar, max_iter_, n_active, budget, n_models=n_models, **static
        )
        return (data, restarts), result, summary

    program = ("fit_many", X.shape, str(X.dtype), tuple(static.items()))
    return run_blocks(
        start,
        advance,
        max_iter=max_iter,
        on_interrupt=on_interrupt,
        program=program,
        progress=description,
    )


def _fit_sharded_models(
    X, n_components, sharding, *, sample_weight, key, progress, inits, **options
) -> FitResult:
    """:func:`fit_many` for a (B, N, D) ``jax.Array`` split along its models axis.

    Each device fits its own models; nothing crosses devices, and every leaf of the
    result is split along the models axis the same way.
    """
    covariance_type, max_iter = options["covariance_type"], options["max_iter"]
    n_models, n_samples, n_features = X.shape
    check_n_samples(n_samples, n_components)
    X = check_data_array(X.reshape(n_models * n_samples, n_features), "the data sets")
    dtype = compute_dtype(X.dtype)
    X = jnp.asarray(X, dtype).reshape(n_models, n_samples, n_features)
    if sample_weight is None:
        W = jnp.ones((n_models, n_samples), dtype)
    else:
        W = check_sample_weight(
            jnp.asarray(sample_weight).reshape(-1), n_models * n_samples, dtype, 1
        ).reshape(n_models, n_samples)
    inits = check_initial_params(*inits, covariance_type, n_components, n_features, dtype)
    max_chunk = _max_chunk(options["chunk_size"], n_components, n_features, covariance_type)
    work = fit_work(n_samples, n_features, n_components, n_models * options["n_init"])
    n_rows, chunk = row_layout(n_samples, max_chunk, work)
    X, W = _pad_models_rows(X, W, n_rows, sharding)
    keys = keys_for_range(key, n_models)
    keys = jax.device_put(keys, sharding.named())
    static = _static_options(
        n_components,
        covariance_type,
        max_iter,
        options["n_init"],
        options["init"],
        chunk,
        progress,
        options["matmul_precision"],
    )
    static["sharding"] = sharding
    args = (
        X,
        W,
        keys,
        jnp.asarray(options["tol"], dtype),
        jnp.asarray(options["reg_covar"], dtype),
        jnp.asarray(max_iter, jnp.int32),
        jnp.asarray(n_components, jnp.int32),
        *inits,
    )
    description = f"EM fit of {n_models} models, K={n_components}" if progress else None
    result = _fit_many_programs(args, static, max_iter, description, options["on_interrupt"])
    history = result.history
    if history.shape[1] != max_iter:
        history = jit(lambda h: h[:, :max_iter], out_shardings=sharding.named())(history)
    return dataclasses.replace(result, history=history)


def _pad_models_rows(X, W, n_rows: int, sharding):
    """Pad every model's rows to ``n_rows`` (zero-weight copies of its first row), in place."""
    pad = n_rows - X.shape[1]
    if pad == 0:
        return X, W

    def padded(X, W):
        first = jnp.broadcast_to(X[:, :1], (X.shape[0], pad, X.shape[2]))
        return (
            jnp.concatenate([X, first], axis=1),
            jnp.concatenate([W, jnp.zeros((W.shape[0], pad), W.dtype)], axis=1),
        )

    out = sharding.named()
    return jit(padded, out_shardings=(out, out))(X, W)
