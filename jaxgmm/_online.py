"""Online (stepwise) EM (Cappé & Moulines, 2009) in optax's shape: ``init`` / ``update``.

The state holds a running average of *normalised* sufficient statistics (a
:class:`~jaxgmm._stats.Stats` whose weights sum to one). Each batch contributes its
own statistics divided by its total weight, ``s <- (1 - rho_t) s + rho_t s_hat(batch)``,
and the parameters are the engine's M-step of ``s``. The E-step and M-step are the
engine's own (:func:`jaxgmm._em.e_step`, :func:`jaxgmm._em.m_step`); statistics of
different steps are averaged around one shift with :meth:`Stats.recentre`.

Step sizes: ``rho_t = (t + t0) ** -kappa`` for the t-th update (t = 1, 2, ...), with
``kappa`` in (0.5, 1] (the range in which the averages converge), or any callable
``step -> rho`` such as an optax schedule, called with the number of updates done
before this one (0 for the first update, as optax counts), or a constant in (0, 1].
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._chunking import chunk_size_for
from jaxgmm._covariance import covariance_model
from jaxgmm._em import e_step, exact_e_step, m_step
from jaxgmm._iterate import all_finite
from jaxgmm._jit import jit
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._rows import split_rows
from jaxgmm._stats import Stats, chunk_stats
from jaxgmm._validation import (
    check_data_array,
    check_options,
    check_params,
    check_sample_weight,
)

_ADDITIVE = ("n_k", "s_x", "s_xx", "log_lik_sum", "n")


class OnlineEMState(NamedTuple):
    """State of online EM (a pytree: pass it through ``jax.jit``).

    Attributes:
        params: the current :class:`GaussianMixtureParams` (the M-step of ``stats``).
        stats: running average of normalised :class:`Stats` (``n == 1``, ``n_k``
            sums to one), around the current means.
        count: () int32, updates done so far.
        log_likelihood: () mean log-likelihood per point of the last batch under the
            parameters *before* its update (NaN before the first update).
    """

    params: GaussianMixtureParams
    stats: Stats
    count: jax.Array
    log_likelihood: jax.Array


def _scaled(stats: Stats, factor: jax.Array) -> Stats:
    """Statistics with every additive field multiplied by ``factor`` (same shift)."""
    return dataclasses.replace(stats, **{f: getattr(stats, f) * factor for f in _ADDITIVE})


@jit
def params_statistics(params: GaussianMixtureParams) -> Stats:
    """Normalised statistics whose moments are exactly those of ``params``.

    Each component is represented by 2D sigma points ``mean +- sqrt(D) L e_i`` (L a
    square root of its covariance, ``scale_noise``), weighted ``weight_k / (2D)``: their
    weights, means and covariances are the parameters' own. The M-step of these
    statistics returns ``params`` with ``reg_covar`` added once more to the covariances.

    Args:
        params: :class:`GaussianMixtureParams` with K components in D dimensions.

    Returns:
        :class:`Stats` around ``params.means`` with ``n == 1``.
    """
    model = covariance_model(params.covariance_type)
    n_components, n_features = params.n_components, params.n_features
    dtype = params.means.dtype
    eye = jnp.eye(n_features, dtype=dtype) * math.sqrt(n_features)
    z = jnp.tile(jnp.concatenate([eye, -eye]), (n_components, 1))  # (K * 2D, D)
    labels = jnp.repeat(jnp.arange(n_components), 2 * n_features)
    points = params.means[labels] + model.scale_noise(z, labels, params.covariances)
    resp = jax.nn.one_hot(labels, n_components, dtype=dtype)
    sample_weight = params.weights[labels] / (2 * n_features)
    return chunk_stats(points, resp, sample_weight, params.means, params.covariance_type)


def batch_statistics(X: jax.Array, sample_weight: jax.Array, params: GaussianMixtureParams):
    """The engine's E-step of one batch, around the current means.

    ``full`` uses the fused kernel (exact around each mean); the other types, whose
    fused kernels expand around the origin and need centred data, take the exact
    difference-based pass.

    Args:
        X: (B, D) rows; sample_weight: (B,); params: current parameters.

    Returns:
        :class:`Stats` summed over the batch, around ``params.means``.
    """
    n_rows, n_features = X.shape
    chunk = chunk_size_for(n_rows, params.n_components, n_features)
    n_padded = -(-n_rows // chunk) * chunk
    if n_padded > n_rows:  # zero-weight copies of row 0 change no sum
        X = jnp.concatenate([X, jnp.broadcast_to(X[:1], (n_padded - n_rows, n_features))])
        sample_weight = jnp.concatenate([sample_weight, jnp.zeros(n_padded - n_rows, X.dtype)])
    rows = split_rows(X, sample_weight, jnp.arange(n_padded, dtype=jnp.int32), chunk)
    model = covariance_model(params.covariance_type)
    if model.expanded_density or model.expanded_moments:
        return exact_e_step(rows, params, params.means)
    return e_step(rows, params)


def _default_step_size(kappa: float, t0: float) -> Callable[[jax.Array], jax.Array]:
    def step_size(count):
        steps = jnp.asarray(count).astype(jnp.result_type(float)) + 1.0
        return (steps + t0) ** -kappa

    return step_size


def _constant_step_size(value: float) -> Callable[[jax.Array], jax.Array]:
    def step_size(count):
        return jnp.full((), value)

    return step_size


def _check_real_in(value, name: str, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    value = float(value)
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}.")
    return value


@dataclasses.dataclass(frozen=True)
class OnlineEM:
    """Online EM for a K-component mixture: ``init(params)``, ``update(batch, state)``.

    Made by :func:`online_em`; see there for the options.
    """

    n_components: int
    covariance_type: str
    reg_covar: float
    step_size: Callable[[jax.Array], jax.Array]

    def init(self, params: GaussianMixtureParams) -> OnlineEMState:
        """The state before the first update, from initial parameters.

        Args:
            params: :class:`GaussianMixtureParams` with ``n_components`` components
                and this ``covariance_type`` (e.g. ``jaxgmm.fit(first_batch, K).params``).

        Returns:
            :class:`OnlineEMState` holding ``params``, the statistics of ``params``
            (:func:`params_statistics`; they matter only when the first step size is
            below one) and ``count = 0``.
        """
        params = check_params(params)  # a FitResult's params; value checks when concrete
        if params.covariance_type != self.covariance_type:
            raise ValueError(
                f"params have covariance_type {params.covariance_type!r} but this online EM "
                f"was made for {self.covariance_type!r}; pass matching parameters."
            )
        if params.n_components != self.n_components:
            raise ValueError(
                f"params have {params.n_components} components but this online EM was made "
                f"for n_components = {self.n_components}."
            )
        dtype = params.means.dtype
        return OnlineEMState(
            params=params,
            stats=params_statistics(params),
            count=jnp.zeros((), jnp.int32),
            log_likelihood=jnp.full((), jnp.nan, dtype),
        )

    def update(
        self, batch, state: OnlineEMState, sample_weight=None
    ) -> tuple[GaussianMixtureParams, OnlineEMState]:
        """One online EM step on a batch of rows.

        Pure and jittable (``jax.jit(online.update)``). Concrete input is validated
        first (shape, finite values, weights); traced input gets the shape checks.
        A step that would make the parameters non-finite is skipped (the previous
        parameters and statistics are kept; ``count`` still advances).

        Args:
            batch: (B, D) rows, cast to the parameters' dtype.
            state: the :class:`OnlineEMState` from :meth:`init` or a previous update.
            sample_weight: None (all ones) or (B,) non-negative weights.

        Returns:
            The new parameters and the new state.
        """
        if not isinstance(state, OnlineEMState):
            raise TypeError(
                f"state must be the OnlineEMState from online.init(params), got "
                f"{type(state).__name__}."
            )
        n_features = state.params.n_features
        X = check_data_array(batch, "batch", n_features=n_features)
        dtype = state.params.means.dtype
        sample_weight = check_sample_weight(sample_weight, X.shape[0], dtype, 1)
        X = jnp.asarray(X, dtype)
        with jax.numpy_dtype_promotion("standard"):  # optax schedules are not strict-clean
            rho = jnp.asarray(self.step_size(state.count), dtype)
        return _update(X, sample_weight, state, jnp.asarray(self.reg_covar, dtype), rho)


@jit
def _update(X, sample_weight, state: OnlineEMState, reg_covar, rho):
    """:meth:`OnlineEM.update` on validated arrays, for a step size ``rho`` (one program
    per batch shape and model, whatever the schedule)."""
    params = state.params
    batch = batch_statistics(X, sample_weight, params)
    # rho * s_hat + (1 - rho) * s, around the batch's shift (the current means).
    stats = _scaled(batch, rho / batch.n) + _scaled(state.stats, 1.0 - rho)
    new_params = m_step(stats, reg_covar, params.covariance_type)
    finite = all_finite(new_params) & all_finite(stats)

    def keep(new, old):
        return jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)

    new_params = keep(new_params, params)
    new_state = OnlineEMState(
        params=new_params,
        stats=keep(stats, state.stats.recentre(stats.shift)),
        count=state.count + 1,
        log_likelihood=batch.log_lik_sum / batch.n,
    )
    return new_params, new_state


def online_em(
    n_components: int,
    *,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    step_size: float | Callable | None = None,
    kappa: float = 0.6,
    t0: float = 0.0,
) -> OnlineEM:
    """Online (stepwise) EM, in optax's shape: ``state = init(params)``, ``update(batch, state)``.

    Each update averages the batch's normalised sufficient statistics into running
    ones, ``s <- (1 - rho_t) s + rho_t s_hat(batch)``, and returns the M-step of ``s``
    (Cappé & Moulines, 2009). With the default ``t0 = 0`` the first step size is 1,
    so the first update's statistics are those of the first batch alone.

    Example::

        online = jaxgmm.online_em(3)
        state = online.init(jaxgmm.fit(first_batch, 3).params)
        update = jit(online.update)
        for batch in batches:
            params, state = update(batch, state)

    Args:
        n_components: K.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        reg_covar: non-negative value added to every covariance's diagonal in the M-step.
        step_size: None for ``rho_t = (t + t0) ** -kappa`` (t = 1, 2, ...); a number
            in (0, 1] for a constant step; or a callable ``count -> rho`` such as an
            optax schedule, called with the number of updates done before this one
            (0 first). Its values should lie in (0, 1].
        kappa: decay exponent in (0.5, 1] (used when ``step_size`` is None).
        t0: non-negative offset of the step count (used when ``step_size`` is None);
            larger values give smaller first steps.

    Returns:
        An :class:`OnlineEM` with ``init`` and ``update``.

    Raises:
        ValueError, TypeError: invalid options.
    """
    check_options(n_components, covariance_type, 0.0, reg_covar, 1, 1, "kmeans")
    if step_size is None:
        kappa = _check_real_in(kappa, "kappa", 0.5, 1.0, low_open=True)
        if isinstance(t0, (bool, np.bool_)) or not isinstance(t0, numbers.Real):
            raise TypeError(f"t0 must be a real number >= 0, got {t0!r}.")
        if not (math.isfinite(t0) and t0 >= 0):
            raise ValueError(f"t0 must be a finite number >= 0, got {t0}.")
        schedule = _default_step_size(kappa, float(t0))
    elif callable(step_size):
        schedule = step_size
    elif isinstance(step_size, numbers.Real) and not isinstance(step_size, (bool, np.bool_)):
        schedule = _constant_step_size(_check_real_in(step_size, "step_size", 0.0, 1.0, True))
    else:
        raise TypeError(
            "step_size must be None, a number in (0, 1] or a callable count -> step size "
            f"(e.g. an optax schedule), got {step_size!r}."
        )
    return OnlineEM(n_components, covariance_type, float(reg_covar), schedule)
