"""Functions of fitted parameters: scores, predictions, sampling, information criteria."""

from __future__ import annotations

import dataclasses
import math
import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._chunking import chunk_size_for, chunked_map
from jaxgmm._covariance import COVARIANCE_OPS
from jaxgmm._em import log_resp_and_norm
from jaxgmm._keys import as_key
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._validation import check_data, check_key, check_params, check_sample_weight


def _as_params(params) -> GaussianMixtureParams:
    return check_params(params)


@partial(jax.jit, static_argnames="chunk_size")
def _log_resp_and_norm(params: GaussianMixtureParams, X: jax.Array, chunk_size: int):
    # Centre on the mixture mean: keeps the matrix-product form of the diag/spherical/
    # tied densities accurate for data far from the origin.
    center = params.weights @ params.means
    centred = dataclasses.replace(params, means=params.means - center)
    return chunked_map(lambda x: log_resp_and_norm(x - center, centred), X, chunk_size)


def _validated(params, X) -> tuple[GaussianMixtureParams, jax.Array]:
    params = _as_params(params)
    X = check_data(X, n_features=params.n_features)
    return params, X.astype(params.means.dtype)


def _evaluate_validated(params: GaussianMixtureParams, X: jax.Array):
    chunk = chunk_size_for(X.shape[0], params.n_components, params.n_features)
    return _log_resp_and_norm(params, X, chunk)


def _evaluate(params, X):
    return _evaluate_validated(*_validated(params, X))


def score_samples(params, X) -> jax.Array:
    """Log-likelihood of each point under the mixture.

    Args:
        params: fitted :class:`GaussianMixtureParams` (or a :class:`FitResult`).
        X: (N, D) data.

    Returns:
        (N,) log p(x_n).
    """
    return _evaluate(params, X)[1]


def score(params, X, sample_weight=None) -> jax.Array:
    """Mean (optionally sample-weighted) log-likelihood per point; X: (N, D) -> ()."""
    params, X = _validated(params, X)
    weights = check_sample_weight(sample_weight, X.shape[0], X.dtype, 1)
    log_lik = _evaluate_validated(params, X)[1]
    return jnp.sum(weights * log_lik) / jnp.sum(weights)


def predict_proba(params, X) -> jax.Array:
    """Posterior probability of each component for each point; X: (N, D) -> (N, K).

    Rows sum to one to rounding even for points so far from every component that their
    log-densities are huge (|log p| ~ 1e6 in float32, where the log-normaliser itself
    is rounded by more than 0.1).
    """
    proba = jnp.exp(_evaluate(params, X)[0])
    return proba / jnp.sum(proba, axis=1, keepdims=True)


def predict(params, X) -> jax.Array:
    """Most probable component of each point; X: (N, D) -> (N,) int labels."""
    return jnp.argmax(_evaluate(params, X)[0], axis=1)


def n_parameters(params) -> int:
    """Number of free parameters of the mixture (for BIC/AIC)."""
    params = _as_params(params)
    k, d = params.n_components, params.n_features
    cov = COVARIANCE_OPS[params.covariance_type].n_parameters(k, d)
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
    noise = COVARIANCE_OPS[params.covariance_type].scale_noise(z, labels, params.covariances)
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
