"""Everything that differs between covariance types, in one place per type.

Each covariance type is a :class:`CovarianceModel`: one object holding every per-type
fact (shapes, log-densities, statistics, the M-step's covariance, precisions,
parameter count, which kernels it has), so the E-step, M-step, driver and API are
written once and look the model up with :func:`covariance_model`. No other module
compares covariance-type strings. Conventions:

* ``X``: (C, D) one chunk of (centred) data; ``resp_w``: (C, K) responsibilities
  already multiplied by the sample weights.
* ``fused_chunk`` is the E-step's hot loop: log-densities, responsibilities and the
  chunk's partial sufficient statistics in one pass, laid out so that the heavy work is
  two matrix products per chunk; ``fused_finish`` turns the partial sums (added over
  chunks) into :class:`~jaxgmm._em.Stats` fields.

Speed and accuracy (float32)
----------------------------
Per iteration the work is a few thin matrix products over the points; everything
else is elementwise on (K, C)- or (K*D, C)-sized chunk intermediates that stay in
cache. The driver centres the data on its weighted mean, so ``|x|`` below is a
distance from the data's centre; ``R`` is how far (in standard deviations of a
component) the data reach from that centre.

``full`` -- exact around each component's mean, at matrix-product speed. The E-step
computes ``y = U_k^T (x - m_k)`` as one product ``Ut @ x - Ut m`` for all components
((K*D, D) @ (D, C)); its rounding error is ``eps * R`` relative, never
``eps * R**2``. The M-step re-uses ``y``: ``A_k = sum_c r_ck y_ck [x_c, 1]^T`` is one
product ((K*D, C) @ (C, D + 1)), and the scatter matrix around the current mean follows
*after* the chunk sum from ``U_k^T S_k = A_k - sum_c r y m_k^T`` by a triangular solve.
Every product has one factor of size ``O(1)`` (whitened ``y``) and one of size
``O(R)`` (``x``), so the cancellation is ``eps * R``, not the ``eps * R**2`` of the
expanded ``sum r x x^T - n m m^T`` (which in float32 loses the covariance of a component
a few hundred of its standard deviations from the centre). The per-component shift is
the previous means, as :class:`~jaxgmm._em.Stats` records.
The price over the fully expanded quadratic-feature form (``[x x^T, x, 1] @ Q``) is
about 1.7x the flops; we chose exactness (see ``tests/test_engine_numerics.py``).

``diag`` / ``spherical`` -- expanded forms on centred data: features ``[x*x, x]`` then
one product each way. Exact enough while components sit within a few hundred standard
deviations of the data's centre (error ``eps * R**2``); an exact per-component form
would cost a (C, K, D) elementwise pass, several times the products' cost here.

``tied`` -- exact whitened log-densities (one (D, D) product per chunk, then each
component's whitened mean subtracted), and moments around zero: the shared scatter
matrix is ``sum w x x^T - sum_k n_k xbar_k xbar_k^T``, as scikit-learn computes it. That
costs ``C * D**2`` per chunk instead of the generic path's ``K * C * D**2``; the
cancellation (``eps`` times the ratio of the data's spread to the within-component
spread) is caught like ``diag``'s by :func:`jaxgmm._em.lost_precision`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from jaxgmm._group_trace import in_group_members

_LOG_2PI = math.log(2.0 * math.pi)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class CovarianceModel(Protocol):
    """Everything that differs between covariance types.

    Attributes:
        name: the covariance type, e.g. ``"full"``.
        per_component: one covariance per component (False: one shared by all).
        expanded_density: the fused kernel's log-densities are expanded around zero
            (``x*x`` features): exact only while components sit within a few hundred
            standard deviations of the data's centre, so the solver takes the exact
            E-step otherwise (see :func:`jaxgmm._em.needs_exact_e_step`).
        expanded_moments: the fused kernel sums moments around zero (the data's centre), so
            the driver checks for lost float32 precision and then takes the exact
            difference-based pass (see :func:`jaxgmm._em.lost_precision`).
        row_sized: the fused kernel's largest per-chunk intermediate holds K + D
            values per row (else K * D).
        noise_kinds: the measurement-noise shapes the incomplete-data E-step can
            deconvolve: ``"diagonal"`` (N, D), ``"full"`` (N, D, D).
    """

    name: ClassVar[str]
    per_component: ClassVar[bool]
    expanded_density: ClassVar[bool]
    expanded_moments: ClassVar[bool]
    row_sized: ClassVar[bool]
    noise_kinds: ClassVar[tuple[str, ...]]

    def shape(self, n_components: int, n_features: int) -> tuple[int, ...]:
        """Shape of ``covariances`` / ``precisions`` / ``precisions_cholesky``."""

    def log_prob(self, X, means, precisions_cholesky) -> jax.Array:
        """Log-density of each row under each component; (C, D) -> (C, K)."""

    def shift(self, means) -> jax.Array:
        """The point (K, D) each component's exact moments are taken around."""

    def row_statistics(self, diff, resp_w) -> tuple[jax.Array, jax.Array]:
        """(s_x, s_xx) of one chunk whose rows are already shifted; diff: (C, D).

        Exact when each row's responsibilities sit on components that share one shift
        (hard assignments, or one shift for every component): no (C, K, D) work.
        """

    def statistics(self, X, resp_w, shift) -> tuple[jax.Array, jax.Array]:
        """(s_x (K, D), s_xx) of one chunk around ``shift``, from differences."""

    def recentre(self, s_xx, s_x, n_k, delta) -> jax.Array:
        """Second moments around ``shift - delta`` from those around ``shift``."""

    def covariances(self, n_k, mean_shift, s_xx, reg_covar) -> jax.Array:
        """The M-step's covariances from statistics."""

    def mask_inactive(self, covariances, active) -> jax.Array:
        """Covariances with inactive (padding) components set to the identity."""

    def precisions_cholesky(self, covariances) -> jax.Array:
        """Cholesky factors of the precisions (scikit-learn's convention)."""

    def precisions_cholesky_from_precisions(self, precisions) -> jax.Array:
        """Cholesky factors from precision matrices / values."""

    def covariances_from_precisions_cholesky(self, precisions_cholesky) -> jax.Array:
        """Covariances from Cholesky factors of the precisions."""

    def precisions(self, precisions_cholesky) -> jax.Array:
        """Precisions (inverse covariances), in ``covariances``' shape."""

    def cholesky_diagonal(self, precisions_cholesky) -> jax.Array:
        """The factors' diagonal entries (all positive for valid parameters)."""

    def variances(self, covariances) -> jax.Array:
        """Per-feature variances, broadcastable against (K, D) means."""

    def mean_second_moment(self, s_xx, n_k, n_features: int) -> jax.Array:
        """A second moment (or its quotient by n_k) per feature, like :meth:`variances`."""

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""

    def scale_noise(self, z, labels, covariances) -> jax.Array:
        """Standard-normal draws (M, D) scaled by each label's covariance."""

    def full_matrices(
        self, covariances: np.ndarray, n_components: int, n_features: int
    ) -> np.ndarray:
        """Every component's covariance as a (K, D, D) matrix (host arrays)."""

    def from_full_matrices(self, matrices: np.ndarray) -> np.ndarray:
        """This type's array from (K, D, D) matrices of its form (host arrays)."""

    def check_precisions(self, precisions: np.ndarray, dtype: np.dtype, name: str) -> None:
        """Raise ValueError (naming ``name``) unless these are valid precisions in ``dtype``."""

    def expected_moments(self, n_k, a, G, covariances) -> tuple[jax.Array, jax.Array]:
        """(s_x, s_xx) around the means from incomplete-data sums (:mod:`jaxgmm._incomplete`).

        ``s_x = Sigma_k a_k`` and ``s_xx = n_k Sigma_k + Sigma_k G_k Sigma_k`` in this
        type's shape; a: (K, D); G: (K, D, D) matrix types, (K, D) variance types.
        """

    def to_unconstrained(self, precisions_cholesky) -> jax.Array:
        """Unconstrained coordinates of the factors (log-diagonal); same shape."""

    def from_unconstrained(self, raw) -> jax.Array:
        """Factors from unconstrained coordinates; exact inverse of :meth:`to_unconstrained`."""


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
    """sum_d (x_d - mu_kd)^2 * prec_kd from explicit differences (exact); -> (C, K).

    The fused fitting kernels use the faster matrix-product expansion; this exact form
    serves scoring and the driver's exact fallback pass.
    """
    diff = X[:, None, :] - means[None, :, :]
    return jnp.sum(diff * diff * precisions[None, :, :], axis=2)


class FusedPartials(NamedTuple):
    """Per-chunk partial sums of a fused E-step (added over chunks).

    Attributes:
        moments: a covariance-type specific pytree of raw moments (see each type's
            ``fused_chunk``).
        log_lik_sum: () summed weighted log-likelihood.
        n: () summed sample weights.
    """

    moments: Any
    log_lik_sum: jax.Array
    n: jax.Array


def _weighted_responsibilities(
    log_prob: jax.Array, sample_weight: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Responsibilities times sample weights, and log-normalisers, with one exp.

    Args:
        log_prob: (K, C) weighted log-densities, components first.
        sample_weight: (C,).

    Returns:
        resp_w: (K, C) and log_norm: (C,) = logsumexp over components.
    """
    top = jnp.max(log_prob, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    unnorm = jnp.exp(log_prob - top)
    total = jnp.sum(unnorm, axis=0)
    return unnorm * (sample_weight / total), top + jnp.log(total)


def _log_lik_sum(log_norm: jax.Array, sample_weight: jax.Array) -> jax.Array:
    """sum_c w_c * log_norm_c; zero-weight rows (padding) never contribute."""
    return jnp.sum(jnp.where(sample_weight > 0, sample_weight * log_norm, 0.0))


def _diag_coefficients(means, precisions, precisions_cholesky, log_weights):
    """Rows [-prec/2, prec*mean, const] so [x*x, x, 1] @ row.T is the log-density; (K, 2D+1)."""
    n_features = means.shape[1]
    const = (
        jnp.sum(jnp.log(precisions_cholesky), axis=1)
        + log_weights
        - 0.5 * (n_features * _LOG_2PI + jnp.sum(means * means * precisions, axis=1))
    )
    return jnp.concatenate([-0.5 * precisions, precisions * means, const[:, None]], axis=1)


# At or below this many features, the chunk products are written as unrolled
# multiply-adds: under vmap (restarts, many models) XLA would otherwise issue one tiny
# matrix product per batch member, which costs far more than the arithmetic.
SMALL_FEATURES = 4


def _dot_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b.T without materialising the transpose; (K, F), (C, F) -> (K, C)."""
    if a.shape[1] <= SMALL_FEATURES:
        out = a[:, 0:1] * b[None, :, 0]
        for f in range(1, a.shape[1]):
            out = out + a[:, f : f + 1] * b[None, :, f]
        return out
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))


# Rows per chunk from which a vmapped group's few-column moment sums are matrix products.
GROUP_PRODUCT_MIN_ROWS = 1024


def _dot_chunk(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b, contracting over the chunk's rows; (R, C), (C, F) -> (R, F).

    A matrix product, except for a few columns (F <= 5) and fewer than
    :data:`GROUP_PRODUCT_MIN_ROWS` rows per member of a vmapped group (see
    :mod:`jaxgmm._group_trace`): there one sum per column, fused with its producer.
    Measured (medians): a single fit's (16, 5,064) @ (5,064, 5) float64 49 us as a
    product vs 525 us as sums; in groups, 1,000 models of 500 rows in 2-D (W3, chunks
    of 712 rows) 20-50 % slower as products, 256 restarts on 2,000 rows 20 % faster.
    """
    few_rows = a.shape[1] < GROUP_PRODUCT_MIN_ROWS
    if b.shape[1] <= SMALL_FEATURES + 1 and in_group_members() and few_rows:
        return jnp.stack([jnp.sum(a * b[None, :, f], axis=1) for f in range(b.shape[1])], axis=1)
    return a @ b


def _expanded_fused_chunk(
    features: jax.Array, coefficients: jax.Array, sample_weight: jax.Array
) -> FusedPartials:
    """Log-densities as one product, responsibilities, and their moments as another.

    Args:
        features: (C, F) per-point features whose last column is ones.
        coefficients: (K, F) so that ``coefficients @ features.T`` is the (K, C) weighted
            log-density.
        sample_weight: (C,).

    Returns:
        :class:`FusedPartials` with ``moments`` (K, F) = sum_c r_ck features_c.
    """
    log_prob = _dot_rows(coefficients, features)
    resp_w, log_norm = _weighted_responsibilities(log_prob, sample_weight)
    return FusedPartials(
        moments=_dot_chunk(resp_w, features),
        log_lik_sum=_log_lik_sum(log_norm, sample_weight),
        n=jnp.sum(sample_weight),
    )


def _check_positive(values: np.ndarray, dtype: np.dtype, name: str) -> None:
    """Raise unless every precision value is > 0, also after the cast to ``dtype``."""
    if (values <= 0).any():
        raise ValueError(
            f"{name} must be strictly positive; {int((values <= 0).sum())} value(s) are <= 0."
        )
    if (values.astype(dtype) <= 0).any():
        raise ValueError(
            f"{name} has values as small as {values.min():.3g}, which are 0 in "
            f"{dtype}; rescale the data and initial parameters."
        )


def _check_precision_matrices(matrices: np.ndarray, dtype: np.dtype, name: str) -> None:
    """Raise unless every (D, D) matrix is symmetric positive definite in ``dtype``."""
    for k, matrix in enumerate(matrices):
        if not np.allclose(matrix, matrix.T, rtol=1e-7, atol=1e-10):
            raise ValueError(f"{name} matrix {k} is not symmetric; pass (P + P.T) / 2.")
        if np.linalg.eigvalsh(matrix).min() <= 0:
            raise ValueError(
                f"{name} matrix {k} is not positive definite; every precision matrix must "
                f"have strictly positive eigenvalues (it is the inverse of a covariance)."
            )
        try:
            np.linalg.cholesky(matrix.astype(dtype))
        except np.linalg.LinAlgError:
            raise ValueError(
                f"{name} matrix {k} is positive definite but too ill-conditioned for "
                f"{dtype} (condition number {np.linalg.cond(matrix):.3g}); pass a "
                f"better-conditioned matrix or fit in float64."
            ) from None


class _MatrixCovariance:
    """What ``full`` and ``tied`` share: (D, D) covariance matrices."""

    expanded_density = False
    row_sized = False
    precisions_cholesky = staticmethod(_inverse_transpose_cholesky)
    precisions_cholesky_from_precisions = staticmethod(_upper_cholesky_of_precision)
    covariances_from_precisions_cholesky = staticmethod(_covariance_from_upper)

    @staticmethod
    def precisions(precisions_cholesky: jax.Array) -> jax.Array:
        """U @ U.T; (..., D, D) -> (..., D, D) (NumPy in, NumPy out)."""
        xp = np if isinstance(precisions_cholesky, np.ndarray) else jnp
        return precisions_cholesky @ xp.swapaxes(precisions_cholesky, -1, -2)

    @staticmethod
    def cholesky_diagonal(precisions_cholesky: jax.Array) -> jax.Array:
        """Diagonal of the triangular factors; (..., D, D) -> (..., D) (NumPy in, NumPy out)."""
        xp = np if isinstance(precisions_cholesky, np.ndarray) else jnp
        return xp.diagonal(precisions_cholesky, axis1=-2, axis2=-1)

    @staticmethod
    def variances(covariances: jax.Array) -> jax.Array:
        """Diagonal of the covariances; (..., D, D) -> (..., D)."""
        return jnp.diagonal(covariances, axis1=-2, axis2=-1)

    @staticmethod
    def to_unconstrained(precisions_cholesky: jax.Array) -> jax.Array:
        """Upper factors with their (positive) diagonal replaced by its log; (..., D, D)."""
        diagonal = jnp.diagonal(precisions_cholesky, axis1=-2, axis2=-1)
        eye = jnp.eye(precisions_cholesky.shape[-1], dtype=bool)
        return jnp.where(eye, jnp.log(diagonal)[..., None, :], jnp.triu(precisions_cholesky, 1))

    @staticmethod
    def from_unconstrained(raw: jax.Array) -> jax.Array:
        """Upper factors: the strict upper triangle of ``raw``, exp of its diagonal.

        The strictly lower entries of ``raw`` are ignored; (..., D, D) -> (..., D, D).
        """
        diagonal = jnp.exp(jnp.diagonal(raw, axis1=-2, axis2=-1))
        eye = jnp.eye(raw.shape[-1], dtype=bool)
        return jnp.where(eye, diagonal[..., None, :], jnp.triu(raw, 1))


class _VarianceCovariance:
    """What ``diag`` and ``spherical`` share: variances, fused kernels expanded at zero."""

    expanded_density = True
    expanded_moments = True
    row_sized = True

    @staticmethod
    def precisions_cholesky(covariances):
        """1 / sqrt(variances)."""
        return jax.lax.rsqrt(covariances)

    @staticmethod
    def precisions_cholesky_from_precisions(precisions):
        """sqrt(precisions)."""
        return jnp.sqrt(precisions)

    @staticmethod
    def covariances_from_precisions_cholesky(precisions_cholesky):
        """1 / precisions_cholesky**2."""
        return 1.0 / precisions_cholesky**2

    @staticmethod
    def precisions(precisions_cholesky: jax.Array) -> jax.Array:
        """precisions_cholesky**2."""
        return precisions_cholesky**2

    @staticmethod
    def cholesky_diagonal(precisions_cholesky: jax.Array) -> jax.Array:
        """The factors themselves (they are diagonal)."""
        return precisions_cholesky

    @staticmethod
    def check_precisions(precisions: np.ndarray, dtype: np.dtype, name: str) -> None:
        """Raise unless every precision value is > 0 in ``dtype``."""
        _check_positive(precisions, dtype, name)

    @staticmethod
    def to_unconstrained(precisions_cholesky: jax.Array) -> jax.Array:
        """log(1 / standard deviation) (half the log precision); same shape."""
        return jnp.log(precisions_cholesky)

    @staticmethod
    def from_unconstrained(raw: jax.Array) -> jax.Array:
        """exp(raw): positive factors 1 / standard deviation; same shape."""
        return jnp.exp(raw)


class Full(_MatrixCovariance):
    """One (D, D) covariance per component."""

    name = "full"
    per_component = True
    expanded_moments = False
    noise_kinds = ("diagonal", "full")

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        """(K, D, D)."""
        return (n_components, n_features, n_features)

    @staticmethod
    def recentre(s_xx, s_x, n_k, delta):
        """Parallel-axis step: sum r (x - a + delta)(x - a + delta)^T; (K, D, D)."""
        outer = s_x[:, :, None] * delta[:, None, :]
        return (
            s_xx
            + outer
            + jnp.swapaxes(outer, 1, 2)
            + n_k[:, None, None] * (delta[:, :, None] * delta[:, None, :])
        )

    @staticmethod
    def full_matrices(covariances: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """The (K, D, D) covariances themselves."""
        return covariances

    @staticmethod
    def from_full_matrices(matrices: np.ndarray) -> np.ndarray:
        """The (K, D, D) matrices themselves."""
        return matrices

    @staticmethod
    def check_precisions(precisions: np.ndarray, dtype: np.dtype, name: str) -> None:
        """Raise unless every (D, D) precision matrix is positive definite."""
        _check_precision_matrices(precisions, dtype, name)

    @staticmethod
    def mean_second_moment(s_xx: jax.Array, n_k: jax.Array, n_features: int) -> jax.Array:
        """Per-feature mean second moments, diag(s_xx_k) / n_k; -> (K, D)."""
        return jnp.diagonal(s_xx, axis1=-2, axis2=-1) / n_k[:, None]

    @staticmethod
    def mask_inactive(covariances: jax.Array, active: jax.Array) -> jax.Array:
        """Identity covariances for inactive (padding) components; (K, D, D)."""
        eye = jnp.eye(covariances.shape[-1], dtype=covariances.dtype)
        return jnp.where(active[:, None, None], covariances, eye)

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
    def row_statistics(diff: jax.Array, resp_w: jax.Array):
        """(s_x (K, D), s_xx (K, D, D)) from shifted rows diff: (C, D), as one product."""
        weighted = resp_w.T[:, :, None] * diff[None]
        return resp_w.T @ diff, jnp.einsum("kcd,ce->kde", weighted, diff)

    @staticmethod
    def statistics(X: jax.Array, resp_w: jax.Array, shift: jax.Array):
        """(s_x (K, D), s_xx (K, D, D)) of one chunk, around ``shift`` (K, D)."""
        diff = X[:, None, :] - shift[None, :, :]
        weighted = diff * resp_w[:, :, None]
        return jnp.sum(weighted, axis=0), jnp.einsum("ckd,cke->kde", weighted, diff)

    @staticmethod
    def fused_chunk(
        X: jax.Array,
        sample_weight: jax.Array,
        means: jax.Array,
        precisions_cholesky: jax.Array,
        log_weights: jax.Array,
    ) -> FusedPartials:
        """E-step of one chunk and its partial statistics (exact around ``means``).

        Args:
            X: (C, D) centred rows; sample_weight: (C,); means: (K, D);
            precisions_cholesky: (K, D, D) upper factors U; log_weights: (K,).

        Returns:
            :class:`FusedPartials` with ``moments`` = (n_k (K,), (K, D, D + 1)
            sum_c r_ck y_ck [x_c, 1]^T) where y_ck = U_k^T (x_c - m_k).
        """
        n_components, n_features = means.shape
        chunk = X.shape[0]
        # (K*D, D): row (k, e) is column e of U_k, so Ut @ x stacks U_k^T x.
        u_t = jnp.swapaxes(precisions_cholesky, 1, 2).reshape(n_components * n_features, -1)
        offset = jnp.einsum("kd,kde->ke", means, precisions_cholesky).reshape(-1, 1)
        y_flat = _dot_rows(u_t, X) - offset
        y = y_flat.reshape(n_components, n_features, chunk)
        log_det = jnp.sum(jnp.log(jnp.diagonal(precisions_cholesky, axis1=1, axis2=2)), axis=1)
        const = log_det + log_weights - 0.5 * n_features * _LOG_2PI
        log_prob = const[:, None] - 0.5 * jnp.sum(y * y, axis=1)
        resp_w, log_norm = _weighted_responsibilities(log_prob, sample_weight)
        weighted = (resp_w[:, None, :] * y).reshape(n_components * n_features, chunk)
        X1 = jnp.concatenate([X, jnp.ones((chunk, 1), X.dtype)], axis=1)
        moments = _dot_chunk(weighted, X1).reshape(n_components, n_features, n_features + 1)
        return FusedPartials(
            moments=(jnp.sum(resp_w, axis=1), moments),
            log_lik_sum=_log_lik_sum(log_norm, sample_weight),
            n=jnp.sum(sample_weight),
        )

    @staticmethod
    def fused_finish(moments, means: jax.Array, precisions_cholesky: jax.Array):
        """(n_k, shift, s_x, s_xx) around ``means`` from summed :meth:`fused_chunk` moments.

        ``M_k = U_k^T [sum r (x - m_k) x^T | s_x]`` with ``s_x = sum r (x - m_k)``, so
        ``U_k^T s_x = M_k[:, D]`` and ``U_k^T s_xx = M_k[:, :D] - M_k[:, D] m_k^T``: one
        batched triangular solve, after the sum over chunks.
        """
        n_k, raw = moments
        n_features = means.shape[1]
        sum_y = raw[:, :, n_features]
        cross = raw[:, :, :n_features] - sum_y[:, :, None] * means[:, None, :]
        lower = jnp.swapaxes(precisions_cholesky, 1, 2)
        both = jnp.concatenate([cross, sum_y[:, :, None]], axis=2)
        solved = solve_triangular(lower, both, lower=True)
        s_xx = solved[:, :, :n_features]
        return n_k, means, solved[:, :, n_features], 0.5 * (s_xx + jnp.swapaxes(s_xx, 1, 2))

    @staticmethod
    def matrices(covariances: jax.Array) -> jax.Array:
        """Every component's (D, D) covariance; -> (K, D, D)."""
        return covariances

    @staticmethod
    def expected_moments(n_k, a, G, covariances):
        """(s_x (K, D), s_xx (K, D, D)) from incomplete-data sums, around the means."""
        s_x = jnp.einsum("kde,ke->kd", covariances, a)
        s_xx = n_k[:, None, None] * covariances + covariances @ G @ covariances
        return s_x, 0.5 * (s_xx + jnp.swapaxes(s_xx, 1, 2))

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Covariances from statistics; mean_shift = s_x / n_k: (K, D); -> (K, D, D)."""
        cov = s_xx / n_k[:, None, None] - mean_shift[:, :, None] * mean_shift[:, None, :]
        return _add_to_diagonal(cov, reg_covar)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_components * n_features * (n_features + 1) // 2

    @staticmethod
    def scale_noise(z: jax.Array, labels: jax.Array, covariances: jax.Array) -> jax.Array:
        """Turn standard-normal draws z: (M, D) into draws with each label's covariance."""
        return jnp.einsum("mde,me->md", jnp.linalg.cholesky(covariances)[labels], z)


class Tied(_MatrixCovariance):
    """One (D, D) covariance shared by all components."""

    name = "tied"
    per_component = False
    expanded_moments = True
    noise_kinds = ()

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        """(D, D)."""
        return (n_features, n_features)

    @staticmethod
    def recentre(s_xx, s_x, n_k, delta):
        """Parallel-axis step summed over components; (D, D)."""
        outer = s_x.T @ delta
        return s_xx + outer + outer.T + (delta * n_k[:, None]).T @ delta

    @staticmethod
    def full_matrices(covariances: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """The shared covariance repeated K times; (K, D, D)."""
        return np.broadcast_to(covariances, (n_components,) + covariances.shape).copy()

    @staticmethod
    def from_full_matrices(matrices: np.ndarray) -> np.ndarray:
        """The shared matrix of K equal ones; (K, D, D) -> (D, D)."""
        return matrices[0]

    @staticmethod
    def check_precisions(precisions: np.ndarray, dtype: np.dtype, name: str) -> None:
        """Raise unless the shared precision matrix is positive definite."""
        _check_precision_matrices(precisions[None], dtype, name)

    @staticmethod
    def mask_inactive(covariances: jax.Array, active: jax.Array) -> jax.Array:
        """The shared covariance, unchanged: inactive components add nothing to it."""
        return covariances

    @staticmethod
    def mean_second_moment(s_xx: jax.Array, n_k: jax.Array, n_features: int) -> jax.Array:
        """Per-feature mean second moments of all rows, diag(s_xx) / sum(n_k); -> (D,)."""
        return jnp.diagonal(s_xx) / jnp.sum(n_k)

    @staticmethod
    def log_prob(X, means, precisions_cholesky):
        """Log-density of each point under each component; -> (C, K)."""
        y = (X @ precisions_cholesky)[:, None, :] - (means @ precisions_cholesky)[None, :, :]
        log_det = jnp.sum(jnp.log(jnp.diagonal(precisions_cholesky)))
        return -0.5 * (X.shape[1] * _LOG_2PI + jnp.sum(y * y, axis=2)) + log_det

    @staticmethod
    def shift(means: jax.Array) -> jax.Array:
        """Statistics are taken around the current means (exact in float32); -> (K, D)."""
        return means

    @staticmethod
    def row_statistics(diff, resp_w):
        """(s_x (K, D), s_xx (D, D)) from shifted rows diff: (C, D)."""
        return resp_w.T @ diff, (diff * jnp.sum(resp_w, axis=1)[:, None]).T @ diff

    @staticmethod
    def statistics(X, resp_w, shift):
        """(s_x (K, D), s_xx (D, D) summed over components) of one chunk, around ``shift``."""
        diff = X[:, None, :] - shift[None, :, :]
        weighted = diff * resp_w[:, :, None]
        n_features = X.shape[1]
        s_xx = weighted.reshape(-1, n_features).T @ diff.reshape(-1, n_features)
        return jnp.sum(weighted, axis=0), s_xx

    @staticmethod
    def fused_chunk(X, sample_weight, means, precisions_cholesky, log_weights):
        """E-step of one chunk and its partial statistics (moments around zero).

        Log-densities are exact: the chunk is whitened once by the shared factor U
        (one (D, D) @ (D, C) product) and each component's whitened mean is
        subtracted explicitly, so the rounding error is ``eps * R``, as for ``full``.
        The moments need no per-component product: the shared scatter matrix is
        ``sum_c w_c x_c x_c^T - sum_k n_k xbar_k xbar_k^T`` (scikit-learn's form), from
        the chunk's weighted second moment and ``sum_c r_ck x_c``.

        Args:
            X: (C, D) centred rows; sample_weight: (C,); means: (K, D);
            precisions_cholesky: (D, D) upper factor U; log_weights: (K,).

        Returns:
            :class:`FusedPartials` with ``moments`` = (n_k (K,), sum_c r_ck x_c (K, D),
            sum_c w_c x_c x_c^T (D, D)).
        """
        n_features = means.shape[1]
        whitened = _dot_rows(precisions_cholesky.T, X)  # (D, C): U^T x
        y = whitened[None] - (means @ precisions_cholesky)[:, :, None]  # (K, D, C)
        log_det = jnp.sum(jnp.log(jnp.diagonal(precisions_cholesky)))
        const = log_det + log_weights - 0.5 * n_features * _LOG_2PI
        log_prob = const[:, None] - 0.5 * jnp.sum(y * y, axis=1)
        resp_w, log_norm = _weighted_responsibilities(log_prob, sample_weight)
        scatter = _dot_chunk((X * sample_weight[:, None]).T, X)
        return FusedPartials(
            moments=(jnp.sum(resp_w, axis=1), _dot_chunk(resp_w, X), scatter),
            log_lik_sum=_log_lik_sum(log_norm, sample_weight),
            n=jnp.sum(sample_weight),
        )

    @staticmethod
    def fused_finish(moments, means, precisions_cholesky):
        """(n_k, shift, s_x, s_xx) around zero from summed :meth:`fused_chunk` moments."""
        n_k, s_x, s_xx = moments
        return n_k, jnp.zeros_like(means), s_x, 0.5 * (s_xx + s_xx.T)

    @staticmethod
    def matrices(covariances: jax.Array) -> jax.Array:
        """The shared covariance as a batch of one; -> (1, D, D)."""
        return covariances[None]

    @staticmethod
    def expected_moments(n_k, a, G, covariances):
        """(s_x (K, D), s_xx (D, D) summed over components) from incomplete-data sums."""
        s_xx = jnp.sum(n_k) * covariances + covariances @ jnp.sum(G, axis=0) @ covariances
        return a @ covariances, 0.5 * (s_xx + s_xx.T)

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Shared covariance from statistics; -> (D, D)."""
        between = jnp.einsum("k,kd,ke->de", n_k, mean_shift, mean_shift)
        return _add_to_diagonal((s_xx - between) / jnp.sum(n_k), reg_covar)

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_features * (n_features + 1) // 2

    @staticmethod
    def scale_noise(z, labels, covariances):
        """Turn standard-normal draws z: (M, D) into draws with the shared covariance."""
        return z @ jnp.linalg.cholesky(covariances).T


class Diag(_VarianceCovariance):
    """One diagonal covariance (a variance per dimension) per component."""

    name = "diag"
    per_component = True
    noise_kinds = ("diagonal",)

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        """(K, D)."""
        return (n_components, n_features)

    @staticmethod
    def recentre(s_xx, s_x, n_k, delta):
        """Parallel-axis step per feature; (K, D)."""
        return s_xx + 2.0 * s_x * delta + n_k[:, None] * delta * delta

    @staticmethod
    def variances(covariances: jax.Array) -> jax.Array:
        """The (K, D) variances themselves."""
        return covariances

    @staticmethod
    def mean_second_moment(s_xx: jax.Array, n_k: jax.Array, n_features: int) -> jax.Array:
        """Per-feature mean second moments, s_xx / n_k; -> (K, D)."""
        return s_xx / n_k[:, None]

    @staticmethod
    def full_matrices(covariances: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """Diagonal matrices; (K, D) -> (K, D, D)."""
        return covariances[:, :, None] * np.eye(n_features)

    @staticmethod
    def from_full_matrices(matrices: np.ndarray) -> np.ndarray:
        """The diagonals of diagonal matrices; (K, D, D) -> (K, D)."""
        return np.diagonal(matrices, axis1=1, axis2=2).copy()

    @staticmethod
    def mask_inactive(covariances: jax.Array, active: jax.Array) -> jax.Array:
        """Unit variances for inactive (padding) components; (K, D)."""
        return jnp.where(active[:, None], covariances, 1.0)

    @staticmethod
    def log_prob(X, means, precisions_cholesky):
        """Log-density of each point under each component; -> (C, K)."""
        maha = _diag_mahalanobis(X, means, precisions_cholesky**2)
        log_det = jnp.sum(jnp.log(precisions_cholesky), axis=1)
        return -0.5 * (X.shape[1] * _LOG_2PI + maha) + log_det

    shift = staticmethod(jnp.zeros_like)

    @staticmethod
    def row_statistics(diff, resp_w):
        """(s_x (K, D), s_xx (K, D)) from shifted rows diff: (C, D)."""
        return resp_w.T @ diff, resp_w.T @ (diff * diff)

    @staticmethod
    def statistics(X, resp_w, shift):
        """(s_x (K, D), s_xx (K, D) per-dimension second moments) around ``shift`` (K, D).

        Exact (difference-based); the fast fused E-step works around zero instead, and
        the driver falls back to this pass when that lost precision (see
        :func:`jaxgmm._em.lost_precision`).
        """
        diff = X[:, None, :] - shift[None, :, :]
        weighted = diff * resp_w[:, :, None]
        return jnp.sum(weighted, axis=0), jnp.sum(weighted * diff, axis=0)

    @staticmethod
    def fused_chunk(X, sample_weight, means, precisions_cholesky, log_weights):
        """E-step of one chunk and its partial statistics (expanded, around zero).

        Args:
            X: (C, D) centred rows; sample_weight: (C,); means: (K, D);
            precisions_cholesky: (K, D) 1 / standard deviations; log_weights: (K,).

        Returns:
            :class:`FusedPartials` with ``moments`` = (n_k (K,), sum_c r_ck x_c*x_c
            (K, D), sum_c r_ck x_c (K, D)).
        """
        coefficients = _diag_coefficients(
            means, precisions_cholesky**2, precisions_cholesky, log_weights
        )
        n_features = means.shape[1]
        squares = X * X
        # Two products rather than one on concatenated [x*x, x] features: XLA's CPU
        # concatenation costs more than the second, equally sized, product.
        log_prob = (
            _dot_rows(coefficients[:, :n_features], squares)
            + _dot_rows(coefficients[:, n_features : 2 * n_features], X)
            + coefficients[:, -1:]
        )
        resp_w, log_norm = _weighted_responsibilities(log_prob, sample_weight)
        return FusedPartials(
            moments=(jnp.sum(resp_w, axis=1), _dot_chunk(resp_w, squares), _dot_chunk(resp_w, X)),
            log_lik_sum=_log_lik_sum(log_norm, sample_weight),
            n=jnp.sum(sample_weight),
        )

    @staticmethod
    def fused_finish(moments, means, precisions_cholesky):
        """(n_k, shift, s_x, s_xx) around zero from summed :meth:`fused_chunk` moments."""
        n_k, s_xx, s_x = moments
        return n_k, jnp.zeros_like(means), s_x, s_xx

    @staticmethod
    def expected_moments(n_k, a, G, covariances):
        """(s_x (K, D), s_xx (K, D)) from incomplete-data sums, around the means."""
        return covariances * a, n_k[:, None] * covariances + covariances**2 * G

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Variances from statistics, clipped at zero before regularising; -> (K, D)."""
        return jnp.maximum(s_xx / n_k[:, None] - mean_shift**2, 0.0) + reg_covar

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_components * n_features

    @staticmethod
    def scale_noise(z, labels, covariances):
        """Turn standard-normal draws z: (M, D) into draws with each label's variances."""
        return z * jnp.sqrt(covariances[labels])


class Spherical(_VarianceCovariance):
    """One variance per component, the same in every dimension."""

    name = "spherical"
    per_component = True
    noise_kinds = ()

    @staticmethod
    def shape(n_components: int, n_features: int) -> tuple[int, ...]:
        """(K,)."""
        return (n_components,)

    @staticmethod
    def recentre(s_xx, s_x, n_k, delta):
        """Parallel-axis step summed over features; (K,)."""
        return s_xx + jnp.sum(2.0 * s_x * delta + n_k[:, None] * delta * delta, axis=1)

    @staticmethod
    def variances(covariances: jax.Array) -> jax.Array:
        """(K,) variances as (K, 1), broadcastable against (K, D)."""
        return covariances[:, None]

    @staticmethod
    def mean_second_moment(s_xx: jax.Array, n_k: jax.Array, n_features: int) -> jax.Array:
        """Summed squared norms as a per-row, per-feature mean; -> (K, 1)."""
        return (s_xx / (n_k * n_features))[:, None]

    @staticmethod
    def full_matrices(covariances: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """Multiples of the identity; (K,) -> (K, D, D)."""
        return covariances[:, None, None] * np.eye(n_features)

    @staticmethod
    def from_full_matrices(matrices: np.ndarray) -> np.ndarray:
        """The factors of multiples of the identity; (K, D, D) -> (K,)."""
        return matrices[:, 0, 0].copy()

    @staticmethod
    def mask_inactive(covariances: jax.Array, active: jax.Array) -> jax.Array:
        """Unit variances for inactive (padding) components; (K,)."""
        return jnp.where(active, covariances, 1.0)

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
    def row_statistics(diff, resp_w):
        """(s_x (K, D), s_xx (K,)) from shifted rows diff: (C, D)."""
        return resp_w.T @ diff, resp_w.T @ jnp.sum(diff * diff, axis=1)

    @staticmethod
    def statistics(X, resp_w, shift):
        """(s_x (K, D), s_xx (K,) summed squared norms) around ``shift`` (K, D), exactly."""
        s_x, s_xx = Diag.statistics(X, resp_w, shift)
        return s_x, jnp.sum(s_xx, axis=1)

    @staticmethod
    def fused_chunk(X, sample_weight, means, precisions_cholesky, log_weights):
        """E-step of one chunk and its partial statistics (expanded, around zero).

        Args:
            X: (C, D) centred rows; sample_weight: (C,); means: (K, D);
            precisions_cholesky: (K,) 1 / standard deviations; log_weights: (K,).

        Returns:
            :class:`FusedPartials` with ``moments`` (K, D + 2): sum_c r_ck [|x|^2, x, 1].
        """
        n_features = means.shape[1]
        precisions = precisions_cholesky**2
        square = -0.5 * precisions[:, None]
        linear = precisions[:, None] * means
        const = (
            n_features * jnp.log(precisions_cholesky)
            + log_weights
            - 0.5 * (n_features * _LOG_2PI + precisions * jnp.sum(means * means, axis=1))
        )
        features = jnp.concatenate(
            [jnp.sum(X * X, axis=1, keepdims=True), X, jnp.ones((X.shape[0], 1), X.dtype)],
            axis=1,
        )
        coefficients = jnp.concatenate([square, linear, const[:, None]], axis=1)
        return _expanded_fused_chunk(features, coefficients, sample_weight)

    @staticmethod
    def fused_finish(moments, means, precisions_cholesky):
        """(n_k, shift, s_x, s_xx) around zero from summed :meth:`fused_chunk` moments."""
        return moments[:, -1], jnp.zeros_like(means), moments[:, 1:-1], moments[:, 0]

    @staticmethod
    def expected_moments(n_k, a, G, covariances):
        """(s_x (K, D), s_xx (K,) summed over features) from incomplete-data sums."""
        n_features = a.shape[1]
        s_xx = n_features * n_k * covariances + covariances**2 * jnp.sum(G, axis=1)
        return covariances[:, None] * a, s_xx

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar):
        """Variances from statistics, clipped at zero before regularising; -> (K,)."""
        n_features = mean_shift.shape[1]
        var = (s_xx / n_k - jnp.sum(mean_shift**2, axis=1)) / n_features
        return jnp.maximum(var, 0.0) + reg_covar

    @staticmethod
    def n_parameters(n_components: int, n_features: int) -> int:
        """Number of free covariance parameters."""
        return n_components

    @staticmethod
    def scale_noise(z, labels, covariances):
        """Turn standard-normal draws z: (M, D) into draws with each label's variance."""
        return z * jnp.sqrt(covariances[labels])[:, None]


class ProjectedRegularisation(NamedTuple):
    """The ``reg_covar`` of :class:`Projected` fits: the value, and the type to fit.

    Attributes:
        reg_covar: () non-negative value added to every covariance's diagonal.
        kind: () int32, the position of the fitted covariance type in
            :data:`COVARIANCE_TYPES`: a value of the program, not part of its shape.
    """

    reg_covar: jax.Array
    kind: jax.Array


class Projected(Full):
    """Any covariance type held as full (K, D, D) matrices, the type chosen at run time.

    The E-step is ``full``'s. The M-step computes every type's covariances from the
    per-component scatter matrices (``full``'s, their weighted mean for ``tied``, their
    diagonal for ``diag``, its mean for ``spherical``, each as scikit-learn defines it)
    and keeps the one that :class:`ProjectedRegularisation` names. One compiled
    program thus fits all four types: tiny problems use it (see
    :mod:`jaxgmm._buckets`), where compiling a program costs a second and a fit
    milliseconds, and D x D matrices cost no more than D variances.
    """

    name = "projected"

    @staticmethod
    def covariances(n_k, mean_shift, s_xx, reg_covar: ProjectedRegularisation):
        """Covariances of the type ``reg_covar.kind``, as full matrices; -> (K, D, D)."""
        outer = mean_shift[:, :, None] * mean_shift[:, None, :]
        full = s_xx / n_k[:, None, None] - outer
        # Inactive components (n_k = 0) have zero statistics: they add nothing here.
        tied = jnp.sum(s_xx - n_k[:, None, None] * outer, axis=0) / jnp.sum(n_k)
        variances = jnp.diagonal(full, axis1=1, axis2=2)
        eye = jnp.eye(full.shape[-1], dtype=full.dtype)
        spherical = jnp.maximum(jnp.mean(variances, axis=1), 0.0)[:, None, None] * eye
        candidates = jnp.stack(
            [
                full,
                jnp.broadcast_to(tied, full.shape),
                jnp.maximum(variances, 0.0)[:, :, None] * eye,
                spherical,
            ]
        )
        return _add_to_diagonal(candidates[reg_covar.kind], reg_covar.reg_covar)


_MODELS: dict[str, CovarianceModel] = {
    model.name: model for model in (Full(), Tied(), Diag(), Spherical(), Projected())
}


def covariance_model(covariance_type: str) -> CovarianceModel:
    """The :class:`CovarianceModel` of ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``."""
    try:
        return _MODELS[covariance_type]
    except KeyError:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}."
        ) from None
