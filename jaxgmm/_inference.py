"""Functions of fitted parameters: scores, predictions, sampling, information criteria."""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxgmm._buckets import (
    SMALL_ROW_WORK,
    TINY_ROW_WORK,
    component_bucket,
    first_rows,
    row_layout,
    row_work,
)
from jaxgmm._chunking import chunk_size_for, chunked_map
from jaxgmm._covariance import covariance_model
from jaxgmm._em import log_resp_and_norm
from jaxgmm._incomplete import incomplete_log_prob
from jaxgmm._jit import jit
from jaxgmm._keys import as_key
from jaxgmm._params import GaussianMixtureParams, padded_components
from jaxgmm._rows import IN_MEMORY, Sharded
from jaxgmm._sharding import (
    RowSharding,
    leading_axis_sharding,
    pad_sharded_rows,
    unpad_sharded_rows,
)
from jaxgmm._validation import (
    check_concrete_for_nan_policy,
    check_data,
    check_data_array,
    check_key,
    check_nan_policy,
    check_noise_covariances,
    check_params,
    check_sample_weight,
    is_traced,
    nan_rows,
)


def _as_params(params) -> GaussianMixtureParams:
    return check_params(params)


def _chunk_output(output: str, log_resp: jax.Array, log_norm: jax.Array) -> jax.Array:
    """One chunk's rows of the requested per-point output."""
    if output == "predict":
        return jnp.argmax(log_resp, axis=1)
    if output == "predict_proba":
        proba = jnp.exp(log_resp)
        # Rows sum to one even where the log-normaliser itself is rounded.
        return proba / jnp.sum(proba, axis=1, keepdims=True)
    return log_norm


@jit(data_argnum=1, static_argnames=("output", "chunk_size", "sharding"))
def _evaluate_program(
    params: GaussianMixtureParams,
    X: jax.Array,
    sample_weight: jax.Array | None,
    *,
    output: str,
    chunk_size: int,
    sharding: RowSharding | None = None,
):
    """One compiled program per call: per-point ``output`` for (N, D) rows, or the score.

    ``output`` is ``"score_samples"`` (N,), ``"predict"`` (N,), ``"predict_proba"``
    (N, K) or ``"score"`` () (the ``sample_weight``-weighted mean log-likelihood).
    With ``sharding``, each device scores its own rows (per-point outputs stay split
    the same way; the score's two sums are all-reduced).
    """
    with jax.default_matmul_precision("highest"):  # full float32, also on TF32 GPUs
        if sharding is None:
            return _evaluate_rows(params, X, sample_weight, output, chunk_size, IN_MEMORY)
        return _evaluate_sharded_rows(params, X, sample_weight, output, chunk_size, sharding)


def _evaluate_sharded_rows(params, X, sample_weight, output, chunk_size, sharding):
    """:func:`_evaluate_rows` under ``shard_map``: each device scores its own rows."""
    rows = PartitionSpec(sharding.axis)
    reducer = Sharded(axis_name=sharding.axis)
    return jax.shard_map(
        partial(_evaluate_rows, output=output, chunk_size=chunk_size, reducer=reducer),
        mesh=sharding.mesh,
        in_specs=(PartitionSpec(), rows, rows),
        out_specs=PartitionSpec() if output == "score" else rows,
        check_vma=False,
    )(params, X, sample_weight)


def _evaluate_rows(params, X, sample_weight, output, chunk_size, reducer):
    """:func:`_evaluate_program` on the rows this program holds (all, or one shard's)."""
    # Centre on the mixture mean: keeps the matrix-product form of the diag/spherical/
    # tied densities accurate for data far from the origin.
    center = params.weights @ params.means
    centred = dataclasses.replace(params, means=params.means - center)
    per_point = "score_samples" if output == "score" else output

    def rows(x):
        return _chunk_output(per_point, *log_resp_and_norm(x - center, centred))

    values = chunked_map(rows, X, chunk_size)
    if output == "score":
        total, weight = reducer.all_reduce(
            (jnp.sum(sample_weight * values), jnp.sum(sample_weight))
        )
        return total / weight
    return values


def _evaluate(params, X, output: str, sample_weight=None, nan_policy="raise", noise=None):
    """Validate params and X, then :func:`evaluate_checked` (or the incomplete-data path).

    Args:
        params: fitted parameters (or a FitResult); X: (N, D) data.
        output: see :func:`_evaluate_program`.
        sample_weight: (N,) weights for ``"score"``.
        nan_policy: ``"raise"``, ``"omit"`` or ``"marginalize"`` (see :func:`score_samples`).
        noise: None, or (N, D) / (N, D, D) measurement-noise covariances of the rows.

    Returns:
        The (N, ...) per-point output, or the () score.
    """
    params = _as_params(params)
    check_nan_policy(nan_policy)
    check_concrete_for_nan_policy((X, sample_weight), nan_policy, noise)
    if nan_policy == "raise" and noise is None:
        X = check_data(_on_host_if_cheap(X), n_features=params.n_features)
        if output == "score":
            sample_weight = check_sample_weight(sample_weight, X.shape[0], params.means.dtype, 1)
        return evaluate_checked(params, X, output, sample_weight)
    allow_nan = nan_policy != "raise"
    X = np.asarray(check_data_array(X, n_features=params.n_features, allow_nan=allow_nan))
    dtype = params.means.dtype
    n_samples = X.shape[0]
    if output == "score":
        sample_weight = np.asarray(check_sample_weight(sample_weight, n_samples, dtype, 1))
    if noise is not None:
        noise = check_noise_covariances(
            noise, n_samples, params.n_features, params.covariance_type, dtype
        )
    if nan_policy == "omit":
        return _evaluate_omitting(params, X, output, sample_weight, noise)
    mask = ~np.isnan(X) if np.isnan(X).any() else None
    if mask is None and noise is None:
        return evaluate_checked(params, np.asarray(X, dtype), output, sample_weight)
    return evaluate_incomplete(params, X, mask, noise, output, sample_weight)


# Device arrays up to this size are checked and padded on the host: the copy costs
# microseconds, while checks and padding on the device cost a dispatch (and a compiled
# program per row count) each.
_HOST_COPY_BYTES = 1 << 20


def _on_host_if_cheap(X):
    """X as a NumPy array when it is a JAX array that the host reads for (almost) free.

    That is an unsharded, concrete array in host memory (the CPU backend) or of at most
    :data:`_HOST_COPY_BYTES`, on the device an uncommitted array would go to anyway (so
    the compiled program runs where it would have). Everything else is returned as is.
    """
    if not isinstance(X, jax.Array) or is_traced(X) or not X.is_fully_addressable:
        return X
    devices = X.sharding.device_set
    if len(devices) != 1:
        return X
    (device,) = devices
    if device.platform != "cpu" and X.nbytes > _HOST_COPY_BYTES:
        return X
    if X.committed and (jax.config.jax_default_device is not None or device != jax.devices()[0]):
        return X
    return np.asarray(X)


def _evaluate_omitting(params, X, output: str, sample_weight, noise):
    """``nan_policy="omit"``: rows with NaN are left out of the score; per-point outputs
    give them NaN (``predict``: -1)."""
    drop = nan_rows(X)
    n_drop = int(drop.sum())
    if n_drop:
        warnings.warn(
            f"nan_policy='omit': {n_drop} of {X.shape[0]} rows of X contain NaN and were "
            + ("left out of the score." if output == "score" else "given NaN (predict: -1)."),
            UserWarning,
            stacklevel=4,
        )
    keep = ~drop
    if n_drop == X.shape[0]:
        if output == "score":
            raise ValueError("Every row of X contains NaN, so nan_policy='omit' leaves no data.")
        shape = (X.shape[0],) + ((params.n_components,) if output == "predict_proba" else ())
        return jnp.asarray(np.full(shape, -1 if output == "predict" else np.nan))
    kept_noise = None if noise is None else noise[keep]
    kept_weight = None if sample_weight is None else sample_weight[keep]
    if output == "score" and not (kept_weight > 0).any():
        raise ValueError("Every row with positive sample_weight contains NaN; nothing to score.")
    if kept_noise is None:
        kept = evaluate_checked(params, X[keep].astype(params.means.dtype), output, kept_weight)
    else:
        kept = evaluate_incomplete(params, X[keep], None, kept_noise, output, kept_weight)
    if output == "score" or n_drop == 0:
        return kept
    kept = np.asarray(kept)
    fill = -1 if output == "predict" else np.nan
    out = np.full((X.shape[0],) + kept.shape[1:], fill, kept.dtype)
    out[keep] = kept
    return jnp.asarray(out)


@jit(data_argnum=1, static_argnames=("output", "chunk_size"))
def _evaluate_incomplete_program(params, X, mask, noise, sample_weight, *, output, chunk_size):
    """Per-point ``output`` (or the score) of incomplete rows, chunk by chunk.

    X: (N, D) with missing entries filled by any finite value, N a multiple of
    ``chunk_size``; mask: None or (N, D) bool; noise: None, (N, D) or (N, D, D).
    """
    per_point = "score_samples" if output == "score" else output

    def split(a):
        return None if a is None else a.reshape((-1, chunk_size) + a.shape[1:])

    def one_chunk(chunk):
        x, m, s = chunk
        log_prob = incomplete_log_prob(x, m, s, params)
        log_norm = jax.nn.logsumexp(log_prob, axis=1)
        if m is not None:  # rows with no observed entry: exactly 0 (no information)
            log_norm = jnp.where(jnp.any(m, axis=1), log_norm, 0.0)
        return _chunk_output(per_point, log_prob - log_norm[:, None], log_norm)

    with jax.default_matmul_precision("highest"):
        out = jax.lax.map(one_chunk, (split(X), split(mask), split(noise)))
    values = out.reshape((-1,) + out.shape[2:])
    if output == "score":
        return jnp.sum(sample_weight * values) / jnp.sum(sample_weight)
    return values


def evaluate_incomplete(params, X, mask, noise, output: str, sample_weight=None):
    """:func:`evaluate_checked` for rows with missing entries and/or measurement noise.

    Args:
        params: checked parameters; X: (N, D) concrete host data (NaN where ``mask``
            is False); mask: None or (N, D) bool, True where observed; noise: None or
            checked (N, D) / (N, D, D) noise covariances; output: see
            :func:`_evaluate_program`; sample_weight: (N,) for ``"score"``.

    Returns:
        The (N, ...) per-point output, or the () score. Rows with no observed entry
        score 0 (they carry no information) and get the mixture weights as
        probabilities.
    """
    dtype = params.means.dtype
    n_samples, n_features = X.shape
    max_chunk = chunk_size_for(
        2**62, params.n_components, n_features, params.covariance_type, incomplete=True
    )
    n_rows, chunk = row_layout(n_samples, max_chunk)
    pad = n_rows - n_samples

    def padded(a, value=0):
        if a is None or pad == 0:
            return a
        return np.concatenate([a, np.full((pad,) + a.shape[1:], value, a.dtype)])

    X = np.where(np.isnan(X), 0.0, X) if mask is not None else X
    X = jnp.asarray(padded(np.asarray(X, dtype)))
    mask = None if mask is None else jnp.asarray(padded(mask, True))
    noise = None if noise is None else jnp.asarray(padded(np.asarray(noise, dtype)))
    if output == "score":
        sample_weight = jnp.asarray(padded(np.asarray(sample_weight, dtype)))
    out = _evaluate_incomplete_program(
        params, X, mask, noise, sample_weight, output=output, chunk_size=chunk
    )
    return out if output == "score" else out[:n_samples]


def evaluate_checked(
    params: GaussianMixtureParams, X, output: str, sample_weight=None, *, host_rows: bool = False
):
    """Pad validated rows to their bucket, run one compiled program, slice back.

    Args:
        params: checked parameters; X: (N, D) checked data (numpy, JAX or traced).
        output: see :func:`_evaluate_program`.
        sample_weight: (N,) checked weights for ``"score"``, else None.
        host_rows: return per-point outputs as a numpy array (for the estimator: the
            padding rows are then dropped on the host, for free).

    Returns:
        The (N, ...) per-point output, or the () score.
    """
    dtype = params.means.dtype
    n_samples, n_components = X.shape[0], params.n_components
    params = _scoring_params(params, X)
    max_chunk = _max_chunk(params.n_components, params.n_features)
    if isinstance(X, np.ndarray):
        # One host copy pads (copies of row 0, weight zero) and casts; the compiled
        # program's own argument transfer then moves it: nearby row counts share one
        # program and nothing else is dispatched.
        n_rows, chunk = row_layout(n_samples, max_chunk)
        X = _padded_rows(X, n_rows, dtype)
        if sample_weight is not None:
            sample_weight = _padded_rows(np.asarray(sample_weight), n_rows, dtype, fill=0)
    else:
        sharding = leading_axis_sharding(X)
        if sharding is not None:
            return _evaluate_sharded(params, X, output, sample_weight, sharding, max_chunk)
        if is_traced(X):
            n_rows, chunk = n_samples, min(n_samples, max_chunk)
        else:  # a device array: padded on its device
            n_rows, chunk = row_layout(n_samples, max_chunk)
            pad = n_rows - n_samples
            if pad:
                X = jnp.concatenate([X, jnp.broadcast_to(X[:1], (pad, X.shape[1]))])
                if sample_weight is not None:
                    sample_weight = jnp.concatenate(
                        [jnp.asarray(sample_weight), jnp.zeros(pad, dtype)]
                    )
        X = jnp.asarray(X, dtype)
    out = _evaluate_program(params, X, sample_weight, output=output, chunk_size=chunk)
    if output == "score":
        return out
    if output == "predict_proba" and params.n_components != n_components:
        out = np.asarray(out)[:n_samples, :n_components]  # the true components' columns
        return out if host_rows else jax.device_put(out)
    if host_rows:
        return np.asarray(out)[:n_samples]
    return out if n_rows == n_samples else first_rows(out, n_samples)


def _scoring_params(params: GaussianMixtureParams, X) -> GaussianMixtureParams:
    """Parameters padded to the fits' component bucket when compiling is what costs.

    Scoring few rows takes microseconds and compiling its program about 0.3 s, so for
    small problems models with K = 1..4 (and 5..8; on tiny ones 1..8) share one scoring
    program, as their fits do (:func:`jaxgmm._buckets.component_bucket`): a
    model-selection loop over K compiles a few programs, not one per K. On tiny
    problems every covariance type is scored as ``full`` (diagonal, scaled-identity or
    repeated shared matrices), so a sweep over the four types shares one program too. Padded
    components have weight 0 and change no output; traced or multi-device parameters
    and data are left as they are.
    """
    n_components, n_features = params.n_components, params.n_features
    work = row_work(X.shape[0], n_features)
    if work > SMALL_ROW_WORK or is_traced(X) or leading_axis_sharding(X) is not None:
        return params
    leaves = jax.tree_util.tree_leaves(params)
    if any(is_traced(a) or len(getattr(a, "devices", lambda: ())()) > 1 for a in leaves):
        return params
    as_full = work <= TINY_ROW_WORK  # one scoring program for all four covariance types
    return padded_components(params, component_bucket(n_components, work), as_full)


@lru_cache(maxsize=64)
def _max_chunk(n_components: int, n_features: int) -> int:
    """Rows per chunk of the scoring kernel for K components in D dimensions."""
    return chunk_size_for(2**62, n_components, n_features)


def _padded_rows(values: np.ndarray, n_rows: int, dtype, fill=None) -> np.ndarray:
    """(N, ...) ``values`` cast to ``dtype`` and padded to ``n_rows`` rows, in one copy.

    The padding rows are ``fill``, or copies of the first row when ``fill`` is None.
    """
    n = values.shape[0]
    if n == n_rows:
        return values.astype(dtype, copy=False)
    out = np.empty((n_rows, *values.shape[1:]), dtype)
    out[:n] = values
    out[n:] = values[0] if fill is None else fill
    return out


def _evaluate_sharded(params, X, output: str, sample_weight, sharding, max_chunk: int):
    """:func:`evaluate_checked` for row-sharded X: every shard padded and scored in place."""
    n_samples = X.shape[0]
    per_shard = n_samples // sharding.n_shards
    local_rows, chunk = row_layout(per_shard, max_chunk)
    if sample_weight is None:
        sample_weight = np.ones(n_samples, params.means.dtype)
    X, sample_weight, _ = pad_sharded_rows(X, sample_weight, sharding, local_rows)
    out = _evaluate_program(
        params, X, sample_weight, output=output, chunk_size=chunk, sharding=sharding
    )
    if output == "score":
        return out
    return unpad_sharded_rows(out, sharding, per_shard)


def score_samples(params, X, *, nan_policy: str = "raise", noise_covariances=None) -> jax.Array:
    """Log-likelihood of each point under the mixture.

    Args:
        params: fitted :class:`GaussianMixtureParams` (or a :class:`FitResult`).
        X: (N, D) data.
        nan_policy: what NaN entries mean: ``"raise"`` (default) refuses them;
            ``"omit"`` gives rows with NaN a NaN score (with a warning);
            ``"marginalize"`` scores each row's observed entries (the marginal density;
            a row with no observed entry scores 0).
        noise_covariances: None, or (N, D) / (N, D, D) measurement-noise covariances:
            the density of the noisy observations, each component's covariance plus
            the row's noise.

    Returns:
        (N,) log p(x_n).
    """
    return _evaluate(params, X, "score_samples", None, nan_policy, noise_covariances)


def score(
    params, X, sample_weight=None, *, nan_policy: str = "raise", noise_covariances=None
) -> jax.Array:
    """Mean (optionally sample-weighted) log-likelihood per point; X: (N, D) -> ().

    ``nan_policy`` and ``noise_covariances`` as in :func:`score_samples`; ``"omit"``
    leaves rows with NaN out of the mean.
    """
    return _evaluate(params, X, "score", sample_weight, nan_policy, noise_covariances)


def predict_proba(params, X, *, nan_policy: str = "raise", noise_covariances=None) -> jax.Array:
    """Posterior probability of each component for each point; X: (N, D) -> (N, K).

    Rows sum to one to rounding even for points so far from every component that their
    log-densities are huge (|log p| ~ 1e6 in float32, where the log-normaliser itself
    is rounded by more than 0.1). ``nan_policy`` and ``noise_covariances`` as in
    :func:`score_samples` (``"omit"``: NaN rows; ``"marginalize"``: given the observed
    entries, the mixture weights for a row with none).
    """
    return _evaluate(params, X, "predict_proba", None, nan_policy, noise_covariances)


def predict(params, X, *, nan_policy: str = "raise", noise_covariances=None) -> jax.Array:
    """Most probable component of each point; X: (N, D) -> (N,) int labels.

    ``nan_policy`` and ``noise_covariances`` as in :func:`score_samples`
    (``"omit"``: label -1 for rows with NaN).
    """
    return _evaluate(params, X, "predict", None, nan_policy, noise_covariances)


def n_parameters(params) -> int:
    """Number of free parameters of the mixture (for BIC/AIC)."""
    params = _as_params(params)
    return count_parameters(params.n_components, params.n_features, params.covariance_type)


def count_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a K-component mixture in D dimensions: covariances, means and
    K - 1 weights."""
    cov = covariance_model(covariance_type).n_parameters(n_components, n_features)
    return int(cov + n_components * n_features + n_components - 1)


def _scored_rows(X, nan_policy: str) -> int:
    """N for the information criteria: the rows the score used."""
    if nan_policy == "omit":
        return int((~nan_rows(np.asarray(X))).sum())
    return np.shape(X)[0]


def bic(params, X, *, nan_policy: str = "raise") -> jax.Array:
    """Bayesian information criterion on X: (N, D) (lower is better); -> ().

    ``nan_policy`` as in :func:`score` (``"omit"``: N counts the rows without NaN).
    """
    mean_log_lik = score(params, X, nan_policy=nan_policy)  # validates X first
    n = _scored_rows(X, nan_policy)
    return -2.0 * mean_log_lik * n + n_parameters(params) * math.log(n)


def aic(params, X, *, nan_policy: str = "raise") -> jax.Array:
    """Akaike information criterion on X: (N, D) (lower is better); -> ().

    ``nan_policy`` as in :func:`score`.
    """
    mean_log_lik = score(params, X, nan_policy=nan_policy)  # validates X first
    n = _scored_rows(X, nan_policy)
    return -2.0 * mean_log_lik * n + 2.0 * n_parameters(params)


@jit(static_argnames="n_samples")
def _sample(params: GaussianMixtureParams, key: jax.Array, n_samples: int, measurement=None):
    label_key, noise_key = jax.random.split(key)
    log_weights = jnp.log(params.weights)
    labels = jnp.sort(jax.random.categorical(label_key, log_weights, shape=(n_samples,)))
    z = jax.random.normal(noise_key, (n_samples, params.n_features), params.means.dtype)
    noise = covariance_model(params.covariance_type).scale_noise(z, labels, params.covariances)
    points = params.means[labels] + noise
    if measurement is not None:  # independent draws from each row's noise covariance
        z = jax.random.normal(jax.random.fold_in(noise_key, 1), points.shape, points.dtype)
        if measurement.ndim == 2:
            points = points + jnp.sqrt(measurement) * z
        else:  # symmetric square root: also for singular (semi-definite) noise
            values, vectors = jnp.linalg.eigh(measurement)
            scaled = vectors * jnp.sqrt(jnp.maximum(values, 0.0))[:, None, :]
            points = points + jnp.einsum("mde,me->md", scaled, z)
    return points, labels


def sample(params, n_samples: int = 1, key=0, *, noise_covariances=None):
    """Draw points from the mixture, optionally observed through measurement noise.

    Args:
        params: fitted parameters.
        n_samples: number of points M.
        key: an int seed or a JAX PRNG key.
        noise_covariances: None, or (M, D) noise variances / (M, D, D) noise
            covariances: point m then gets an independent N(0, S_m) error added (the
            generative model that ``fit(..., noise_covariances=S)`` deconvolves).

    Returns:
        X: (M, D) points, grouped by component as in scikit-learn, and labels: (M,).
    """
    params = _as_params(params)
    if (
        isinstance(n_samples, (bool, np.bool_))
        or not isinstance(n_samples, numbers.Integral)
        or n_samples < 1
    ):
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    n_samples = int(n_samples)
    check_key(key)
    if noise_covariances is None:
        return _sample(params, as_key(key), n_samples)
    noise = check_noise_covariances(
        noise_covariances, n_samples, params.n_features, "full", params.means.dtype
    )
    return _sample(params, as_key(key), n_samples, jnp.asarray(noise))
