"""Big data are fitted unpadded: the last chunk overlaps the one before it.

A padded copy would double the memory of data that fill most of it (W4). These tests
lower the size threshold so that small data take the same path, and compare with the
padded fit of the same rows.
"""

import jax
import numpy as np
import pytest

import jaxgmm
import jaxgmm._buckets
import jaxgmm._fit
from jaxgmm._rows import IN_MEMORY, overlapping_layout, split_rows

N_ROWS, CHUNK = 9_003, 512  # 18 chunks, the last one overlapping by 213 rows


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(5_003, 3)), rng.normal(size=(4_000, 3)) + 4.0])
    return X, rng.uniform(0.5, 2.0, size=N_ROWS)


def _fit_both(monkeypatch, X, **options):
    """(padded fit, unpadded fit, number of unpadded layouts made)."""
    # float64 fits: the suite runs with x64 enabled (conftest).
    monkeypatch.setattr(jaxgmm._buckets, "COPY_FREE_BYTES", 1 << 62)
    padded = jaxgmm.fit(X, 3, **options)
    made = []

    def spy(*args):
        made.append(args)
        return overlapping_layout(*args)

    monkeypatch.setattr(jaxgmm._buckets, "COPY_FREE_BYTES", 0)
    monkeypatch.setattr(jaxgmm._fit, "overlapping_layout", spy)
    unpadded = jaxgmm.fit(X, 3, **options)
    return padded, unpadded, len(made)


def _assert_same_fit(a, b):
    assert int(a.n_iter) == int(b.n_iter)
    np.testing.assert_allclose(float(a.lower_bound), float(b.lower_bound), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(a.history), np.asarray(b.history), rtol=1e-12)
    for name in ("weights", "means", "precisions_cholesky"):
        np.testing.assert_allclose(
            np.asarray(getattr(a.params, name)),
            np.asarray(getattr(b.params, name)),
            rtol=1e-10,
            atol=1e-12,
        )


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random_from_data", "random"])
def test_unpadded_fit_equals_padded_fit(monkeypatch, data, init):
    X, weight = data
    options = dict(sample_weight=weight, init=init, key=1, n_init=2, chunk_size=CHUNK)
    padded, unpadded, made = _fit_both(monkeypatch, X, max_iter=50, **options)
    assert made == 1
    _assert_same_fit(padded, unpadded)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_unpadded_fit_with_missing_values(monkeypatch, data, covariance_type):
    X, _ = data
    X = X.copy()
    X[np.random.default_rng(1).uniform(size=X.shape) < 0.1] = np.nan
    options = dict(nan_policy="marginalize", covariance_type=covariance_type, chunk_size=CHUNK)
    padded, unpadded, made = _fit_both(monkeypatch, X, max_iter=30, key=2, **options)
    assert made == 1
    _assert_same_fit(padded, unpadded)


def test_overlapping_rows_read_every_row_once(data):
    """Sums see each row once; positions map back to the caller's rows."""
    X, weight = data
    w, index = overlapping_layout(weight, N_ROWS, CHUNK)
    assert w.shape == index.shape == (18 * CHUNK,)
    # The last chunk is the last C rows; those also in the chunk before have weight 0.
    np.testing.assert_array_equal(index[-CHUNK:], np.arange(N_ROWS - CHUNK, N_ROWS))
    np.testing.assert_array_equal(np.sort(index[w > 0]), np.arange(N_ROWS))
    rows = split_rows(jax.numpy.asarray(X), w, index, CHUNK)
    assert rows.overlapping

    def chunk_sums(x, w, i):
        return w @ x, jax.numpy.sum(w * i.astype(w.dtype))

    total, index_total = IN_MEMORY.sum(chunk_sums, rows)
    np.testing.assert_allclose(np.asarray(total), weight @ X, rtol=1e-12)
    np.testing.assert_allclose(float(index_total), weight @ np.arange(N_ROWS), rtol=1e-12)
    positions = np.arange(w.shape[0])
    np.testing.assert_array_equal(np.asarray(rows.take(positions)), X[index])
    first_column = rows.map_chunks(lambda x: x[:, 0])
    np.testing.assert_array_equal(np.asarray(first_column), X[index, 0])


def test_rows_that_do_not_fit_the_chunks_are_refused(data):
    X, weight = data
    with pytest.raises(ValueError, match="do not fit"):
        split_rows(X[:100], weight[:1024], np.arange(1024), CHUNK)
