"""fit(..., progress=True): a bar fed from inside the compiled loop, same result."""

import numpy as np
import pytest
from tqdm import tqdm

import jaxgmm
from jaxgmm import _fit_progress


@pytest.fixture
def closed_bars(monkeypatch):
    """Record (description, final count, total) of every bar jaxgmm closes."""
    closed = []

    class RecordingBar(tqdm):
        def close(self):
            if not self.disable:
                closed.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(_fit_progress, "tqdm", RecordingBar)
    return closed


def test_progress_bar_reports_iterations_and_changes_nothing(capsys, closed_bars):
    X = np.random.default_rng(0).normal(size=(200, 2))
    X[:80] += 4
    quiet = jaxgmm.fit(X, 2, max_iter=30, tol=0.0, key=1)
    assert capsys.readouterr().err == ""
    assert closed_bars == []
    shown = jaxgmm.fit(X, 2, max_iter=30, tol=0.0, key=1, progress=True)
    assert "EM fit, K=2" in capsys.readouterr().err
    assert closed_bars == [("EM fit, K=2", 30, 30)]
    np.testing.assert_array_equal(shown.params.means, quiet.params.means)
    assert int(shown.n_iter) == int(quiet.n_iter) == 30


def test_fit_many_shows_one_bar(closed_bars):
    X = np.random.default_rng(1).normal(size=(3, 50, 2))
    jaxgmm.fit_many(X, 2, max_iter=5, tol=0.0, progress=True)
    assert closed_bars == [("EM fit of 3 models, K=2", 5, 5)]
