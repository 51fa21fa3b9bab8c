"""Solvers: one iteration of a fitting algorithm as ``init`` / ``step`` / ``terminate``.

A solver knows the algorithm and nothing about the loop around it: the loop
(:func:`jaxgmm._iterate.iterate`) owns the iteration count, the non-finite guard, the
history, progress and the :class:`~jaxgmm._params.Status`. Maximum-likelihood EM is
the first solver; MAP-EM, variational Bayes, online EM and gradient fitting are
siblings with the same three methods.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgmm._batching import cond_any
from jaxgmm._covariance import covariance_model
from jaxgmm._em import (
    e_step,
    exact_e_step,
    expansion_origin,
    lost_precision,
    m_step,
    needs_exact_e_step,
)
from jaxgmm._incomplete import incomplete_e_step
from jaxgmm._params import GaussianMixtureParams
from jaxgmm._rows import IN_MEMORY, InMemory, Rows
from jaxgmm._stats import Stats


@dataclasses.dataclass(frozen=True)
class EM:
    """Maximum-likelihood EM: one E-step, then one M-step, per iteration.

    Attributes:
        reg_covar: () non-negative value added to every covariance's diagonal.
        active: None, or (K,) bool: which components take part (the others are
            padding with weight zero, see :mod:`jaxgmm._buckets`).
        reducer: where the rows live (:mod:`jaxgmm._rows`).
    """

    reg_covar: jax.Array
    active: jax.Array | None = None
    reducer: InMemory = IN_MEMORY

    def init(self, params: GaussianMixtureParams) -> GaussianMixtureParams:
        """The solver state before the first iteration: here the parameters themselves."""
        return params

    def step(
        self, rows: Rows, params: GaussianMixtureParams
    ) -> tuple[GaussianMixtureParams, jax.Array]:
        """One EM iteration.

        Args:
            rows: the data; params: the current parameters.

        Returns:
            The new parameters, and () the objective of the *current* ones: the mean
            log-likelihood per point from this E-step (scikit-learn's lower bound).
        """
        stats = self.statistics(rows, params)
        new_params = self.update(stats)
        if rows.incomplete:  # expected statistics, exact around the current means
            return new_params, stats.log_lik_sum / stats.n
        if covariance_model(params.covariance_type).expanded_moments:
            # Fused moments are summed around zero; redo them exactly around the
            # current means when that cancelled away a variance (float32, tight far
            # components; or a collapsed component, whose variance is then exactly 0).
            reducer = self.reducer

            def exact(rows, old, new, reg, active):
                stats = exact_e_step(rows, old, old.means, reducer)
                return m_step(stats, reg, old.covariance_type, active)

            new_params = cond_any(
                lost_precision(stats, new_params),
                exact,
                lambda rows, old, new, reg, active: new,
                rows,
                params,
                new_params,
                self.reg_covar,
                self.active,
            )
        return new_params, stats.log_lik_sum / stats.n

    def statistics(self, rows: Rows, params: GaussianMixtureParams) -> Stats:
        """The E-step's summed :class:`Stats` (the first half of :meth:`step`).

        The fused kernels expand (x - mu)^2 around the data's centre; when tight
        components sit far from it (float32), around the components' precision-weighted
        mean instead, and when that is not enough either, the exact difference-based
        pass runs. (cond_any: under vmap only the members that need it pay for it.)
        """
        reducer = self.reducer
        model = covariance_model(params.covariance_type)
        if rows.incomplete:
            # Missing entries or measurement noise (static: the rows' structure): the
            # exact expected statistics of jaxgmm._incomplete, around the current means.
            if not model.expanded_density or rows.noise is not None:
                return incomplete_e_step(rows, params, reducer)
            # diag/spherical with holes: matrix products unless components sit far
            # from the centre for their spread (then the elementwise exact pass).
            return cond_any(
                needs_exact_e_step(params),
                lambda rows, p: incomplete_e_step(rows, p, reducer),
                lambda rows, p: incomplete_e_step(rows, p, reducer, expanded=True),
                rows,
                params,
            )
        if not model.expanded_density:
            return e_step(rows, params, reducer)

        def expanded_elsewhere(rows, params):
            # Around the tight components (expansion_origin), else the exact pass.
            origin = expansion_origin(params)
            return cond_any(
                needs_exact_e_step(params, origin),
                lambda rows, p, origin: exact_e_step(rows, p, p.means, reducer),
                lambda rows, p, origin: e_step(rows, p, reducer, origin),
                rows,
                params,
                origin,
            )

        return cond_any(
            needs_exact_e_step(params),
            expanded_elsewhere,
            lambda rows, p: e_step(rows, p, reducer),
            rows,
            params,
        )

    def update(self, stats: Stats) -> GaussianMixtureParams:
        """The M-step: new parameters from summed statistics."""
        return m_step(stats, self.reg_covar, stats.covariance_type, self.active)

    @staticmethod
    def terminate(objective: jax.Array, previous: jax.Array, tol: jax.Array) -> jax.Array:
        """Converged: the objective changed by less than ``tol`` (scikit-learn's rule)."""
        return jnp.abs(objective - previous) < tol
