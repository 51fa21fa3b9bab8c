"""Imputation: missing entries filled from a fitted mixture, given each row's observed ones.

Under the mixture, a row's missing entries given its observed ones follow a mixture of
Gaussians: component k has posterior probability ``resp_k`` (from the observed entries
only) and, within it, the Gaussian conditional ``N(b_k, B_k)`` with
``b_k = mu_m + Sigma_mo Sigma_oo^-1 (x_o - mu_o)`` and
``B_k = Sigma_mm - Sigma_mo Sigma_oo^-1 Sigma_om`` (see :mod:`jaxgmm._incomplete`).
``method="mean"`` returns the conditional expectation ``sum_k resp_k b_k``;
``method="sample"`` draws a component, then the entries from its conditional.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._buckets import row_layout
from jaxgmm._chunking import chunk_size_for
from jaxgmm._incomplete import conditional_distribution
from jaxgmm._jit import jit
from jaxgmm._keys import as_key
from jaxgmm._validation import check_data_array, check_key, check_params, is_traced

IMPUTE_METHODS = ("mean", "sample")


def _draw(key, index, resp, b, B, mask):
    """One draw per row from its conditional mixture; resp (C, K), b (C, K, D), B.

    Row i uses ``fold_in(key, index_i)``: draws do not depend on the chunking.
    """
    n_rows, n_features = mask.shape
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    split = jax.vmap(jax.random.split)(row_keys)  # (C, 2) keys
    labels = jax.vmap(jax.random.categorical)(split[:, 0], jnp.log(resp))  # (C,)
    rows = jnp.arange(n_rows)
    mean = b[rows, labels]
    z = jax.vmap(lambda k: jax.random.normal(k, (n_features,), mean.dtype))(split[:, 1])
    cov = B[rows, labels]
    if cov.ndim == 2:  # variances
        return mean + jnp.sqrt(jnp.maximum(cov, 0.0)) * z
    # Zero on the observed block: factor the missing block, with an identity elsewhere.
    m = mask.astype(mean.dtype)
    missing = 1.0 - m
    padded = cov * (missing[:, :, None] * missing[:, None, :]) + m[:, :, None] * jnp.eye(
        n_features, dtype=mean.dtype
    )
    return mean + jnp.einsum("cde,ce->cd", jnp.linalg.cholesky(padded), z)


@jit(data_argnum=1, static_argnames=("method", "chunk_size"))
def _impute_program(params, X, mask, key, *, method: str, chunk_size: int):
    """Imputed (N, D) rows, chunk by chunk; X has finite values on missing entries."""

    def split(a):
        return a.reshape((-1, chunk_size) + a.shape[1:])

    def one_chunk(chunk):
        x, m, index = chunk
        resp, b, B = conditional_distribution(x, m, params)
        if method == "mean":
            fill = jnp.einsum("ck,ckd->cd", resp, b)
        else:
            fill = _draw(key, index, resp, b, B, m)
        return jnp.where(m, x, fill)

    index = jnp.arange(X.shape[0], dtype=jnp.int32)
    with jax.default_matmul_precision("highest"):
        out = jax.lax.map(one_chunk, (split(X), split(mask), split(index)))
    return out.reshape(X.shape)


def impute(params, X, *, method: str = "mean", key=None) -> np.ndarray:
    """Fill the missing (NaN) entries of X from a fitted mixture.

    Each row's missing entries are predicted from its observed ones under the mixture
    (exactly: component probabilities from the observed entries' marginal density,
    then each component's Gaussian conditional). Observed entries are returned
    unchanged; a row with no observed entry gets the mixture's mean (``"mean"``) or a
    draw from the mixture (``"sample"``).

    Args:
        params: fitted :class:`GaussianMixtureParams` (or a :class:`FitResult`), e.g.
            from ``jaxgmm.fit(X, K, nan_policy="marginalize")``.
        X: (N, D) data with NaN for missing entries.
        method: ``"mean"`` (the conditional expectation ``E[x_m | x_o]``, the
            least-squares fill) or ``"sample"`` (one draw from the conditional
            distribution: multiple imputation).
        key: an int seed or a JAX PRNG key for ``"sample"`` (None: seed 0; unused by
            ``"mean"``). Draws depend on the key and the rows, not on how they are
            chunked.

    Returns:
        (N, D) numpy array in the parameters' dtype, NaN-free.

    Raises:
        TypeError: X or the parameters are traced (inside ``jax.jit``, ``jax.vmap`` or
            ``jax.grad``): imputation finds the missing entries on the host.
    """
    if any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves((params, X))):
        raise TypeError(
            "jaxgmm.impute runs on concrete arrays: it finds the NaN entries on the host "
            "and returns a NumPy array, so it cannot be called inside jax.jit, jax.vmap "
            "or jax.grad. Call it outside the transformation."
        )
    params = check_params(params)
    if not isinstance(method, str) or method not in IMPUTE_METHODS:
        raise ValueError(
            f"method must be one of {IMPUTE_METHODS}, got {method!r}: 'mean' fills the "
            "conditional expectation, 'sample' one draw from the conditional distribution."
        )
    if key is None:
        key = 0
    check_key(key)
    X = np.asarray(check_data_array(X, n_features=params.n_features, allow_nan=True))
    dtype = np.dtype(params.means.dtype)
    mask = ~np.isnan(X) if np.issubdtype(X.dtype, np.inexact) else np.ones(X.shape, bool)
    if mask.all():
        return X.astype(dtype)
    n_samples, n_features = X.shape
    max_chunk = chunk_size_for(
        2**62, params.n_components, n_features, params.covariance_type, incomplete=True
    )
    # Chunk rows are bounded by the draws' layout; padding rows are observed zeros.
    n_rows, chunk = row_layout(n_samples, max_chunk)
    pad = n_rows - n_samples
    filled = np.where(mask, X, 0.0).astype(dtype)
    if pad:
        filled = np.concatenate([filled, np.zeros((pad, n_features), dtype)])
        mask = np.concatenate([mask, np.ones((pad, n_features), bool)])
    out = _impute_program(
        params, jnp.asarray(filled), jnp.asarray(mask), as_key(key), method=method, chunk_size=chunk
    )
    return np.asarray(out)[:n_samples]
