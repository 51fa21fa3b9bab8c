"""Sufficient statistics of a mixture: what every E-step produces and every M-step consumes.

Statistics are sums over (weighted) rows, so they compose: the :class:`Stats` of two
disjoint sets of rows add up to the :class:`Stats` of their union, whatever chunks,
shards, processes or steps they came from. Second moments are taken around a shift
(near each component's mean, so float32 does not cancel them away);
:meth:`Stats.recentre` moves them to another shift exactly (the parallel-axis rule),
and ``+`` re-centres its right operand onto the left one's shift first.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgmm._covariance import covariance_model


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stats:
    """Per-component sufficient statistics summed over (weighted) rows.

    Attributes:
        n_k: (K,) summed responsibilities.
        s_x: (K, D) summed responsibility-weighted ``x - shift``.
        s_xx: second moments around ``shift``; (K, D, D) full, (D, D) tied,
            (K, D) diag, (K,) spherical.
        shift: (K, D) the point each component's moments are taken around.
        log_lik_sum: () summed weighted log-likelihood of the rows.
        n: () summed sample weights.
        covariance_type: which :class:`~jaxgmm._covariance.CovarianceModel` the
            second moments belong to (static).
    """

    n_k: jax.Array
    s_x: jax.Array
    s_xx: jax.Array
    shift: jax.Array
    log_lik_sum: jax.Array
    n: jax.Array
    covariance_type: str = dataclasses.field(metadata=dict(static=True))

    def recentre(self, shift: jax.Array) -> Stats:
        """The same statistics with moments taken around ``shift`` (K, D) instead."""
        delta = self.shift - shift
        model = covariance_model(self.covariance_type)
        return dataclasses.replace(
            self,
            s_x=self.s_x + self.n_k[:, None] * delta,
            s_xx=model.recentre(self.s_xx, self.s_x, self.n_k, delta),
            shift=shift,
        )

    def __add__(self, other: Stats) -> Stats:
        """Statistics of the union of both sets of rows, around ``self.shift``."""
        other = other.recentre(self.shift)
        return dataclasses.replace(
            self,
            n_k=self.n_k + other.n_k,
            s_x=self.s_x + other.s_x,
            s_xx=self.s_xx + other.s_xx,
            log_lik_sum=self.log_lik_sum + other.log_lik_sum,
            n=self.n + other.n,
        )

    def psum(self, axis_name) -> Stats:
        """Sum over the devices of a mapped axis (every device uses the same shift)."""
        summed = jax.lax.psum((self.n_k, self.s_x, self.s_xx, self.log_lik_sum, self.n), axis_name)
        return dataclasses.replace(self, **dict(zip(_ADDITIVE, summed, strict=True)))


_ADDITIVE = ("n_k", "s_x", "s_xx", "log_lik_sum", "n")


def chunk_stats(
    X: jax.Array,
    resp: jax.Array,
    sample_weight: jax.Array,
    shift: jax.Array,
    covariance_type: str,
    log_lik_sum: jax.Array | None = None,
) -> Stats:
    """Statistics of one chunk of rows for given responsibilities, around ``shift``.

    Args:
        X: (C, D) rows; resp: (C, K) responsibilities; sample_weight: (C,);
        shift: (K, D) the point each component's moments are taken around.
        covariance_type: the covariance model's name.
        log_lik_sum: () the chunk's summed weighted log-likelihood, or None for 0.

    Returns:
        :class:`Stats` of the chunk.
    """
    resp_w = resp * sample_weight[:, None]
    s_x, s_xx = covariance_model(covariance_type).statistics(X, resp_w, shift)
    if log_lik_sum is None:
        log_lik_sum = jnp.zeros((), X.dtype)
    return Stats(
        n_k=jnp.sum(resp_w, axis=0),
        s_x=s_x,
        s_xx=s_xx,
        shift=shift,
        log_lik_sum=log_lik_sum,
        n=jnp.sum(sample_weight),
        covariance_type=covariance_type,
    )


def assigned_stats(
    X: jax.Array,
    resp: jax.Array,
    sample_weight: jax.Array,
    shift: jax.Array,
    covariance_type: str,
) -> Stats:
    """:func:`chunk_stats` for responsibilities whose rows each use one shift.

    Each row is shifted once, by ``resp @ shift``, and the statistics are a few matrix
    products over (C, D) rows instead of :func:`chunk_stats`' (C, K, D) differences.
    Equal to :func:`chunk_stats` when every row's responsibilities sit on components
    that share one shift: hard assignments (k-means labels, seed rows), or soft ones
    around a shift common to all components. The initialisers are such cases.

    Args:
        X: (C, D) rows; resp: (C, K) responsibilities; sample_weight: (C,);
        shift: (K, D); covariance_type: the covariance model's name.

    Returns:
        :class:`Stats` of the chunk, around ``shift``, with no log-likelihood.
    """
    resp_w = resp * sample_weight[:, None]
    diff = X - resp @ shift
    s_x, s_xx = covariance_model(covariance_type).row_statistics(diff, resp_w)
    return Stats(
        n_k=jnp.sum(resp_w, axis=0),
        s_x=s_x,
        s_xx=s_xx,
        shift=shift,
        log_lik_sum=jnp.zeros((), X.dtype),
        n=jnp.sum(sample_weight),
        covariance_type=covariance_type,
    )
