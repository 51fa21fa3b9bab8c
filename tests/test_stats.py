"""Statistics algebra: chunk statistics add up exactly, re-centring is exact, and the
covariance model is the only place that knows covariance-type names."""

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgmm._covariance import COVARIANCE_TYPES
from jaxgmm._stats import assigned_stats, chunk_stats

D, K = 3, 2


def _numpy_stats(X, resp, w, shift, covariance_type):
    """n_k, s_x, s_xx around ``shift`` written out in NumPy (float64)."""
    rw = resp * w[:, None]
    diff = X[:, None, :] - shift[None, :, :]  # (N, K, D)
    s_x = np.einsum("nk,nkd->kd", rw, diff)
    full = np.einsum("nk,nkd,nke->kde", rw, diff, diff)
    s_xx = {
        "full": full,
        "tied": full.sum(axis=0),
        "diag": np.einsum("kdd->kd", full),
        "spherical": np.einsum("kdd->k", full),
    }[covariance_type]
    return rw.sum(axis=0), s_x, s_xx


def _chunk(rng, n_rows):
    X = rng.normal(size=(n_rows, D)) * 3 + 5
    resp = rng.dirichlet(np.ones(K), size=n_rows)
    w = rng.uniform(0, 2, size=n_rows)
    return X, resp, w


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    # A few chunk sizes only: every new shape compiles the eager operations again.
    sizes=st.lists(st.sampled_from([1, 7, 16]), min_size=1, max_size=4),
    covariance_type=st.sampled_from(COVARIANCE_TYPES),
)
def test_sum_of_chunk_stats_is_the_stats_of_all_rows(seed, sizes, covariance_type):
    """Chunks taken around different shifts add up to the statistics of their union."""
    rng = np.random.default_rng(seed)
    chunks = [_chunk(rng, n) for n in sizes]
    total = None
    for X, resp, w in chunks:
        shift = rng.normal(size=(K, D)) * 4
        part = chunk_stats(
            jnp.asarray(X), jnp.asarray(resp), jnp.asarray(w), jnp.asarray(shift), covariance_type
        )
        total = part if total is None else total + part
    X, resp, w = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
    n_k, s_x, s_xx = _numpy_stats(X, resp, w, np.asarray(total.shift), covariance_type)
    np.testing.assert_allclose(total.n_k, n_k, rtol=1e-10)
    np.testing.assert_allclose(total.s_x, s_x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(total.s_xx, s_xx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(total.n, w.sum(), rtol=1e-12)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), covariance_type=st.sampled_from(COVARIANCE_TYPES))
def test_recentring_equals_statistics_taken_around_the_new_shift(seed, covariance_type):
    rng = np.random.default_rng(seed)
    X, resp, w = _chunk(rng, 50)
    old, new = rng.normal(size=(2, K, D)) * 10
    stats = chunk_stats(*map(jnp.asarray, (X, resp, w, old)), covariance_type).recentre(
        jnp.asarray(new)
    )
    n_k, s_x, s_xx = _numpy_stats(X, resp, w, new, covariance_type)
    np.testing.assert_array_equal(stats.shift, new)
    np.testing.assert_allclose(stats.n_k, n_k, rtol=1e-12)
    np.testing.assert_allclose(stats.s_x, s_x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.s_xx, s_xx, rtol=1e-9, atol=1e-9)


def test_recentring_onto_the_same_shift_changes_nothing():
    rng = np.random.default_rng(3)
    for covariance_type in COVARIANCE_TYPES:
        X, resp, w = _chunk(rng, 30)
        shift = jnp.asarray(rng.normal(size=(K, D)))
        stats = chunk_stats(*map(jnp.asarray, (X, resp, w)), shift, covariance_type)
        same = stats.recentre(shift)
        for name in ("n_k", "s_x", "s_xx"):
            np.testing.assert_array_equal(getattr(same, name), getattr(stats, name))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), covariance_type=st.sampled_from(COVARIANCE_TYPES))
def test_assigned_stats_equal_the_numpy_statistics(seed, covariance_type):
    """The initialisers' shortcut (one shift per row) is exact for hard assignments
    around distinct shifts (some rows unassigned, as for seed rows) and for soft
    responsibilities around one shift shared by all components."""
    rng = np.random.default_rng(seed)
    X, soft, w = _chunk(rng, 40)
    labels = rng.integers(-1, K, size=len(X))  # -1: a row assigned to no component
    hard = (labels[:, None] == np.arange(K)).astype(float)
    for resp, shift in (
        (hard, rng.normal(size=(K, D)) * 4),
        (soft, np.broadcast_to(rng.normal(size=D) * 4, (K, D))),
    ):
        stats = assigned_stats(*map(jnp.asarray, (X, resp, w, shift)), covariance_type)
        n_k, s_x, s_xx = _numpy_stats(X, resp, w, shift, covariance_type)
        np.testing.assert_allclose(stats.n_k, n_k, rtol=1e-12)
        np.testing.assert_allclose(stats.s_x, s_x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats.s_xx, s_xx, rtol=1e-9, atol=1e-9)


def test_no_covariance_type_string_is_compared_outside_the_covariance_module():
    """Per-type facts live in jaxgmm/_covariance.py (the CovarianceModel) only."""
    names = "|".join(COVARIANCE_TYPES)
    comparison = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    offenders = []
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("jaxgmm").glob("*.py")):
        if path.name == "_covariance.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if comparison.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
