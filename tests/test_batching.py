"""Batches (restarts, fit_many) run as consecutive vmapped groups: same results as vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
import jaxgmm._batching as batching
from jaxgmm._batching import cond_any, group_size, map_in_groups
from jaxgmm._chunking import CHUNK_ELEMENTS


@pytest.mark.parametrize("n_members", [1, 2, 7, 255, 1000])
@pytest.mark.parametrize("elements", [1, 3_000, 16_000, CHUNK_ELEMENTS, 4 * CHUNK_ELEMENTS])
def test_group_size_fits_the_budget_with_little_padding(n_members, elements):
    size = group_size(n_members, elements)
    assert 1 <= size <= n_members
    if size > 1:  # a group of one is allowed to exceed the budget, nothing else is
        assert size * elements <= CHUNK_ELEMENTS
    n_groups = -(-n_members // size)
    # As few groups as the budget allows, and padding below one member per group.
    assert n_groups == -(-n_members // max(1, min(n_members, CHUNK_ELEMENTS // elements)))
    assert n_groups * size - n_members < n_groups


@pytest.mark.parametrize("elements", [1, CHUNK_ELEMENTS // 3, CHUNK_ELEMENTS])
def test_map_in_groups_equals_vmap(elements):
    # 10 members in groups of 1, 3 (padded to 12) or all at once.
    keys = jax.random.split(jax.random.key(3), 10)
    x = jnp.arange(40.0).reshape(10, 4)

    def member(args):
        key, row = args
        return {"draw": jax.random.normal(key, (3,)) + jnp.sum(row), "row": row * 2.0}

    grouped = map_in_groups(member, (keys, x), elements)
    plain = jax.vmap(member)((keys, x))
    assert grouped["draw"].shape == (10, 3)
    np.testing.assert_allclose(grouped["draw"], plain["draw"], rtol=1e-14)
    np.testing.assert_array_equal(grouped["row"], plain["row"])


def _blobs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 2))


def test_restarts_in_small_groups_match_one_group(monkeypatch):
    X = _blobs(200, 0)
    one_group = jaxgmm.fit(X, 3, n_init=7, key=5, tol=1e-6)
    # A tiny budget forces groups of one restart each (6 restarts besides restart 0).
    monkeypatch.setattr(batching, "CHUNK_ELEMENTS", 1)
    jax.clear_caches()
    grouped = jaxgmm.fit(X, 3, n_init=7, key=5, tol=1e-6)
    jax.clear_caches()
    np.testing.assert_allclose(
        grouped.restart_lower_bounds, one_group.restart_lower_bounds, rtol=1e-10
    )
    np.testing.assert_allclose(grouped.params.means, one_group.params.means, rtol=1e-8)


def test_fit_many_in_groups_equals_separate_fits(monkeypatch):
    data = np.stack([_blobs(90, seed) for seed in range(5)])
    monkeypatch.setattr(batching, "CHUNK_ELEMENTS", 2 * 90 * 3 * 2)  # groups of 2 (+1 pad)
    jax.clear_caches()
    many = jaxgmm.fit_many(data, 3, key=11, max_iter=50)
    jax.clear_caches()
    for b in range(5):
        single = jaxgmm.fit(data[b], 3, key=jax.random.fold_in(jax.random.key(11), b), max_iter=50)
        np.testing.assert_allclose(many.params.means[b], single.params.means, rtol=1e-8)
        np.testing.assert_allclose(float(many.lower_bound[b]), float(single.lower_bound))
        assert int(many.n_iter[b]) == int(single.n_iter)


def test_grouped_restarts_with_zero_iterations(monkeypatch):
    # max_iter = 0 gives zero-size history arrays; grouping must still reassemble them.
    monkeypatch.setattr(batching, "CHUNK_ELEMENTS", 1)
    jax.clear_caches()
    result = jaxgmm.fit(_blobs(60, 1), 3, n_init=5, max_iter=0)
    jax.clear_caches()
    assert result.history.shape == (0,)
    assert result.restart_lower_bounds.shape == (5,)
    assert int(result.n_iter) == 0


@pytest.mark.parametrize("n_rows", [50, 1024])
def test_chunk_products_are_products_for_one_fit_and_sums_per_group_member(n_rows):
    # _dot_chunk: a matrix product for a single fit; one fused sum per column for the
    # members of a vmapped group with short chunks (jaxgmm._group_trace), a product
    # again from GROUP_PRODUCT_MIN_ROWS rows. All equal a NumPy product.
    from jaxgmm._covariance import GROUP_PRODUCT_MIN_ROWS, _dot_chunk

    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 6, n_rows))
    b = rng.normal(size=(3, n_rows, 3))
    expected = np.einsum("brc,bcf->brf", a, b)

    def one(args):
        return _dot_chunk(*args)

    single = jax.jit(one).lower((a[0], b[0])).as_text()
    grouped_fn = jax.jit(lambda a, b: batching.map_groups(one, (a, b)))
    grouped = grouped_fn.lower(a, b).as_text()
    # float64 throughout (tests/conftest.py enables x64).
    np.testing.assert_allclose(jax.jit(one)((a[0], b[0])), expected[0], rtol=1e-12)
    np.testing.assert_allclose(grouped_fn(a, b), expected, rtol=1e-12)
    assert "dot_general" in single
    assert ("dot_general" in grouped) == (n_rows >= GROUP_PRODUCT_MIN_ROWS)


def test_cond_any_under_vmap_runs_only_the_branches_its_members_take():
    """Batched cond_any: each member gets its own branch's value, and a branch that no
    member takes does not run (all true: true_fn alone; none: false_fn alone)."""
    ran = set()

    def true_fn(x):
        jax.debug.callback(lambda: ran.add("true"))
        return 2.0 * x

    def false_fn(x):
        jax.debug.callback(lambda: ran.add("false"))
        return x - 1.0

    batched = jax.jit(jax.vmap(lambda x: cond_any(x > 0, true_fn, false_fn, x)))
    for values, expected in [
        ([1.0, 2.0, 3.0], {"true"}),
        ([-1.0, -2.0, -3.0], {"false"}),
        ([1.0, -2.0, 3.0], {"true", "false"}),
    ]:
        ran.clear()
        x = np.array(values)
        out = batched(jnp.asarray(x))
        jax.effects_barrier()
        np.testing.assert_array_equal(out, np.where(x > 0, 2.0 * x, x - 1.0))
        assert ran == expected
