"""Plots: the right artists with the right geometry, PNGs written, a clear missing-extra error."""

import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import jax.numpy as jnp  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

import jaxgmm  # noqa: E402
from jaxgmm import datasets, plot  # noqa: E402


def _axes():
    return Figure().add_subplot()


def _params(covariances, covariance_type, means, weights=None):
    """Hand-made parameters (precisions_cholesky is not used by the plots)."""
    covariances = jnp.asarray(np.asarray(covariances, dtype=np.float64))
    means = jnp.asarray(np.asarray(means, dtype=np.float64))
    k = means.shape[0]
    weights = jnp.asarray(np.full(k, 1.0 / k) if weights is None else np.asarray(weights))
    return jaxgmm.GaussianMixtureParams(
        weights=weights,
        means=means,
        covariances=covariances,
        precisions_cholesky=covariances,
        covariance_type=covariance_type,
    )


def test_full_covariances_of_every_type():
    means = np.zeros((2, 3))
    diag = _params([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "diag", means)
    np.testing.assert_array_equal(plot.full_covariances(diag)[1], np.diag([4.0, 5.0, 6.0]))
    spherical = _params([2.0, 3.0], "spherical", means)
    np.testing.assert_array_equal(plot.full_covariances(spherical)[0], 2.0 * np.eye(3))
    tied_cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    tied = plot.full_covariances(_params(tied_cov, "tied", means))
    assert tied.shape == (2, 3, 3)
    np.testing.assert_array_equal(tied[0], tied_cov)
    np.testing.assert_array_equal(tied[1], tied_cov)


def test_ellipse_geometry_matches_the_covariance():
    # Axis-aligned: variance 4 along x, 1 along y -> at 1 sd, width 4 and height 2.
    # Rotated: eigenvalues 9 and 1 along (1, 1)/sqrt(2) -> width 6, height 2, at 45 deg.
    rotation = np.array([[1.0, -1.0], [1.0, 1.0]]) / np.sqrt(2)
    rotated = rotation @ np.diag([9.0, 1.0]) @ rotation.T
    params = _params([np.diag([4.0, 1.0]), rotated], "full", [[0.0, 0.0], [10.0, 5.0]])
    X = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 5.0], [11.0, 5.0]])
    ax = plot.plot_mixture(params, X, ax=_axes(), labels=np.array([0, 0, 1, 1]), n_std=(1.0,))
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2
    first, second = ellipses
    np.testing.assert_allclose(first.center, (0.0, 0.0))
    np.testing.assert_allclose((first.width, first.height), (4.0, 2.0))
    assert first.angle % 180 == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(second.center, (10.0, 5.0))
    np.testing.assert_allclose((second.width, second.height), (6.0, 2.0))
    assert second.angle % 180 == pytest.approx(45.0)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_mixture_plot_2d_has_points_and_two_ellipses_per_component(covariance_type):
    X = datasets.load("toy_2d").X
    result = jaxgmm.fit(X, 3, covariance_type=covariance_type, max_iter=20)
    ax = plot.plot_mixture(result, X, ax=_axes())
    assert sum(isinstance(p, Ellipse) for p in ax.patches) == 3 * 2
    offsets = ax.collections[0].get_offsets()
    np.testing.assert_array_equal(np.asarray(offsets), X)
    # Points are coloured by their predicted component.
    labels = np.asarray(jaxgmm.predict(result.params, X))
    colors = ax.collections[0].get_facecolors()
    for k in range(3):
        assert len({tuple(c) for c in colors[labels == k]}) == 1
    assert covariance_type in ax.get_title()


def test_mixture_plot_projects_high_dimensional_data_on_principal_axes():
    data = datasets.load("mixture_5d")
    params = data.true_params()
    ax = plot.plot_mixture(params, data.X, ax=_axes(), n_std=(1.0,))
    offsets = np.asarray(ax.collections[0].get_offsets())
    centred = data.X - data.X.mean(axis=0)
    # The first two principal components carry the most variance of any 2-D projection.
    projected_var = offsets.var(axis=0, ddof=1)
    top = np.sort(np.linalg.eigvalsh(np.cov(centred, rowvar=False)))[::-1][:2]
    np.testing.assert_allclose(projected_var, top, rtol=1e-10)
    assert sum(isinstance(p, Ellipse) for p in ax.patches) == 4
    assert "principal axis 1" in ax.get_xlabel()


def test_mixture_plot_1d_draws_histogram_and_densities():
    data = datasets.load("mixture_1d")
    ax = plot.plot_mixture(data.true_params(), data.X, ax=_axes())
    lines = ax.get_lines()
    assert len(lines) == 3 + 1  # one per component, plus the mixture
    grid, total = lines[-1].get_data()
    components = sum(line.get_ydata() for line in lines[:-1])
    np.testing.assert_allclose(total, components)
    # The mixture density integrates to ~1 over the plotted range.
    assert np.trapezoid(total, grid) == pytest.approx(1.0, abs=2e-3)


def test_mixture_plot_rejects_mismatched_data():
    params = _params([1.0, 1.0], "spherical", [[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        plot.plot_mixture(params, np.zeros((4, 3)), ax=_axes())


def test_history_plot_shows_each_iteration():
    X = datasets.load("toy_2d").X
    result = jaxgmm.fit(X, 3, tol=0.0, max_iter=12)
    ax = plot.plot_history(result, ax=_axes())
    x, y = ax.get_lines()[0].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 13))
    np.testing.assert_array_equal(y, np.asarray(result.history))
    assert "12 iterations" in ax.get_title()


def test_criteria_plot_marks_the_lowest_bic():
    ax = plot.plot_criteria([1, 2, 3, 4], [10.0, 7.0, 5.0, 6.0], [9.0, 6.0, 4.5, 4.0], ax=_axes())
    bic_line, aic_line, chosen = ax.get_lines()
    np.testing.assert_array_equal(bic_line.get_ydata(), [10.0, 7.0, 5.0, 6.0])
    np.testing.assert_array_equal(aic_line.get_ydata(), [9.0, 6.0, 4.5, 4.0])
    assert list(chosen.get_xdata()) == [3, 3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["BIC", "AIC", "chosen K=3"]


def test_summary_figure_writes_a_png(tmp_path):
    X = datasets.load("toy_2d").X
    result = jaxgmm.fit(X, 3, max_iter=20)
    criteria = {"n_components": [1, 2, 3], "bic": [3.0, 2.0, 1.0], "aic": [3.0, 2.0, 1.0]}
    fig = plot.summary_figure(result, X, criteria=criteria, title="toy")
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "summary.png")
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plot.summary_figure(result.params, X).axes) == 1


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    params = _params([1.0, 1.0], "spherical", [[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ImportError, match=r'pip install "jaxgmm\[plot\]"'):
        plot.plot_mixture(params, np.zeros((4, 2)))
