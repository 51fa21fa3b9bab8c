"""The E-step for incomplete data: missing entries and known measurement noise, exactly.

One kernel serves both: a missing coordinate is a coordinate with infinite noise,
done exactly by marginalising it. For row i with observed-entry mask ``M_i``
(diagonal 0/1), noise covariance ``S_i`` (0 if none) and component k::

    T_ik = M_i (Sigma_k + S_i) M_i + (I - M_i)      SPD; missing coordinates: identity
    r_ik = M_i (x_i - mu_k)
    log N_obs = -1/2 r^T T^-1 r - 1/2 log|T| - (n_obs_i / 2) log 2 pi
    v_ik = T_ik^-1 r_ik                              (zero on missing coordinates)
    b_ik = mu_k + Sigma_k v_ik                       E[noise-free, complete x | row, k]
    B_ik = Sigma_k - Sigma_k P_ik Sigma_k            Cov[x | row, k], P_ik = M T^-1 M

The M-step is the ordinary one fed with expected statistics ``sum w g (b b^T + B)``.
Around the current means these sums only need, per component, ``n_k = sum w g``,
``a_k = sum w g v`` and ``G_k = sum w g (v v^T - P)``:
``s_x = Sigma_k a_k`` and ``s_xx = n_k Sigma_k + Sigma_k G_k Sigma_k``, so no
(C, K, D, D) array leaves a chunk and the per-component products run once per pass.

``full`` and ``tied`` with missing values and no noise (the common case) take
:mod:`jaxgmm._schur`: each row's small missing block of the precision matrix,
inverted by a vectorised sweep, gives the same sums (the dispatch is in
:func:`incomplete_e_step`). With noise covariances (extreme deconvolution), T = Sigma +
S_i differs per row in every entry, so the general path here runs: one batched
Cholesky factorisation and triangular inverse of T per (row, component) over a chunk
(static shapes, no gathers), a few hundred times the complete-data iteration on a CPU,
where each tiny factorisation is a library call. Scoring (``score_samples``,
``predict_proba``) and imputation also use the general path.
``diag`` and ``spherical``: T is diagonal; without noise the E-step is three thin
matrix products each way with the mask as extra features
(:func:`expanded_variance_partials`, about the complete-data cost), with noise or
for components far from the data's centre it is elementwise and exact.
Rows with no observed entry have ``T = I`` and ``r = 0``: log-density 0, no
information (the callers give them weight zero).

Precision: ``n_k Sigma + Sigma G Sigma`` cancels to about ``eps * cond(Sigma)``
relative, which float64 makes negligible and float32 keeps below 1e-4 for
covariances with condition numbers up to a few hundred.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from jaxgmm._covariance import (
    FusedPartials,
    _dot_chunk,
    _dot_rows,
    _log_lik_sum,
    _weighted_responsibilities,
    covariance_model,
)
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._rows import IN_MEMORY, Rows
from jaxgmm._schur import schur_partials
from jaxgmm._stats import Stats

_LOG_2PI = math.log(2.0 * math.pi)


def _observed(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """(C, D) observed-entry indicator in x's dtype (all ones without a mask)."""
    if mask is None:
        return jnp.ones_like(x)
    return mask.astype(x.dtype)


def _noise_matrices(noise: jax.Array | None, n_features: int, dtype) -> jax.Array:
    """(C, 1, D, D) noise covariances (diagonal ones expanded), or 0."""
    if noise is None:
        return jnp.zeros((), dtype)
    if noise.ndim == 2:  # (C, D) diagonal
        noise = noise[:, :, None] * jnp.eye(n_features, dtype=dtype)
    return noise[:, None]


def matrix_chunk(x, mask, noise, means, covariances, log_weights):
    """Log-densities and expected-statistic partials of one chunk, (D, D) covariances.

    Args:
        x: (C, D) rows (any value on missing entries); mask: None or (C, D) bool;
        noise: None, (C, D) or (C, D, D); means: (K, D);
        covariances: (K, D, D), or (1, D, D) shared; log_weights: (K,).

    Returns:
        log_prob: (K, C) weighted log-densities of the observed entries;
        v: (C, K, D) ``T^-1 r``; P: (C, K, D, D) ``M T^-1 M``.
    """
    n_features = x.shape[1]
    m = _observed(x, mask)
    eye = jnp.eye(n_features, dtype=x.dtype)
    outer_mask = m[:, :, None] * m[:, None, :]  # (C, D, D)
    A = covariances[None] + _noise_matrices(noise, n_features, x.dtype)  # (C|1, K, D, D)
    T = outer_mask[:, None] * A + (1.0 - m)[:, None, :, None] * eye  # (C, K, D, D)
    lower = jnp.linalg.cholesky(T)
    eye_b = jnp.broadcast_to(eye, T.shape)
    lower_inv = solve_triangular(lower, eye_b, lower=True)
    # Products as einsums: XLA's CPU batched matmul is several times slower here.
    t_inv = jnp.einsum("ckad,ckae->ckde", lower_inv, lower_inv)  # L^-T L^-1
    r = m[:, None, :] * (x[:, None, :] - means[None])  # (C, K, D)
    v = jnp.einsum("ckde,cke->ckd", t_inv, r)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(lower, axis1=-2, axis2=-1)), axis=-1)
    n_obs = jnp.sum(m, axis=1)  # (C,)
    log_prob = -0.5 * (jnp.sum(r * v, axis=-1) + log_det + n_obs[:, None] * _LOG_2PI)
    P = outer_mask[:, None] * t_inv
    return (log_prob + log_weights).T, v, P


def variance_chunk(x, mask, noise, means, variances, log_weights):
    """Log-densities and expected-statistic partials of one chunk, diagonal covariances.

    Args:
        x: (C, D) rows; mask: None or (C, D) bool; noise: None or (C, D) variances;
        means: (K, D); variances: (K, D) or (K, 1); log_weights: (K,).

    Returns:
        log_prob: (K, C); u: (C, K, D) ``r / t``; p: (C, K, D) ``m / t`` (t = sigma^2 + s).
    """
    m = _observed(x, mask)[:, None, :]  # (C, 1, D)
    t = variances[None] + (0.0 if noise is None else noise[:, None, :])
    t = jnp.where(m > 0, t, 1.0)
    p = m / t
    diff = x[:, None, :] - means[None]
    u = diff * p
    log_prob = -0.5 * jnp.sum(u * diff + m * (jnp.log(t) + _LOG_2PI), axis=-1)
    return (log_prob + log_weights).T, u, p


def _kernel(model, x, mask, noise, params: GaussianMixtureParams):
    """(log_prob (K, C), first (C, K, D), second, covariances) of one chunk for ``model``.

    ``first`` is v = T^-1 r (``u`` elementwise); ``second`` is ``M T^-1 M``:
    (C, K, D, D) for matrix types, (C, K, D) for variance types; ``covariances`` is
    what multiplies ``first`` back: (K|1, D, D) or (K, D|1).
    """
    log_weights = jnp.log(params.weights)
    if model.row_sized:  # diag / spherical: T is diagonal, everything elementwise
        variances = model.variances(params.covariances)
        log_prob, u, p = variance_chunk(x, mask, noise, params.means, variances, log_weights)
        return log_prob, u, p, variances
    covariances = model.matrices(params.covariances)
    log_prob, v, P = matrix_chunk(x, mask, noise, params.means, covariances, log_weights)
    return log_prob, v, P, covariances


def incomplete_partials(model, x, weight, mask, noise, params: GaussianMixtureParams):
    """Per-chunk sums (n_k, a_k, G_k) of the expected statistics, and the log-likelihood.

    Args:
        model: the :class:`~jaxgmm._covariance.CovarianceModel`; x: (C, D) rows as
            read; weight: (C,); mask, noise: the chunk's (see :class:`Rows`);
        params: current parameters (same coordinates as x).

    Returns:
        :class:`~jaxgmm._covariance.FusedPartials` with ``moments`` = (n_k (K,),
        a (K, D), G: (K, D, D) matrix types, (K, D) variance types).
    """
    log_prob, first, second, _ = _kernel(model, x, mask, noise, params)
    resp_w, log_norm = _weighted_responsibilities(log_prob, weight)  # (K, C)
    g = resp_w.T  # (C, K)
    weighted = g[:, :, None] * first
    if model.row_sized:
        G = jnp.einsum("ckd,ckd->kd", weighted, first) - jnp.einsum("ck,ckd->kd", g, second)
    else:
        G = jnp.einsum("ckd,cke->kde", weighted, first) - jnp.einsum("ck,ckde->kde", g, second)
    return FusedPartials(
        moments=(jnp.sum(g, axis=0), jnp.sum(weighted, axis=0), G),
        log_lik_sum=_log_lik_sum(log_norm, weight),
        n=jnp.sum(weight),
    )


def expanded_variance_partials(x, weight, mask, params: GaussianMixtureParams, variances):
    """:func:`incomplete_partials` for diag/spherical without noise, as matrix products.

    Missing entries of ``x`` must read as 0 (the Rows store column means, read centred;
    here they are zeroed by the mask). With m the mask, the log-density is
    ``[x*x, x, m] @ [-p/2, p mu, -(p mu^2 + log sigma^2 + log 2 pi)/2]^T`` and the
    sums ``a``, ``G`` follow from ``g^T [x*x, x, m]``: three thin products each way
    instead of (C, K, D) elementwise work. Expanded around zero, so only exact while
    components sit within a few hundred standard deviations of the data's centre
    (the solver checks :func:`jaxgmm._em.needs_exact_e_step` first).

    Args:
        x: (C, D) centred rows; weight: (C,); mask: (C, D) bool;
        params: current parameters; variances: (K, D) or (K, 1).

    Returns:
        :class:`~jaxgmm._covariance.FusedPartials` as :func:`incomplete_partials`.
    """
    m = mask.astype(x.dtype)
    x = x * m
    squares = x * x
    variances = jnp.broadcast_to(variances, params.means.shape)  # (K, D)
    prec = 1.0 / variances
    mu = params.means
    const = -0.5 * (prec * mu * mu + jnp.log(variances) + _LOG_2PI)
    log_prob = (
        _dot_rows(-0.5 * prec, squares)
        + _dot_rows(prec * mu, x)
        + _dot_rows(const, m)
        + jnp.log(params.weights)[:, None]
    )  # (K, C)
    resp_w, log_norm = _weighted_responsibilities(log_prob, weight)
    g_x2, g_x, g_m = (_dot_chunk(resp_w, f) for f in (squares, x, m))  # (K, D) each
    a = prec * (g_x - mu * g_m)
    G = prec * prec * (g_x2 - 2.0 * mu * g_x + mu * mu * g_m) - prec * g_m
    return FusedPartials(
        moments=(jnp.sum(resp_w, axis=1), a, G),
        log_lik_sum=_log_lik_sum(log_norm, weight),
        n=jnp.sum(weight),
    )


def incomplete_e_step(
    rows: Rows, params: GaussianMixtureParams, reducer=IN_MEMORY, expanded: bool = False
) -> Stats:
    """E-step over incomplete rows (missing entries and/or noise): expected statistics.

    Full and tied covariances with a mask and no noise take :mod:`jaxgmm._schur`'s
    missing-block kernel; everything else the kernels of this module.

    Args:
        rows: the data, with ``mask`` and/or ``noise`` set; params: current parameters;
        reducer: where the rows live.
        expanded: diag/spherical with a mask and no noise only: the matrix-product
            form :func:`expanded_variance_partials` (see its precision caveat).

    Returns:
        :class:`Stats` around the current means: ``n_k``, ``s_x = Sigma a``, second
        moments ``n_k Sigma + Sigma G Sigma`` in the covariance type's shape, and the
        summed observed-data log-likelihood of the rows.
    """
    model = covariance_model(params.covariance_type)
    if not model.row_sized and rows.noise is None:  # missing values only: small blocks
        partials = reducer.sum(
            lambda x, weight, index, mask, noise: schur_partials(x, weight, mask, params),
            rows,
            incomplete=True,
        )
        n_k, s_x, s_xx = partials.moments
        return Stats(
            n_k, s_x, s_xx, params.means, partials.log_lik_sum, partials.n, params.covariance_type
        )

    def one_chunk(x, weight, index, mask, noise):
        if expanded:
            variances = model.variances(params.covariances)
            return expanded_variance_partials(x, weight, mask, params, variances)
        return incomplete_partials(model, x, weight, mask, noise, params)

    partials = reducer.sum(one_chunk, rows, incomplete=True)
    n_k, a, G = partials.moments
    s_x, s_xx = model.expected_moments(n_k, a, G, params.covariances)
    return Stats(
        n_k, s_x, s_xx, params.means, partials.log_lik_sum, partials.n, params.covariance_type
    )


def incomplete_log_prob(x, mask, noise, params: GaussianMixtureParams) -> jax.Array:
    """Weighted log-densities of the observed entries of each row; (C, D) -> (C, K)."""
    model = covariance_model(params.covariance_type)
    return _kernel(model, x, mask, noise, params)[0].T


def conditional_means(x, mask, noise, params: GaussianMixtureParams):
    """Responsibilities and per-component conditional expectations of each row.

    Args:
        x: (C, D) rows; mask: None or (C, D) bool; noise: None, (C, D) or (C, D, D);
        params: the mixture.

    Returns:
        resp: (C, K) posterior component probabilities given the observed entries;
        b: (C, K, D) ``E[x | observed entries, component k]`` (observed entries of
        noise-free rows equal x).
    """
    model = covariance_model(params.covariance_type)
    log_prob, first, _, covariances = _kernel(model, x, mask, noise, params)
    if model.row_sized:
        shifts = covariances[None] * first
    else:
        covariances = jnp.broadcast_to(covariances, first.shape[1:] + first.shape[-1:])
        shifts = jnp.einsum("kde,cke->ckd", covariances, first)
    resp = jax.nn.softmax(log_prob.T, axis=1)
    return resp, params.means[None] + shifts


def conditional_distribution(x, mask, params: GaussianMixtureParams):
    """The mixture of each row's missing entries given its observed ones.

    Args:
        x: (C, D) rows (any finite value on missing entries); mask: (C, D) bool, True
            where observed; params: the mixture.

    Returns:
        resp: (C, K) posterior component probabilities; b: (C, K, D) conditional
        means (x itself on observed entries); B: conditional covariances, (C, K, D, D)
        for matrix covariances or (C, K, D) variances (zero on observed entries).
    """
    model = covariance_model(params.covariance_type)
    log_weights = jnp.log(params.weights)
    if model.row_sized:
        variances = model.variances(params.covariances)
        log_prob, u, p = variance_chunk(x, mask, None, params.means, variances, log_weights)
        b = params.means[None] + variances[None] * u
        B = variances[None] - variances[None] ** 2 * p
    else:
        covariances = jnp.broadcast_to(
            model.matrices(params.covariances),
            (params.n_components, params.n_features, params.n_features),
        )
        log_prob, v, P = matrix_chunk(x, mask, None, params.means, covariances, log_weights)
        b = params.means[None] + jnp.einsum("kde,cke->ckd", covariances, v)
        B = covariances[None] - covariances[None] @ P @ covariances[None]
    return jax.nn.softmax(log_prob.T, axis=1), b, B
