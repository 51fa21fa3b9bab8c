"""Gradients of a fit by the implicit function theorem, without differentiating the loop.

EM stops at a fixed point ``theta* = T(theta*, X, w, r)`` of its map ``T`` (one E-step
and one M-step), with theta = (weights, means, covariances), data X, sample weights w
and ``reg_covar`` r. Near a fixed point where ``I - dT/dtheta`` is invertible,
theta* is a smooth function of (X, w, r) with

    dtheta* = (I - dT/dtheta)^-1 (dT/dX dX + dT/dw dw + dT/dr dr),

so a cotangent ``g`` on theta* becomes ``v = (I - dT/dtheta)^-T g`` (one linear solve,
matrix-free with GMRES: the Jacobian is not symmetric) and then ``v``'s VJP through
``T`` with respect to (X, w, r). The iterations themselves are never differentiated:
the fitted values come from the compiled fit with its inputs' gradients stopped, and
:func:`with_implicit_gradients` attaches this rule to them (identity in the forward
pass).

Details:

* ``precisions_cholesky`` is a function of the covariances: its cotangent is pulled
  back through that function onto the covariances' before the solve.
* The fit's lower bound ``L(theta, X, w)`` (mean log-likelihood of an E-step) gets its
  total derivative ``dL/dtheta dtheta* + dL/d(X, w)``; the first term is not zero in
  general (``reg_covar > 0`` moves the fixed point off the likelihood's stationary
  point), and costs nothing extra: it joins the right-hand side of the same solve.
* The weights are parametrised by all K entries; ``T`` ignores their scale (the
  E-step normalises), so ``dT/dtheta`` maps the direction ``weights`` to zero and its
  outputs always sum to one: ``I - dT/dtheta`` stays invertible on the full space.
* Zero-weight rows (the padding added to fill a chunk, or a user's zero weights)
  contribute nothing to ``T``, so their gradient with respect to X is exactly zero.
* ``T`` is evaluated in the user's coordinates shifted by a constant (the weighted
  data mean, gradient stopped): EM commutes with translations, so the derivatives are
  the same and float32 keeps its precision for data far from the origin. It uses the
  engine's exact E-step (:func:`~jaxgmm._em.exact_e_step`, differences around the
  current means) and M-step (:func:`~jaxgmm._em.m_step`): the fused kernels' choice
  between expanded and exact passes is a ``custom_vmap`` that reverse-mode autodiff
  does not go through, and both passes have the same fixed points.
* A fit that ended NON_FINITE gets NaN cotangents; the restart's choice, ``n_iter``,
  ``status``, ``history`` and ``restart_lower_bounds`` are constants.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.sparse.linalg import gmres
from jax.sharding import PartitionSpec

from jaxgmm._covariance import covariance_model
from jaxgmm._em import exact_e_step, m_step
from jaxgmm._params import FitResult, GaussianMixtureParams, Status
from jaxgmm._rows import IN_MEMORY, split_rows

# GMRES: Krylov vectors per restart cycle (at most the number of unknowns) and cycles.
_MAX_KRYLOV = 50
_MAX_CYCLES = 20


def stop_gradients(args: tuple) -> tuple:
    """``args`` with every floating array's gradient stopped (others unchanged).

    The compiled fit runs on these values: the user's ``jax.grad`` then never
    differentiates its ``while_loop``; :func:`with_implicit_gradients` supplies the
    gradients instead.
    """

    def stop(a):
        if a is None or not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            return a
        return jax.lax.stop_gradient(a)

    return tuple(stop(a) for a in args)


def with_implicit_gradients(
    result: FitResult, X: jax.Array, sample_weight: jax.Array, reg_covar: jax.Array, chunk_size: int
) -> FitResult:
    """The same result, with gradients of ``params`` and ``lower_bound`` by the implicit rule.

    Args:
        result: the compiled fit's result (K components, nothing padded), computed
            from inputs whose gradients were stopped (:func:`stop_gradients`).
        X: (N, D) the rows the fit ran on, N a multiple of ``chunk_size``, in the
            compute dtype; differentiable (the user's X, cast and padded).
        sample_weight: (N,) their weights (padding rows: zero).
        reg_covar: () in the compute dtype.
        chunk_size: rows per chunk of the backward pass's E-step.

    Returns:
        A :class:`FitResult` equal to ``result`` whose ``params`` and ``lower_bound``
        carry gradients with respect to X, ``sample_weight`` and ``reg_covar``.
    """
    params, lower_bound = _fixed_point(
        chunk_size, result.params, result.lower_bound, result.status, X, sample_weight, reg_covar
    )
    return dataclasses.replace(result, params=params, lower_bound=lower_bound)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fixed_point(chunk_size, params, lower_bound, status, X, sample_weight, reg_covar):
    """Identity on (params, lower_bound); the backward pass is :func:`_fixed_point_bwd`."""
    return params, lower_bound


def _fixed_point_fwd(chunk_size, params, lower_bound, status, X, sample_weight, reg_covar):
    return (params, lower_bound), (params, status, X, sample_weight, reg_covar)


def _em_map(theta, X, sample_weight, reg_covar, *, covariance_type, center, chunk_size):
    """One EM iteration ``T`` on theta = (weights, means, covariances), and its objective.

    Args:
        theta: (K,), (K, D) and covariance-shaped arrays.
        X: (N, D) rows; sample_weight: (N,); reg_covar: ().
        covariance_type: the model; center: (D,) constant shift (EM commutes with it).
        chunk_size: rows per E-step chunk (divides N).

    Returns:
        (new theta, () mean log-likelihood of ``theta``, the fit's lower bound).
    """
    weights, means, covariances = theta
    X, sample_weight = _replicated(X), _replicated(sample_weight)
    model = covariance_model(covariance_type)
    params = GaussianMixtureParams(
        weights=weights,
        means=means - center,
        covariances=covariances,
        precisions_cholesky=model.precisions_cholesky(covariances),
        covariance_type=covariance_type,
    )
    index = jnp.zeros(X.shape[0], jnp.int32)  # per-row draws play no part here
    rows = split_rows(X - center, sample_weight, index, chunk_size)
    stats = exact_e_step(rows, params, params.means, IN_MEMORY)
    new = m_step(stats, reg_covar, covariance_type)
    return (new.weights, new.means + center, new.covariances), stats.log_lik_sum / stats.n


def _fixed_point_bwd(chunk_size, residuals, cotangents):
    # Compiled once per shape: also the user's eager jax.grad reuses it call after call.
    return (None, None, None, *_adjoint(*residuals, *cotangents, chunk_size=chunk_size))


@partial(jax.jit, static_argnames="chunk_size")
def _adjoint(
    params, status, X, sample_weight, reg_covar, params_bar, lower_bound_bar, *, chunk_size
):
    """Cotangents of (X, sample_weight, reg_covar) from those of (params, lower_bound)."""
    model = covariance_model(params.covariance_type)
    theta = (params.weights, params.means, params.covariances)
    # precisions_cholesky is a function of the covariances: move its cotangent there.
    _, chol_vjp = jax.vjp(model.precisions_cholesky, params.covariances)
    (covariances_bar,) = chol_vjp(params_bar.precisions_cholesky)
    theta_bar = (params_bar.weights, params_bar.means, params_bar.covariances + covariances_bar)

    weight_rep = _replicated(sample_weight)
    center = weight_rep @ _replicated(X) / jnp.sum(weight_rep)
    em_map = partial(
        _em_map,
        covariance_type=params.covariance_type,
        center=jax.lax.stop_gradient(center),
        chunk_size=chunk_size,
    )
    with jax.default_matmul_precision("highest"):
        _, em_vjp = jax.vjp(em_map, theta, X, sample_weight, reg_covar)
        no_bound = jnp.zeros_like(lower_bound_bar)
        no_theta = jax.tree_util.tree_map(jnp.zeros_like, theta)

        def adjoint_operator(v):  # (I - dT/dtheta)^T v
            jt_v = em_vjp((v, no_bound))[0]
            return jax.tree_util.tree_map(jnp.subtract, v, jt_v)

        # Right-hand side: the cotangent of theta*, plus the lower bound's dL/dtheta.
        rhs = jax.tree_util.tree_map(jnp.add, theta_bar, em_vjp((no_theta, lower_bound_bar))[0])
        v = _solve(adjoint_operator, rhs)
        _, X_bar, weight_bar, reg_bar = em_vjp((v, lower_bound_bar))
    failed = status == Status.NON_FINITE
    return tuple(jnp.where(failed, jnp.nan, g) for g in (X_bar, weight_bar, reg_bar))


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` itself, or a replicated copy when its type says it is split (Explicit axes).

    Rows split over an Explicit mesh axis would make every sum over rows ambiguous to
    JAX's sharding types; the backward pass gathers them (its cotangent goes back
    split like ``x``). The forward fit still never gathers the rows.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", ())
    if not any(entry is not None for entry in spec):
        return x
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, PartitionSpec()))


def _solve(operator, rhs):
    """Solve ``operator(v) = rhs`` for a pytree v by restarted GMRES.

    Args:
        operator: a linear function of pytrees shaped like ``rhs``.
        rhs: pytree of arrays.

    Returns:
        v, to a relative residual of about eps**0.75 of the dtype (1e-12 in float64).
    """
    leaves = jax.tree_util.tree_leaves(rhs)
    size = sum(leaf.size for leaf in leaves)
    tol = float(jnp.finfo(leaves[0].dtype).eps) ** 0.75
    v, _ = gmres(
        operator,
        rhs,
        tol=tol,
        restart=min(size, _MAX_KRYLOV),
        maxiter=_MAX_CYCLES,
        solve_method="incremental",
    )
    return v
