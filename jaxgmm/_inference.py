"""Functions of fitted parameters: scores, predictions, sampling, information criteria."""

from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxgmm._buckets import first_rows, row_layout
from jaxgmm._chunking import chunk_size_for, chunked_map
from jaxgmm._covariance import covariance_model
from jaxgmm._em import log_resp_and_norm
from jaxgmm._keys import as_key
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._rows import IN_MEMORY, Sharded
from jaxgmm._sharding import (
    RowSharding,
    leading_axis_sharding,
    pad_sharded_rows,
    unpad_sharded_rows,
)
from jaxgmm._validation import (
    check_data,
    check_key,
    check_params,
    check_sample_weight,
    is_traced,
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


@partial(jax.jit, static_argnames=("output", "chunk_size", "sharding"))
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


def _evaluate(params, X, output: str, sample_weight=None):
    """Validate params and X, then :func:`evaluate_checked`.

    Args:
        params: fitted parameters (or a FitResult); X: (N, D) data.
        output: see :func:`_evaluate_program`.
        sample_weight: (N,) weights for ``"score"``.

    Returns:
        The (N, ...) per-point output, or the () score.
    """
    params = _as_params(params)
    X = check_data(X, n_features=params.n_features)
    if output == "score":
        sample_weight = check_sample_weight(sample_weight, X.shape[0], params.means.dtype, 1)
    return evaluate_checked(params, X, output, sample_weight)


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
    n_samples = X.shape[0]
    max_chunk = chunk_size_for(2**62, params.n_components, params.n_features)
    sharding = leading_axis_sharding(X)
    if sharding is not None:
        return _evaluate_sharded(params, X, output, sample_weight, sharding, max_chunk)
    if is_traced(X):
        n_rows, chunk = n_samples, min(n_samples, max_chunk)
    else:
        # Padding rows (copies of row 0, weight zero) on the host for host data:
        # nearby row counts share one compiled program.
        n_rows, chunk = row_layout(n_samples, max_chunk)
        xp = np if isinstance(X, np.ndarray) else jnp
        pad = n_rows - n_samples
        if pad:
            X = xp.concatenate([X, xp.broadcast_to(X[:1], (pad, X.shape[1]))])
            if sample_weight is not None:
                sample_weight = xp.concatenate([np.asarray(sample_weight), np.zeros(pad, dtype)])
        X = xp.asarray(X, dtype)
    out = _evaluate_program(params, X, sample_weight, output=output, chunk_size=chunk)
    if output == "score":
        return out
    if host_rows:
        return np.asarray(out)[:n_samples]
    return out if n_rows == n_samples else first_rows(out, n_samples)


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


def score_samples(params, X) -> jax.Array:
    """Log-likelihood of each point under the mixture.

    Args:
        params: fitted :class:`GaussianMixtureParams` (or a :class:`FitResult`).
        X: (N, D) data.

    Returns:
        (N,) log p(x_n).
    """
    return _evaluate(params, X, "score_samples")


def score(params, X, sample_weight=None) -> jax.Array:
    """Mean (optionally sample-weighted) log-likelihood per point; X: (N, D) -> ()."""
    return _evaluate(params, X, "score", sample_weight)


def predict_proba(params, X) -> jax.Array:
    """Posterior probability of each component for each point; X: (N, D) -> (N, K).

    Rows sum to one to rounding even for points so far from every component that their
    log-densities are huge (|log p| ~ 1e6 in float32, where the log-normaliser itself
    is rounded by more than 0.1).
    """
    return _evaluate(params, X, "predict_proba")


def predict(params, X) -> jax.Array:
    """Most probable component of each point; X: (N, D) -> (N,) int labels."""
    return _evaluate(params, X, "predict")


def n_parameters(params) -> int:
    """Number of free parameters of the mixture (for BIC/AIC)."""
    params = _as_params(params)
    k, d = params.n_components, params.n_features
    cov = covariance_model(params.covariance_type).n_parameters(k, d)
    return int(cov + k * d + k - 1)


def bic(params, X) -> jax.Array:
    """Bayesian information criterion on X: (N, D) (lower is better); -> ()."""
    mean_log_lik = score(params, X)  # validates X before its shape is used
    n = np.shape(X)[0]
    return -2.0 * mean_log_lik * n + n_parameters(params) * math.log(n)


def aic(params, X) -> jax.Array:
    """Akaike information criterion on X: (N, D) (lower is better); -> ()."""
    mean_log_lik = score(params, X)  # validates X before its shape is used
    n = np.shape(X)[0]
    return -2.0 * mean_log_lik * n + 2.0 * n_parameters(params)


@partial(jax.jit, static_argnames="n_samples")
def _sample(params: GaussianMixtureParams, key: jax.Array, n_samples: int):
    label_key, noise_key = jax.random.split(key)
    log_weights = jnp.log(params.weights)
    labels = jnp.sort(jax.random.categorical(label_key, log_weights, shape=(n_samples,)))
    z = jax.random.normal(noise_key, (n_samples, params.n_features), params.means.dtype)
    noise = covariance_model(params.covariance_type).scale_noise(z, labels, params.covariances)
    return params.means[labels] + noise, labels


def sample(params, n_samples: int = 1, key=0) -> tuple[jax.Array, jax.Array]:
    """Draw points from the mixture.

    Args:
        params: fitted parameters.
        n_samples: number of points M.
        key: an int seed or a JAX PRNG key.

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
    return _sample(params, as_key(key), n_samples)
