"""Everything that differs between covariance types, in one place per type.

Each covariance type is a class of static methods with the same names, so the E-step,
M-step, driver and API are written once and look the operations up in
:data:`COVARIANCE_OPS`. Conventions:

* ``X``: (C, D) one chunk of (centred) data; ``resp_w``: (C, K) responsibilities
  already multiplied by the sample weights.
* Sufficient statistics are accumulated around a ``shift`` (K, D): the current means
  for ``full`` (exact in float32 even for tight, far-apart components), zero for the
  other types, whose statistics are plain matrix products over data the driver has
  already centred.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

_LOG_2PI = math.log(2.0 * math.pi)


def _flip(a: jax.Array) -> jax.Array:
    """Reverse the last two axes (turns a lower-triangular factor into upper)."""
    return jnp.flip(a, axis=(-1, -2))


def _inverse_transpose_cholesky(covariance: jax.Array) -> jax.Array:
    """Upper-triangular U with U @ U.T == inv(covariance); (..., D, D) -> (..., D, D)."""
    lower = jnp.linalg.cholesky(covariance)
    eye = jnp.broadcast_to(jnp.eye(covariance.shape[-1], dtype=covariance.dtype), covariance.shape)
    return jnp.swapaxes(solve_triangular(lower, eye, lower=True), -1, -2)


def _upper_cholesky_of_precision(precision: jax.Array) -> jax.Array:
    """Upper-triangular U with U @ U.T == precision (scikit-learn's flip trick)."""
    return _flip(jnp.linalg.cholesky(_flip(precision)))


def _covariance_from_upper(upper: jax.Array) -> jax.Array:
    """inv(U @ U.T) for upper-triangular U; (..., D, D) -> (..., D, D)."""
    eye = jnp.broadcast_to(jnp.eye(upper.shape[-1], dtype=upper.dtype), upper.shape)
    upper_inv = solve_triangular(upper, eye, lower=False)
    return jnp.swapaxes(upper_inv, -1, -2) @ upper_inv


def _add_to_diagonal(matrix: jax.Array, value: jax.Array) -> jax.Array:
    """matrix + value * I over the last two axes."""
    return matrix + value * jnp.eye(matrix.shape[-1], dtype=matrix.dtype)


def _diag_mahalanobis(X: jax.Array, means: jax.Array, precisions: jax.Array) -> jax.Array:
    """sum_d (x_d - mu_kd)^2 * prec_kd as three matrix products; -> (C, K)."""
    return (
        (X * X) @ precisions.T
        - 2.0 * X @ (means * precisions).T
        + jnp.sum(means * means * precisions, axis=1)
    )


class Full:
    """One (D, D) covariance per component."""

    @staticmethod
    def log_prob(X: jax.Array, means: jax.Array, precisions_cholesky: jax.Array) -> jax.Array:
        """Log-density of each point under each component; -> (C, K)."""
        diff = X[:, None, :] - means[None, :, :]
        y = jnp.einsum("ckd,kde->cke", diff, precisions_cholesky)
        log_det = jnp.sum(jnp.log(jnp.diagonal(precisions_cholesky, axis1=1, axis2=2)), axis=1)
        return -0.5 * (X.shape[1] * _LOG_2PI + jnp.sum(y * y, axis=2)) + log_det

    @staticmethod
    def shift(means: jax.Array) -> jax.Array:
        """Statistics are taken around the current means; -> (K, D)."""
        return means

    @staticmethod
    def statistics(X: jax.Array, resp_w: jax.Array, shift: jax.Array):
        """(s_x (K, D), s_xx (K, D, D)) of one chunk, around ``shift`` (K, D)."""
        diff = X[:, None, :] - shift[None, :, :]
        weighted = diff * resp_w[:, :, None]
        return jnp.sum(weighted, axis=0), jnp.einsum("ckd,cke->kde", weighted, diff)

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Covariances from statistics; mean_shift = s_x / n_k: (K, D); -> (K, D, D)."""
        cov = s_xx / n_k[:, None, None] - mean_shift[:, :, None] * mean_shift[:, None, :]
        return _add_to_diagonal(cov, reg_covar)

    precisions_cholesky = staticmethod(_inverse_transpose_cholesky)
    precisions_cholesky_from_precisions = staticmethod(_upper_cholesky_of_precision)
    covariances_from_precisions_cholesky = staticmethod(_covariance_from_upper)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_components * n_features * (n_features + 1) // 2

    @staticmethod
    def scale_noise(z: jax.Array, labels: jax.Array, covariances: jax.Array) -> jax.Array:
        """Turn standard-normal draws z: (M, D) into draws with each label's covariance."""
        return jnp.einsum("mde,me->md", jnp.linalg.cholesky(covariances)[labels], z)


class Tied:
    """One (D, D) covariance shared by all components."""

    @staticmethod
    def log_prob(X, means, precisions_cholesky):
        """Log-density of each point under each component; -> (C, K)."""
        y = (X @ precisions_cholesky)[:, None, :] - (means @ precisions_cholesky)[None, :, :]
        log_det = jnp.sum(jnp.log(jnp.diagonal(precisions_cholesky)))
        return -0.5 * (X.shape[1] * _LOG_2PI + jnp.sum(y * y, axis=2)) + log_det

    shift = staticmethod(jnp.zeros_like)

    @staticmethod
    def statistics(X, resp_w, shift):
        """(s_x (K, D), s_xx (D, D) summed over components) of one chunk; shift is 0."""
        return resp_w.T @ X, (X * jnp.sum(resp_w, axis=1)[:, None]).T @ X

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Shared covariance from statistics; -> (D, D)."""
        between = jnp.einsum("k,kd,ke->de", n_k, mean_shift, mean_shift)
        return _add_to_diagonal((s_xx - between) / jnp.sum(n_k), reg_covar)

    precisions_cholesky = staticmethod(_inverse_transpose_cholesky)
    precisions_cholesky_from_precisions = staticmethod(_upper_cholesky_of_precision)
    covariances_from_precisions_cholesky = staticmethod(_covariance_from_upper)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_features * (n_features + 1) // 2

    @staticmethod
    def scale_noise(z, labels, covariances):
        """Turn standard-normal draws z: (M, D) into draws with the shared covariance."""
        return z @ jnp.linalg.cholesky(covariances).T


class Diag:
    """One diagonal covariance (a variance per dimension) per component."""

    @staticmethod
    def log_prob(X, means, precisions_cholesky):
        """Log-density of each point under each component; -> (C, K)."""
        maha = _diag_mahalanobis(X, means, precisions_cholesky**2)
        log_det = jnp.sum(jnp.log(precisions_cholesky), axis=1)
        return -0.5 * (X.shape[1] * _LOG_2PI + maha) + log_det

    shift = staticmethod(jnp.zeros_like)

    @staticmethod
    def statistics(X, resp_w, shift):
        """(s_x (K, D), s_xx (K, D) per-dimension second moments) of one chunk; shift is 0."""
        return resp_w.T @ X, resp_w.T @ (X * X)

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Variances from statistics, clipped at zero before regularising; -> (K, D)."""
        return jnp.maximum(s_xx / n_k[:, None] - mean_shift**2, 0.0) + reg_covar

    @staticmethod
    def precisions_cholesky(covariances):
        """1 / sqrt(variances); (K, D) -> (K, D)."""
        return jax.lax.rsqrt(covariances)

    @staticmethod
    def precisions_cholesky_from_precisions(precisions):
        """sqrt(precisions); (K, D) -> (K, D)."""
        return jnp.sqrt(precisions)

    @staticmethod
    def covariances_from_precisions_cholesky(precisions_cholesky):
        """1 / precisions_cholesky**2; (K, D) -> (K, D)."""
        return 1.0 / precisions_cholesky**2

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_components * n_features

    @staticmethod
    def scale_noise(z, labels, covariances):
        """Turn standard-normal draws z: (M, D) into draws with each label's variances."""
        return z * jnp.sqrt(covariances[labels])


class Spherical:
    """One variance per component, the same in every dimension."""

    @staticmethod
    def log_prob(X, means, precisions_cholesky):
        """Log-density of each point under each component; -> (C, K)."""
        n_features = X.shape[1]
        precisions = jnp.broadcast_to((precisions_cholesky**2)[:, None], means.shape)
        maha = _diag_mahalanobis(X, means, precisions)
        log_det = n_features * jnp.log(precisions_cholesky)
        return -0.5 * (n_features * _LOG_2PI + maha) + log_det

    shift = staticmethod(jnp.zeros_like)

    @staticmethod
    def statistics(X, resp_w, shift):
        """(s_x (K, D), s_xx (K,) summed squared norms) of one chunk; shift is 0."""
        return resp_w.T @ X, resp_w.T @ jnp.sum(X * X, axis=1)

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Variances from statistics, clipped at zero before regularising; -> (K,)."""
        n_features = mean_shift.shape[1]
        var = (s_xx / n_k - jnp.sum(mean_shift**2, axis=1)) / n_features
        return jnp.maximum(var, 0.0) + reg_covar

    precisions_cholesky = Diag.precisions_cholesky
    precisions_cholesky_from_precisions = Diag.precisions_cholesky_from_precisions
    covariances_from_precisions_cholesky = Diag.covariances_from_precisions_cholesky

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_components

    @staticmethod
    def scale_noise(z, labels, covariances):
        """Turn standard-normal draws z: (M, D) into draws with each label's variance."""
        return z * jnp.sqrt(covariances[labels])[:, None]


COVARIANCE_OPS = {"full": Full, "tied": Tied, "diag": Diag, "spherical": Spherical}
