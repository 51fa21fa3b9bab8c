"""Reference EM implementations in numpy, for the benchmarks.

* :func:`loop_em_iteration`: the seed notebooks' point-by-point style -- a pure-Python
  double loop over points and components for the E-step and another for the M-step,
  as written in course notebooks. Only run on a small N: it is that slow.
* :func:`vectorised_em_iteration`: a reasonable vectorised numpy EM (a loop over
  components, vectorised over points, Cholesky-based log-densities).

Both do one full-covariance EM iteration and return new (weights, means, covariances)
and the mean log-likelihood of the old parameters.
"""

from __future__ import annotations

import math

import numpy as np


def loop_em_iteration(X, weights, means, covariances, reg_covar=1e-6):
    """One EM iteration with explicit Python loops over points and components.

    Args:
        X: (N, D); weights: (K,); means: (K, D); covariances: (K, D, D).

    Returns:
        (weights (K,), means (K, D), covariances (K, D, D), mean log-likelihood).
    """
    n_samples, n_features = X.shape
    n_components = len(weights)
    inverses = [np.linalg.inv(c) for c in covariances]
    norms = [1.0 / math.sqrt((2 * math.pi) ** n_features * np.linalg.det(c)) for c in covariances]
    resp = np.zeros((n_samples, n_components))
    log_lik = 0.0
    for i in range(n_samples):  # E-step, point by point
        total = 0.0
        for k in range(n_components):
            diff = X[i] - means[k]
            density = norms[k] * math.exp(-0.5 * float(diff @ inverses[k] @ diff))
            resp[i, k] = weights[k] * density
            total += resp[i, k]
        resp[i] /= total
        log_lik += math.log(total)
    new_weights = np.zeros(n_components)
    new_means = np.zeros((n_components, n_features))
    new_covs = np.zeros((n_components, n_features, n_features))
    for k in range(n_components):  # M-step, point by point
        n_k = 0.0
        for i in range(n_samples):
            n_k += resp[i, k]
            new_means[k] += resp[i, k] * X[i]
        new_means[k] /= n_k
        for i in range(n_samples):
            diff = X[i] - new_means[k]
            new_covs[k] += resp[i, k] * np.outer(diff, diff)
        new_covs[k] = new_covs[k] / n_k + reg_covar * np.eye(n_features)
        new_weights[k] = n_k / n_samples
    return new_weights, new_means, new_covs, log_lik / n_samples


def vectorised_em_iteration(X, weights, means, covariances, reg_covar=1e-6):
    """One EM iteration vectorised over points (a loop over the K components).

    Args:
        X: (N, D); weights: (K,); means: (K, D); covariances: (K, D, D).

    Returns:
        (weights (K,), means (K, D), covariances (K, D, D), mean log-likelihood).
    """
    n_samples, n_features = X.shape
    n_components = len(weights)
    dtype = X.dtype
    log_prob = np.empty((n_samples, n_components), dtype=dtype)
    for k in range(n_components):
        chol = np.linalg.cholesky(covariances[k])
        # whitened residuals: solve L z = (x - mu)
        z = np.linalg.solve(chol, (X - means[k]).T)
        log_prob[:, k] = (
            np.log(weights[k])
            - 0.5 * n_features * np.log(2 * np.pi)
            - np.sum(np.log(np.diag(chol)))
            - 0.5 * np.sum(z * z, axis=0)
        )
    top = log_prob.max(axis=1, keepdims=True)
    resp = np.exp(log_prob - top)
    total = resp.sum(axis=1, keepdims=True)
    resp /= total
    log_lik = float(np.mean(top[:, 0] + np.log(total[:, 0])))
    n_k = resp.sum(axis=0) + 10 * np.finfo(dtype).eps
    new_means = (resp.T @ X) / n_k[:, None]
    new_covs = np.empty((n_components, n_features, n_features), dtype=dtype)
    for k in range(n_components):
        diff = X - new_means[k]
        new_covs[k] = (resp[:, k, None] * diff).T @ diff / n_k[k]
        new_covs[k].flat[:: n_features + 1] += reg_covar
    return n_k / n_samples, new_means, new_covs, log_lik


def initial_parameters(X: np.ndarray, n_components: int, seed: int = 0):
    """Weights, means (random data points) and covariances (data covariance) to start EM."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), n_components, replace=False)].astype(np.float64)
    cov = np.cov(X[: min(len(X), 10_000)].T.astype(np.float64)) + 1e-6 * np.eye(X.shape[1])
    covariances = np.repeat(cov[None], n_components, axis=0)
    weights = np.full(n_components, 1.0 / n_components)
    return weights, means, covariances
