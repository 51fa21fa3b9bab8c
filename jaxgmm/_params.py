"""Parameter and result pytrees of a Gaussian mixture."""

from __future__ import annotations

import dataclasses
import enum

import jax
import numpy as np

from jaxgmm._buckets import first_rows
from jaxgmm._covariance import covariance_model

# The array fields of GaussianMixtureParams, in order.
ARRAY_FIELDS = ("weights", "means", "covariances", "precisions_cholesky")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixtureParams:
    """Parameters of a K-component Gaussian mixture in D dimensions.

    Shapes follow scikit-learn's ``GaussianMixture`` for each covariance type:

    ========================  ===========  ===========  ========  ===========
    field                     full         tied         diag      spherical
    ========================  ===========  ===========  ========  ===========
    ``weights``               (K,)         (K,)         (K,)      (K,)
    ``means``                 (K, D)       (K, D)       (K, D)    (K, D)
    ``covariances``           (K, D, D)    (D, D)       (K, D)    (K,)
    ``precisions_cholesky``   (K, D, D)    (D, D)       (K, D)    (K,)
    ========================  ===========  ===========  ========  ===========

    ``precisions_cholesky`` holds upper-triangular factors ``U`` with
    ``U @ U.T == inv(covariance)`` (full, tied), or ``1 / sqrt(variance)`` (diag,
    spherical), exactly as scikit-learn's ``precisions_cholesky_``.
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    precisions_cholesky: jax.Array
    covariance_type: str = dataclasses.field(default="full", metadata=dict(static=True))

    @property
    def n_components(self) -> int:
        """Number of mixture components K."""
        return self.means.shape[-2]

    @property
    def n_features(self) -> int:
        """Number of data dimensions D."""
        return self.means.shape[-1]

    @property
    def precisions(self) -> jax.Array:
        """Precision matrices (inverse covariances), in ``covariances``' shape."""
        return covariance_model(self.covariance_type).precisions(self.precisions_cholesky)


class Status(enum.IntEnum):
    """How a fit ended; ``Status(code).message`` explains it in words."""

    CONVERGED = 0
    MAX_ITER = 1
    NON_FINITE = 2
    INTERRUPTED = 3

    @property
    def message(self) -> str:
        """What this outcome means, in one or two sentences."""
        return _STATUS_MESSAGES[self]


_STATUS_MESSAGES = {
    Status.CONVERGED: "Converged: the lower bound changed by less than tol.",
    Status.MAX_ITER: (
        "Stopped at max_iter before the lower bound changed by less than tol; raise "
        "max_iter or tol, or check the data's scale."
    ),
    Status.NON_FINITE: (
        "Fitting the mixture model failed because some components have ill-defined "
        "empirical covariance (for instance caused by singleton or collapsed samples), and "
        "every restart produced non-finite values. Try to decrease the number of "
        "components, increase reg_covar, or scale the input data."
    ),
    Status.INTERRUPTED: (
        "Interrupted (Ctrl-C) before the lower bound changed by less than tol or max_iter "
        "was reached: the parameters are those of the last finished iteration. A finished "
        "restart is always chosen over an interrupted one."
    ),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`jaxgmm.fit`.

    Attributes:
        params: the fitted :class:`GaussianMixtureParams` of the best restart.
        lower_bound: (), mean (sample-weighted) log-likelihood per point of the best
            restart, computed in the E-step of the last iteration (scikit-learn's
            ``lower_bound_``).
        n_iter: (), number of EM iterations run by the best restart.
        converged: (), whether the best restart met ``tol`` before ``max_iter``.
        status: (), a :class:`Status` code of the best restart.
        history: (max_iter,), the lower bound after each iteration; NaN after
            ``n_iter`` (scikit-learn's ``lower_bounds_``).
        restart_lower_bounds: (n_init,), final lower bound of every restart,
            ``-inf`` for restarts that became non-finite.
    """

    params: GaussianMixtureParams
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    status: jax.Array
    history: jax.Array
    restart_lower_bounds: jax.Array


def first_components(params: GaussianMixtureParams, n_components: int) -> GaussianMixtureParams:
    """The first ``n_components`` components of (possibly padded) parameters.

    Args:
        params: parameters with K_pad >= ``n_components`` components.
        n_components: K to keep.

    Returns:
        Parameters with weights (K,), means (K, D) and covariance-shaped arrays; a
        tied covariance is shared and kept whole.
    """
    if params.n_components == n_components:
        return params
    per_component = covariance_model(params.covariance_type).per_component
    keep = slice(None, n_components) if per_component else slice(None)
    traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(params))

    def cut(a, rows):
        # Concrete arrays are cut on the host: no slicing program per K to compile.
        return a[rows] if traced else first_rows(a, rows.stop)

    return dataclasses.replace(
        params,
        weights=cut(params.weights, slice(None, n_components)),
        means=cut(params.means, slice(None, n_components)),
        covariances=cut(params.covariances, keep),
        precisions_cholesky=cut(params.precisions_cholesky, keep),
    )


# Scoring copies of a concrete params object, by (component count, as full): made once
# per object (its arrays never change), so repeated calls pay for neither the copy nor
# the transfer.
_SCORING_COPIES = "_jaxgmm_scoring_copies"


def arrays_on_device(params: GaussianMixtureParams) -> bool:
    """Whether every array field of ``params`` is a JAX array (not NumPy)."""
    return all(isinstance(getattr(params, name), jax.Array) for name in ARRAY_FIELDS)


def padded_components(
    params: GaussianMixtureParams, n_padded: int, as_full: bool = False
) -> GaussianMixtureParams:
    """``params`` with inactive components appended up to ``n_padded`` (concrete only).

    The inverse of :func:`first_components`: the new components are copies of
    component 0 with weight exactly 0, so their log-weight is -inf and they add
    nothing to any density, responsibility or score, while every value stays finite.
    With ``as_full``, every covariance type is also written as full (K, D, D) matrices
    (diagonal, multiples of the identity, or the shared matrix repeated; their
    precision factors likewise), so that one ``full`` program scores models of all
    four types. Built in NumPy and moved to the device once; cached on ``params``
    (NumPy-backed parameters with nothing to pad get their device copy the same way).

    Args:
        params: concrete parameters with K <= ``n_padded`` components.
        n_padded: K_pad.
        as_full: return ``covariance_type="full"`` parameters.

    Returns:
        Parameters with weights (K_pad,), means (K_pad, D) and covariance-shaped
        arrays with K_pad components (a tied covariance is shared and unchanged unless
        ``as_full``).
    """
    if params.n_components == n_padded and not as_full and arrays_on_device(params):
        return params
    cache = params.__dict__.setdefault(_SCORING_COPIES, {})
    if (n_padded, as_full) not in cache:
        model = covariance_model(params.covariance_type)
        n_components, n_features = params.n_components, params.n_features
        extra = n_padded - n_components

        def pad(a, fill_with_zero=False):
            a = np.asarray(a)
            tail = np.zeros_like(a[:1]) if fill_with_zero else a[:1]
            return np.concatenate([a, np.repeat(tail, extra, axis=0)])

        arrays = dict(weights=pad(params.weights, fill_with_zero=True), means=pad(params.means))
        for name in ("covariances", "precisions_cholesky"):
            a = np.asarray(getattr(params, name))
            if as_full:
                full = model.full_matrices(a, n_components, n_features)
                arrays[name] = pad(full.astype(a.dtype, copy=False))
            elif model.per_component:  # else the shared array stays as it is
                arrays[name] = pad(a)
        cache[n_padded, as_full] = dataclasses.replace(
            params,
            **jax.device_put(arrays),
            **(dict(covariance_type="full") if as_full else {}),
        )
    return cache[n_padded, as_full]
