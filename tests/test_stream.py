"""``jaxgmm.fit_stream``: exact EM over data read chunk by chunk.

Every test uses D = 3, K = 3 and 1200 rows read in chunks of 500, so the compiled
per-chunk programs are shared between tests. The reference is ``jaxgmm.fit`` on the
same rows in memory, from the same initial parameters (float64).
"""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxgmm
import jaxgmm._stream
from jaxgmm import Status

K = 3
CHUNK = 500
ROOT = Path(__file__).resolve().parents[1]


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 2.0]])
    scales = (1.0, 0.7, 1.3)
    X = np.concatenate(
        [rng.normal(size=(400, 3)) * s + c for c, s in zip(centres, scales, strict=True)]
    )
    return X[rng.permutation(len(X))]


X = _data()


@pytest.fixture(scope="module")
def npy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "x.npy"
    np.save(path, X)
    return path


def _user_start(covariance_type="full"):
    """Initial parameters away from the optimum (the same for fit and fit_stream)."""
    means = X[[0, 1, 2]] + 0.5
    precisions = {
        "full": np.stack([np.eye(3) * (1 + k) for k in range(K)]),
        "diag": np.ones((K, 3)),
    }[covariance_type]
    return dict(weights_init=np.full(K, 1 / K), means_init=means, precisions_init=precisions)


def assert_same_fit(a, b, rtol=1e-9) -> None:
    """Every leaf of two FitResults equal to ``rtol`` relative (NaN where NaN)."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.nanmax(np.abs(y)))


def _chunks_of(sizes, X=X, weights=None):
    """A callable source yielding X in chunks of the given sizes."""

    def make():
        start = 0
        for size in sizes:
            rows = X[start : start + size]
            yield rows if weights is None else (rows, weights[start : start + size])
            start += size

    return make


# ------------------------------------------------------------------ same as fit


def test_matches_fit_from_user_start(npy):
    """Full covariances, every initial parameter given: fit's answer to 1e-9 (float64)."""
    start = _user_start("full")
    expected = jaxgmm.fit(X, K, tol=1e-6, **start)
    result = jaxgmm.fit_stream(npy, K, tol=1e-6, chunk_rows=CHUNK, **start)
    assert int(result.n_iter) == int(expected.n_iter) > 5
    assert int(result.status) == int(expected.status)
    assert_same_fit(result, expected)


@pytest.fixture(scope="module")
def diag_optimum():
    """fit's diag result from k-means weights and variances and the given means."""
    means = X[[0, 1, 2]] + 0.5
    return jaxgmm.fit(X, K, covariance_type="diag", means_init=means, key=3)


def test_matches_fit_kmeans_init_on_whole_sample(npy, diag_optimum):
    """diag, only means_init given: the k-means init runs on the sample, which holds all
    1200 rows here, so the whole fit (weights and variances from k-means) is fit's."""
    means = X[[0, 1, 2]] + 0.5
    expected = diag_optimum
    result = jaxgmm.fit_stream(
        npy, K, covariance_type="diag", means_init=means, key=3, chunk_rows=CHUNK
    )
    assert_same_fit(result, expected)


def _random_start(key: int, restart: int, reg_covar=1e-6) -> dict:
    """A restart's ``init="random"`` parameters, in NumPy: uniform responsibilities
    from the per-row keys fold_in(fold_in(key, restart), row), then a diag M-step."""
    restart_key = jax.random.fold_in(jax.random.key(key), restart)
    rows = np.arange(len(X))
    u = np.asarray(
        jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(restart_key, i), (K,)))(rows)
    )
    resp = u / u.sum(axis=1, keepdims=True)
    n_k = resp.sum(axis=0)
    means = resp.T @ X / n_k[:, None]
    variances = np.stack([resp[:, k] @ (X - means[k]) ** 2 / n_k[k] for k in range(K)]) + reg_covar
    return dict(weights_init=n_k / n_k.sum(), means_init=means, precisions_init=1 / variances)


def test_restarts_share_passes():
    """n_init = 2 random inits (per-row draws, as fit's): each restart is fit's from its
    own start (computed here in NumPy), the better one is returned, and every pass
    serves both restarts: passes = scan + init + one per iteration of the longest."""
    calls = []
    source = _chunks_of([CHUNK, CHUNK, 200])

    def counted():
        calls.append(1)
        return source()

    result = jaxgmm.fit_stream(
        counted, K, init="random", n_init=2, key=5, covariance_type="diag", chunk_rows=CHUNK
    )
    singles = [jaxgmm.fit(X, K, covariance_type="diag", **_random_start(5, r)) for r in range(2)]
    np.testing.assert_allclose(
        result.restart_lower_bounds, [float(f.lower_bound) for f in singles], rtol=1e-9
    )
    best = singles[int(np.argmax([float(f.lower_bound) for f in singles]))]
    assert_same_fit(
        dataclasses.replace(result, restart_lower_bounds=best.restart_lower_bounds), best
    )
    # One extra call peeks at the first chunk (D of a callable source); separate
    # restarts would need up to 2 x 100 EM passes.
    assert 1 + 2 + int(result.n_iter) <= len(calls) <= 1 + 2 + 100


def test_sources_agree(npy):
    """A .npy path, a memmap, and a callable with uneven chunks give one result; weights
    yielded with the chunks match fit's sample_weight."""
    start = _user_start("diag")
    options = dict(covariance_type="diag", chunk_rows=CHUNK, **start)
    from_path = jaxgmm.fit_stream(npy, K, **options)
    from_memmap = jaxgmm.fit_stream(np.load(npy, mmap_mode="r"), K, **options)
    from_callable = jaxgmm.fit_stream(_chunks_of([333, 700, 167]), K, **options)
    assert_same_fit(from_memmap, from_path, rtol=1e-12)
    assert_same_fit(from_callable, from_path, rtol=1e-12)
    weights = np.random.default_rng(1).uniform(0.2, 2.0, len(X))
    expected = jaxgmm.fit(X, K, covariance_type="diag", sample_weight=weights, **start)
    weighted = jaxgmm.fit_stream(_chunks_of([333, 700, 167], weights=weights), K, **options)
    assert_same_fit(weighted, expected)
    by_argument = jaxgmm.fit_stream(npy, K, sample_weight=weights, **options)
    assert_same_fit(by_argument, expected)


@pytest.fixture(scope="module")
def diag_five():
    """fit's diag result after 5 iterations from the user start."""
    return jaxgmm.fit(X, K, covariance_type="diag", max_iter=5, tol=0.0, **_user_start("diag"))


def test_exact_moment_pass(npy, monkeypatch, diag_five):
    """When the fused moments lose precision (forced here for every iteration), an extra
    exact pass recomputes them, as fit does: still fit's answer (which never needed it)."""
    calls = []

    def always_lost(stats, params):
        calls.append(1)
        return jax.numpy.asarray(True)

    monkeypatch.setattr(jaxgmm._stream, "lost_precision", always_lost)
    jaxgmm._stream._em_finish.clear_cache()  # trace it again with the patch
    start = _user_start("diag")
    expected = diag_five
    result = jaxgmm.fit_stream(
        npy, K, covariance_type="diag", chunk_rows=CHUNK, max_iter=5, tol=0.0, **start
    )
    jaxgmm._stream._em_finish.clear_cache()
    assert calls  # traced with the patch
    assert_same_fit(result, expected)


def test_sampled_init_reaches_fits_optimum(npy, monkeypatch, diag_optimum):
    """With a 300-row sample, k-means (on the sample, then Lloyd over the stream) and
    k-means++ seeds from the sample reach fit's optimum on these separated clusters."""
    monkeypatch.setattr(jaxgmm._stream, "sample_size", lambda n_rows, n_components: 300)
    expected = diag_optimum
    for init in ("kmeans", "k-means++"):
        result = jaxgmm.fit_stream(npy, K, covariance_type="diag", init=init, chunk_rows=CHUNK)
        assert abs(float(result.lower_bound) - float(expected.lower_bound)) < 1e-3, init
        order = np.argsort(np.asarray(result.params.means)[:, 0])
        ref = np.sort(np.asarray(expected.params.means)[:, 0])
        np.testing.assert_allclose(np.asarray(result.params.means)[order, 0], ref, atol=0.05)


# ------------------------------------------------------------------- bad input


def test_errors_name_row_or_chunk(tmp_path):
    bad = X.copy()
    bad[777, 2] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, bad)
    with pytest.raises(ValueError, match=r"global row 777, column 2.*nan_policy='omit'"):
        jaxgmm.fit_stream(path, K, chunk_rows=CHUNK)

    def widths():
        yield X[:500]
        yield X[500:, :2]

    with pytest.raises(ValueError, match=r"chunk 1 .*global rows from 500.* 2 columns"):
        jaxgmm.fit_stream(widths, K)

    with pytest.raises(ValueError, match="no rows"):
        jaxgmm.fit_stream(lambda: iter([]), K)

    np.save(tmp_path / "short.npy", X)
    with open(tmp_path / "short.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "short.npy") - 100)
    with pytest.raises(ValueError, match=r"truncated.*1200 rows.*1195 complete rows"):
        jaxgmm.fit_stream(tmp_path / "short.npy", K)

    np.save(tmp_path / "complex.npy", X.astype(np.complex128))
    with pytest.raises(TypeError, match="complex128.*real numbers"):
        jaxgmm.fit_stream(tmp_path / "complex.npy", K)

    np.save(tmp_path / "flat.npy", X[:, 0])
    with pytest.raises(ValueError, match=r"shape \(1200,\).*\(N, D\)"):
        jaxgmm.fit_stream(tmp_path / "flat.npy", K)

    with pytest.raises(FileNotFoundError, match="no such file"):
        jaxgmm.fit_stream(tmp_path / "missing.npy", K)

    with pytest.raises(ValueError, match="nan_policy must be one of"):
        jaxgmm.fit_stream(path, K, nan_policy="ignore")


def test_omit_drops_nan_rows_as_fit_does(tmp_path):
    """nan_policy="omit": the fit of the data without those rows, a warning with the count."""
    bad = X.copy()
    bad[[3, 777, 1100], [0, 2, 1]] = np.nan
    kept = np.delete(X, [3, 777, 1100], axis=0)
    weights = np.linspace(0.5, 1.5, len(X))
    start = _user_start("diag")
    expected = jaxgmm.fit(
        kept, K, covariance_type="diag", sample_weight=np.delete(weights, [3, 777, 1100]), **start
    )
    path = tmp_path / "nan.npy"
    np.save(path, bad)
    with pytest.warns(UserWarning, match="dropped 3 of 1200 rows"):
        result = jaxgmm.fit_stream(
            path,
            K,
            covariance_type="diag",
            sample_weight=weights,
            chunk_rows=CHUNK,
            nan_policy="omit",
            **start,
        )
    assert int(result.n_iter) == int(expected.n_iter)
    assert_same_fit(result, expected)

    bad[500, 1] = np.inf  # inf is still an error, named by its row
    with pytest.raises(ValueError, match=r"global row 500, column 1 .*accepts NaN, not inf"):
        jaxgmm.fit_stream(_chunks_of([400, 400, 400], bad), K, nan_policy="omit")
    with pytest.raises(ValueError, match=r"Every row of the source \(1200\) contains NaN"):
        jaxgmm.fit_stream(lambda: iter([np.full((1200, 3), np.nan)]), K, nan_policy="omit")


def test_marginalize_matches_fit(tmp_path, monkeypatch):
    """nan_policy="marginalize": fit's exact EM for incomplete data, pass by pass (1e-9)."""
    rng = np.random.default_rng(7)
    holes = X.copy()
    holes[rng.random(X.shape) < 0.15] = np.nan
    holes[5] = np.nan  # a row with nothing observed: weight 0, as in fit
    path = tmp_path / "holes.npy"
    np.save(path, holes)
    start = _user_start("full")
    expected = jaxgmm.fit(holes, K, nan_policy="marginalize", tol=1e-6, **start)
    result = jaxgmm.fit_stream(
        path, K, nan_policy="marginalize", tol=1e-6, chunk_rows=CHUNK, **start
    )
    assert int(result.n_iter) == int(expected.n_iter) > 5
    assert_same_fit(result, expected)
    # k-means on masked distances: the sample holds every row, so fit's initialisation;
    # then with a 300-row sample, Lloyd passes over the stream reach the same optimum.
    expected = jaxgmm.fit(holes, K, covariance_type="diag", nan_policy="marginalize", key=3)
    result = jaxgmm.fit_stream(
        path, K, covariance_type="diag", nan_policy="marginalize", chunk_rows=CHUNK, key=3
    )
    assert_same_fit(result, expected)
    monkeypatch.setattr(jaxgmm._stream, "sample_size", lambda n_rows, n_components: 300)
    sampled = jaxgmm.fit_stream(
        path, K, covariance_type="diag", nan_policy="marginalize", chunk_rows=CHUNK, key=3
    )
    np.testing.assert_allclose(float(sampled.lower_bound), float(expected.lower_bound), rtol=1e-6)

    holes[:, 1] = np.nan
    np.save(path, holes)
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] of the source have no observed"):
        jaxgmm.fit_stream(path, K, nan_policy="marginalize")


def test_source_changing_between_passes_is_caught():
    start = _user_start("full")
    calls = []

    def shrinking():
        calls.append(1)
        n = 1200 if len(calls) < 4 else 1100
        return iter([X[:CHUNK], X[CHUNK:n]])

    with pytest.raises(ValueError, match=r"1100 rows in pass 3, but 1200 in the first"):
        jaxgmm.fit_stream(shrinking, K, chunk_rows=CHUNK, **start)

    calls.clear()

    def edited():
        calls.append(1)
        first = X[:CHUNK] + (len(calls) >= 4)
        return iter([first, X[CHUNK:]])

    with pytest.raises(ValueError, match="first chunk of the source changed"):
        jaxgmm.fit_stream(edited, K, chunk_rows=CHUNK, **start)


# ---------------------------------------------------- interrupts and checkpoints


def test_interrupt_between_chunks(diag_five):
    """Ctrl-C while a pass reads: "return" gives the last finished iteration's result
    (INTERRUPTED), "raise" raises with n_iter set."""
    start = _user_start("diag")
    calls = []

    def interrupted():
        calls.append(1)
        yield X[:CHUNK]
        if len(calls) == 8:  # calls: a peek at D, the scan, then EM passes: the 6th
            raise KeyboardInterrupt
        yield X[CHUNK:]

    options = dict(covariance_type="diag", chunk_rows=CHUNK, tol=0.0, **start)
    result = jaxgmm.fit_stream(interrupted, K, on_interrupt="return", **options)
    assert int(result.status) == Status.INTERRUPTED
    assert int(result.n_iter) == 5
    np.testing.assert_allclose(result.params.means, diag_five.params.means, rtol=1e-9)
    np.testing.assert_allclose(result.history[:5], diag_five.history, rtol=1e-9)
    calls.clear()
    with pytest.raises(KeyboardInterrupt) as info:
        jaxgmm.fit_stream(interrupted, K, **options)
    assert info.value.n_iter == 5


def _slow_source(path, delay):
    """A callable source over the .npy file, sleeping ``delay`` s per chunk."""
    rows = np.load(path)

    def chunks():
        for start in range(0, len(rows), CHUNK):
            time.sleep(delay)
            yield rows[start : start + CHUNK]

    return chunks


def test_checkpoint_resumes_after_kill(npy, tmp_path):
    """A fit killed (SIGKILL) after it wrote its checkpoint, run again, ends with the
    uninterrupted fit's result."""
    checkpoint = tmp_path / "fit.ckpt.npz"
    options = dict(covariance_type="diag", chunk_rows=CHUNK, tol=0.0, **_user_start("diag"))
    script = textwrap.dedent(
        f"""
        import sys
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np
        import jaxgmm
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_stream import _slow_source, _user_start
        options = dict(covariance_type="diag", chunk_rows={CHUNK}, tol=0.0,
                       **_user_start("diag"))
        jaxgmm.fit_stream(_slow_source({str(npy)!r}, 0.02), {K},
                          checkpoint={str(checkpoint)!r}, **options)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        n_iter = 0
        while time.monotonic() < deadline and child.poll() is None:
            if checkpoint.exists():
                try:
                    with np.load(checkpoint) as saved:
                        n_iter = int(np.max(saved["leaf5"]))  # LoopState.n_iter
                except (OSError, ValueError, KeyError):
                    n_iter = 0
                if n_iter >= 2:
                    break
            time.sleep(0.02)
        assert child.poll() is None, "the fit ended before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert 2 <= n_iter < 100
    source = _slow_source(npy, 0.0)
    resumed = jaxgmm.fit_stream(source, K, checkpoint=checkpoint, **options)
    uninterrupted = jaxgmm.fit_stream(source, K, **options)
    assert int(resumed.n_iter) == 100
    assert_same_fit(resumed, uninterrupted, rtol=1e-12)
    with pytest.raises(ValueError, match="different fit"):
        jaxgmm.fit_stream(source, K, checkpoint=checkpoint, **dict(options, tol=1e-3))


def test_progress_bars(npy, capsys):
    start = _user_start("diag")
    jaxgmm.fit_stream(npy, K, covariance_type="diag", chunk_rows=CHUNK, progress=True, **start)
    err = capsys.readouterr().err
    assert "rows" in err and "EM" in err


# ---------------------------------------------------------------- command line


def test_command_line_stream(npy, tmp_path):
    """``jaxgmm fit FILE --stream -k K``: fit_stream's fit, summarised and saved."""
    import contextlib
    import io

    from jaxgmm.cli import main

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        return code, out.getvalue(), err.getvalue()

    model = tmp_path / "model.npz"
    code, out, err = run(
        "fit", npy, "--stream", "-k", K, "--chunk-rows", CHUNK, "-c", "diag", "-o", model
    )
    assert code == 0, err
    expected = jaxgmm.fit_stream(npy, K, chunk_rows=CHUNK, covariance_type="diag")
    assert "Streaming 1200 rows x 3 columns" in out
    assert f"{float(expected.lower_bound):.4f} per point" in out
    saved = jaxgmm.load(model)
    np.testing.assert_allclose(saved.means, expected.params.means, rtol=1e-12)
    code, _, err = run("fit", npy, "--stream")
    assert code == 1 and "give -k K" in err
    csv = tmp_path / "x.csv"
    np.savetxt(csv, X[:10], delimiter=",")
    code, _, err = run("fit", csv, "--stream", "-k", K)
    assert code == 1 and "--stream reads .npy files" in err
    # Missing values: 5 NaN in 3 rows, one of them empty.
    holes = X.copy()
    holes[5, 0] = holes[17, 1] = np.nan
    holes[30] = np.nan
    with_nan = tmp_path / "holes.npy"
    np.save(with_nan, holes)
    n = holes.shape[0]
    for policy, rows_scored in (("omit", n - 3), ("marginalize", n - 1)):
        code, out, err = run(
            "fit", with_nan, "--stream", "-k", K, "--chunk-rows", CHUNK, "--nan-policy", policy
        )
        assert code == 0, err
        assert f"5 missing values in 3 rows (--nan-policy {policy}" in out
        expected = jaxgmm.fit_stream(with_nan, K, chunk_rows=CHUNK, nan_policy=policy)
        n_points = n - 3 if policy == "omit" else n  # as the in-memory command counts them
        per_point = float(expected.lower_bound) * rows_scored / n_points
        assert f"{per_point:.4f} per point" in out


def test_chunks_reach_the_device_without_a_copy(npy):
    """Chunks are 64-byte aligned, so device_put on the CPU uses their memory as is."""
    from jaxgmm._sources import ChunkStream, open_source

    stream = ChunkStream(open_source(npy, CHUNK, None), CHUNK)
    chunk = next(iter(stream.chunks(np.dtype(np.float64))))
    assert chunk.x.ctypes.data % 64 == 0 and chunk.weight.ctypes.data % 64 == 0
    if jax.default_backend() == "cpu":
        assert jax.device_put(chunk.x).unsafe_buffer_pointer() == chunk.x.ctypes.data
