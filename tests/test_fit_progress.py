"""fit(..., progress=True): a bar fed from inside the compiled loop, same result."""

import numpy as np

import jaxgmm


def test_progress_bar_reports_iterations_and_changes_nothing(capsys):
    X = np.random.default_rng(0).normal(size=(200, 2))
    X[:80] += 4
    quiet = jaxgmm.fit(X, 2, max_iter=30, tol=0.0, key=1)
    assert capsys.readouterr().err == ""
    shown = jaxgmm.fit(X, 2, max_iter=30, tol=0.0, key=1, progress=True)
    err = capsys.readouterr().err
    assert "EM fit, K=2" in err
    assert "30/30" in err  # the bar reached the last iteration
    np.testing.assert_array_equal(shown.params.means, quiet.params.means)
    assert int(shown.n_iter) == int(quiet.n_iter) == 30


def test_fit_many_shows_one_bar(capsys):
    X = np.random.default_rng(1).normal(size=(3, 50, 2))
    jaxgmm.fit_many(X, 2, max_iter=5, tol=0.0, progress=True)
    err = capsys.readouterr().err
    assert "EM fit of 3 models" in err
    assert "EM fit, K=2" not in err
