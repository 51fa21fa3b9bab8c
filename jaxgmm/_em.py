"""The E-step (data -> summed sufficient statistics) and the M-step (statistics -> parameters)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgmm import compilation_cache as _compilation_cache  # noqa: F401 (JAXGMM_COMPILATION_CACHE)
from jaxgmm._covariance import covariance_model
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._rows import IN_MEMORY, Rows
from jaxgmm._stats import Stats, chunk_stats


def weighted_log_prob(X: jax.Array, params: GaussianMixtureParams) -> jax.Array:
    """log(weight_k) + log N(x | mean_k, cov_k) for each point and component; -> (N, K)."""
    ops = covariance_model(params.covariance_type)
    return ops.log_prob(X, params.means, params.precisions_cholesky) + jnp.log(params.weights)


def log_resp_and_norm(X: jax.Array, params: GaussianMixtureParams):
    """Log responsibilities (N, K) and per-point log-likelihood (N,)."""
    wlp = weighted_log_prob(X, params)
    log_norm = jax.nn.logsumexp(wlp, axis=1)
    return wlp - log_norm[:, None], log_norm


def e_step(
    rows: Rows, params: GaussianMixtureParams, reducer=IN_MEMORY, origin: jax.Array | None = None
) -> Stats:
    """E-step over all rows: summed sufficient statistics and log-likelihood.

    Every covariance model has a fused kernel: log-densities, responsibilities and
    moments of a chunk in one pass of a few matrix products (see
    :mod:`jaxgmm._covariance`); the generic ``log_prob`` / ``statistics`` pair is the
    exact fallback (:func:`exact_e_step`).

    Args:
        rows: the data (:class:`~jaxgmm._rows.Rows`, chunks of (C, D)).
        params: current parameters.
        reducer: where the rows live (:mod:`jaxgmm._rows`).
        origin: None, or (D,) the point the expanded ``diag``/``spherical`` kernels
            expand around instead of zero (see :func:`expansion_origin`).

    Returns:
        :class:`Stats` summed over every row.
    """
    model = covariance_model(params.covariance_type)
    log_weights = jnp.log(params.weights)
    means = params.means if origin is None else params.means - origin

    def fused(X, sample_weight, index):
        X = X if origin is None else X - origin
        return model.fused_chunk(X, sample_weight, means, params.precisions_cholesky, log_weights)

    partials = reducer.sum(fused, rows)
    n_k, shift, s_x, s_xx = model.fused_finish(partials.moments, means, params.precisions_cholesky)
    shift = shift if origin is None else shift + origin
    return Stats(n_k, s_x, s_xx, shift, partials.log_lik_sum, partials.n, params.covariance_type)


def expansion_origin(params: GaussianMixtureParams) -> jax.Array:
    """The point the fused ``diag``/``spherical`` E-step expands around; -> (D,).

    Expanded densities lose ~eps * precision * (mean - origin)**2 to cancellation, so
    the tightest components matter most: the origin is the components' means averaged
    with their precisions as weights (per feature; padding components, of weight 0,
    left out). Real data with features that are constant within one component (blank
    pixels: variance ``reg_covar``) then expand around that constant instead of the
    data's centre, and float32 fits keep the matrix-product E-step.
    """
    model = covariance_model(params.covariance_type)
    precisions = jnp.broadcast_to(1.0 / model.variances(params.covariances), params.means.shape)
    precisions = jnp.where((params.weights > 0)[:, None], precisions, 0.0)
    return jnp.sum(precisions * params.means, axis=0) / jnp.sum(precisions, axis=0)


def exact_e_step(
    rows: Rows, params: GaussianMixtureParams, shift: jax.Array, reducer=IN_MEMORY
) -> Stats:
    """E-step with moments taken around ``shift`` (K, D) from explicit differences.

    Slower than the fused kernels for ``diag``/``spherical`` (elementwise (C, K, D)
    work instead of matrix products) but exact in float32 however far a tight
    component sits from the data's centre.

    Args:
        rows: the data; params: current parameters; shift: (K, D), e.g. the current
            or new means; reducer: where the rows live.

    Returns:
        :class:`Stats` summed over every row, around ``shift``.
    """

    def one_chunk(X, sample_weight, index):
        log_resp, log_norm = log_resp_and_norm(X, params)
        # Zero-weight rows (padding) never contribute, even if their density is extreme.
        log_lik = jnp.sum(jnp.where(sample_weight > 0, sample_weight * log_norm, 0.0))
        return chunk_stats(
            X, jnp.exp(log_resp), sample_weight, shift, params.covariance_type, log_lik
        )

    return reducer.sum(one_chunk, rows)


def needs_exact_e_step(params: GaussianMixtureParams, origin: jax.Array | None = None) -> jax.Array:
    """Whether the fused (expanded) E-step would lose precision for these parameters.

    Expanded ``diag``/``spherical`` densities have absolute error ~ eps * (mean -
    origin)**2 / variance: true when some variance is below 1e3 * eps * (mean -
    origin)**2.

    Args:
        params: ``diag`` or ``spherical`` parameters in centred coordinates.
        origin: None (zero: the data's centre) or (D,), the expansion point.

    Returns:
        () bool.
    """
    variance = covariance_model(params.covariance_type).variances(params.covariances)
    eps = jnp.finfo(variance.dtype).eps
    offset = params.means if origin is None else params.means - origin
    return jnp.any(variance < 1e3 * eps * offset**2)


def lost_precision(stats: Stats, params: GaussianMixtureParams) -> jax.Array:
    """Whether moments summed around zero lost more than ~1e-3 of some covariance.

    The fused ``tied``/``diag``/``spherical`` kernels sum second moments around the
    data's centre;
    a variance then comes out as a difference with absolute error ~ eps * (second
    moment). When some regularised variance (``reg_covar`` included: the error only
    matters relative to the covariance the M-step returns) is below 1e3 * eps times
    its second moment (a tight component far from the centre, e.g. collapsed onto
    duplicated points, with a small ``reg_covar``), the solver recomputes the
    statistics exactly with :func:`exact_e_step`. Features that are constant within a
    component (common in real data: blank pixels) have variance 0 and are exact up to
    that error, so with the default ``reg_covar`` they do not trigger the exact pass.

    Args:
        stats: statistics around zero from :func:`e_step`; params: the M-step's output.

    Returns:
        () bool.
    """
    model = covariance_model(params.covariance_type)
    n_k = stats.n_k + 10 * jnp.finfo(stats.n_k.dtype).eps
    second_moment = model.mean_second_moment(stats.s_xx, n_k, params.n_features)
    variance = model.variances(params.covariances)
    eps = jnp.finfo(variance.dtype).eps
    return jnp.any(variance < 1e3 * eps * second_moment)


def m_step(
    stats: Stats,
    reg_covar: jax.Array,
    covariance_type: str,
    active: jax.Array | None = None,
) -> GaussianMixtureParams:
    """New parameters from summed statistics (scikit-learn's M-step, shift-corrected).

    Args:
        stats: summed :class:`Stats`.
        reg_covar: () non-negative value added to every covariance's diagonal.
        covariance_type: one of ``full``, ``tied``, ``diag``, ``spherical``.
        active: None (every component), or (K,) bool: inactive components (padding,
            see :mod:`jaxgmm._buckets`) get weight exactly zero, their shift as mean
            and an identity covariance, and change nothing for the active ones.

    Returns:
        The updated :class:`GaussianMixtureParams`.
    """
    ops = covariance_model(covariance_type)
    n_k = stats.n_k + 10 * jnp.finfo(stats.n_k.dtype).eps
    if active is not None:
        n_k = jnp.where(active, n_k, 0.0)
    mean_shift = stats.s_x / (n_k if active is None else jnp.where(active, n_k, 1.0))[:, None]
    covariances = ops.covariances(n_k, mean_shift, stats.s_xx, reg_covar)
    if active is not None:
        covariances = ops.mask_inactive(covariances, active)
    return GaussianMixtureParams(
        weights=n_k / jnp.sum(n_k),
        means=stats.shift + mean_shift,
        covariances=covariances,
        precisions_cholesky=ops.precisions_cholesky(covariances),
        covariance_type=covariance_type,
    )
