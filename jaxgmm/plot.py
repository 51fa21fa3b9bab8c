"""Pictures of fitted mixtures (needs the optional extra: ``pip install "jaxgmm[plot]"``).

* :func:`plot_mixture`: the data coloured by most probable component, with each
  component's 1- and 2-standard-deviation covariance ellipses (2-D data; the first two
  principal axes of the data for D > 2; a histogram with the component densities for
  1-D data).
* :func:`plot_history`: the log-likelihood lower bound per EM iteration.
* :func:`plot_criteria`: BIC and AIC against the number of components.
* :func:`summary_figure`: those panels side by side in one figure, for saving to PNG.

matplotlib is imported only when a function here is called. The ``plot_*`` functions
draw into ``ax`` when given and otherwise into a new pyplot figure; ``summary_figure``
never touches pyplot, so it works in scripts and servers without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxgmm._covariance import covariance_model

__all__ = [
    "PLOT_INSTALL_HINT",
    "require_matplotlib",
    "full_covariances",
    "plot_criteria",
    "plot_history",
    "plot_mixture",
    "summary_figure",
]

PLOT_INSTALL_HINT = (
    'plotting needs matplotlib, an optional extra: pip install "jaxgmm[plot]" '
    '(in a source checkout: pip install -e ".[plot]")'
)


def require_matplotlib():
    """Import matplotlib, or raise ImportError naming the plot extra to install."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
        import matplotlib.patches  # noqa: F401
    except ImportError:
        raise ImportError(PLOT_INSTALL_HINT) from None
    return matplotlib


def _new_axes(ax):
    if ax is not None:
        return ax
    require_matplotlib()
    import matplotlib.pyplot as plt

    return plt.subplots()[1]


def _colors(n: int) -> list:
    matplotlib = require_matplotlib()
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]


def _params(model):
    from jaxgmm._params import FitResult

    return model.params if isinstance(model, FitResult) else model


def full_covariances(params) -> np.ndarray:
    """Every component's covariance as a full matrix, whatever the covariance type.

    Args:
        params: :class:`~jaxgmm.GaussianMixtureParams` (or a FitResult).

    Returns:
        (K, D, D) float64 covariance matrices.
    """
    params = _params(params)
    cov = np.asarray(params.covariances, dtype=np.float64)
    model = covariance_model(params.covariance_type)
    return model.full_matrices(cov, params.n_components, params.n_features)


def _principal_axes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Data mean (D,), top-two principal directions (D, 2), explained variance ratios (2,)."""
    center = X.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(X - center, rowvar=False))
    order = np.argsort(values)[::-1][:2]
    total = values.sum()
    ratios = values[order] / total if total > 0 else np.zeros(2)
    return center, vectors[:, order], ratios


def _ellipse(ax, mean, cov, n_std: float, color, **kwargs) -> None:
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0.0, None)
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    ax.add_patch(
        Ellipse(
            xy=mean,
            width=2 * n_std * np.sqrt(values[1]),
            height=2 * n_std * np.sqrt(values[0]),
            angle=angle,
            facecolor="none",
            edgecolor=color,
            **kwargs,
        )
    )


def _normal_pdf(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * np.pi * var)


def plot_mixture(
    params,
    X,
    *,
    ax=None,
    labels=None,
    n_std: Sequence[float] = (1.0, 2.0),
    title: str | None = None,
    max_points: int = 20000,
) -> Any:
    """Draw data coloured by component with the components' covariance ellipses.

    2-D data are drawn as they are; for D > 2 points, means and covariances are
    projected on the first two principal axes of ``X``; for D = 1 a histogram of ``X``
    is drawn with the mixture density and each weighted component density.

    Args:
        params: fitted :class:`~jaxgmm.GaussianMixtureParams` (or a FitResult).
        X: (N, D) data.
        ax: matplotlib Axes to draw into (default: a new pyplot figure).
        labels: (N,) component of every point (default: ``jaxgmm.predict``).
        n_std: radii of the ellipses, in standard deviations (Mahalanobis distance).
        title: the Axes title.
        max_points: draw at most this many points (an evenly spaced subset).

    Returns:
        The matplotlib Axes.
    """
    require_matplotlib()
    from jaxgmm._inference import predict

    params = _params(params)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != params.n_features:
        raise ValueError(
            f"X must have shape (N, {params.n_features}) to match the model, got {X.shape}."
        )
    ax = _new_axes(ax)
    weights = np.asarray(params.weights, dtype=np.float64)
    means = np.asarray(params.means, dtype=np.float64)
    covs = full_covariances(params)
    colors = _colors(params.n_components)
    if labels is None:
        labels = np.asarray(predict(params, X))
    labels = np.asarray(labels)
    if params.n_features == 1:
        _plot_1d(ax, X[:, 0], weights, means[:, 0], covs[:, 0, 0], colors)
    else:
        if len(X) > max_points:
            keep = np.linspace(0, len(X) - 1, max_points).astype(int)
            X, labels = X[keep], labels[keep]
        if params.n_features == 2:
            Y, mu, proj = X, means, covs
            ax.set_xlabel("x0")
            ax.set_ylabel("x1")
        else:
            center, axes, ratios = _principal_axes(X)
            Y, mu = (X - center) @ axes, (means - center) @ axes
            proj = np.einsum("di,kde,ej->kij", axes, covs, axes)
            ax.set_xlabel(f"principal axis 1 ({100 * ratios[0]:.0f}% of variance)")
            ax.set_ylabel(f"principal axis 2 ({100 * ratios[1]:.0f}% of variance)")
        point_colors = [colors[int(k) % len(colors)] for k in labels]
        ax.scatter(Y[:, 0], Y[:, 1], c=point_colors, s=10, alpha=0.6, linewidths=0)
        for k in range(params.n_components):
            for i, r in enumerate(n_std):
                _ellipse(ax, mu[k], proj[k], r, colors[k], linewidth=2.0 - 0.6 * i)
            ax.plot(*mu[k], marker="x", color="black", markersize=8, mew=2)
            ax.annotate(
                f"{k}: w={weights[k]:.2f}",
                mu[k],
                xytext=(6, 6),
                textcoords="offset points",
                fontsize=8,
                color="black",
            )
        ax.autoscale_view()
        ax.set_aspect("equal", adjustable="datalim")
    radii = ", ".join(f"{r:g}" for r in n_std)
    default = f"K={params.n_components} {params.covariance_type}" + (
        "" if params.n_features == 1 else f"; ellipses at {radii} sd"
    )
    ax.set_title(title if title is not None else default)
    return ax


def _plot_1d(ax, x, weights, means, variances, colors) -> None:
    bins = int(np.clip(np.sqrt(len(x)), 10, 60))
    ax.hist(x, bins=bins, density=True, color="0.85", edgecolor="0.65", label="data")
    pad = 3 * np.sqrt(variances.max())
    grid = np.linspace(min(x.min(), means.min() - pad), max(x.max(), means.max() + pad), 400)
    total = np.zeros_like(grid)
    for k, (w, m, v) in enumerate(zip(weights, means, variances, strict=True)):
        density = w * _normal_pdf(grid, m, v)
        total += density
        ax.plot(grid, density, color=colors[k], linewidth=2.5, label=f"{k}: w={w:.2f}")
    ax.plot(grid, total, color="black", linewidth=1.2, linestyle="--", label="mixture")
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def plot_history(history, *, ax=None, title: str | None = None) -> Any:
    """Draw the log-likelihood lower bound after each EM iteration.

    Args:
        history: a FitResult, or a (max_iter,) array of lower bounds, NaN after the
            last iteration (``FitResult.history``).
        ax: matplotlib Axes to draw into (default: a new pyplot figure).
        title: the Axes title.

    Returns:
        The matplotlib Axes.
    """
    require_matplotlib()
    from jaxgmm._params import FitResult

    if isinstance(history, FitResult):
        history = history.history
    values = np.asarray(history, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    ax = _new_axes(ax)
    iterations = np.arange(1, len(values) + 1)
    ax.plot(iterations, values, marker="o", markersize=3, linewidth=1.5)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood per point")
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(values) > 0:
        ax.set_xlim(0.5, max(len(values), 1) + 0.5)
    ax.set_title(title if title is not None else f"convergence ({len(values)} iterations)")
    return ax


def plot_criteria(
    n_components: Sequence[int],
    bic: Sequence[float],
    aic: Sequence[float] | None = None,
    *,
    chosen: int | None = None,
    ax=None,
    title: str | None = None,
) -> Any:
    """Draw BIC (and AIC) against the number of components.

    Args:
        n_components: (M,) the K values fitted.
        bic: (M,) BIC of each K (NaN for a K whose fit failed).
        aic: (M,) AIC of each K, optional.
        chosen: the selected K, marked with a vertical line (default: lowest BIC).
        ax: matplotlib Axes to draw into (default: a new pyplot figure).
        title: the Axes title.

    Returns:
        The matplotlib Axes.
    """
    require_matplotlib()
    ks = np.asarray(n_components)
    bic = np.asarray(bic, dtype=np.float64)
    ax = _new_axes(ax)
    ax.plot(ks, bic, marker="o", label="BIC")
    if aic is not None:
        ax.plot(ks, np.asarray(aic, dtype=np.float64), marker="s", label="AIC")
    if chosen is None and np.isfinite(bic).any():
        chosen = int(ks[np.nanargmin(bic)])
    if chosen is not None:
        ax.axvline(chosen, color="0.4", linestyle="--", linewidth=1, label=f"chosen K={chosen}")
    ax.set_xticks(ks)
    ax.set_xlabel("number of components K")
    ax.set_ylabel("criterion (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title if title is not None else "model selection")
    return ax


def summary_figure(
    params,
    X,
    *,
    history=None,
    criteria: dict[str, Any] | None = None,
    title: str | None = None,
) -> Any:
    """One figure with the fitted mixture, its convergence, and BIC/AIC against K.

    Panels: :func:`plot_mixture` always, :func:`plot_history` when ``history`` is
    given, :func:`plot_criteria` when ``criteria`` is given. Made without pyplot; save
    it with ``fig.savefig("fit.png")``.

    Args:
        params: fitted :class:`~jaxgmm.GaussianMixtureParams` (or a FitResult, whose
            history is then used when ``history`` is None).
        X: (N, D) data.
        history: (max_iter,) lower bound per iteration, NaN-padded.
        criteria: ``{"n_components": (M,), "bic": (M,), "aic": (M,), "chosen": K}``.
        title: the figure's title.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    from jaxgmm._params import FitResult

    if history is None and isinstance(params, FitResult):
        history = params.history
    n_panels = 1 + (history is not None) + (criteria is not None)
    fig = Figure(figsize=(5.2 * n_panels, 4.8), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    plot_mixture(params, X, ax=axes[0])
    i = 1
    if history is not None:
        plot_history(history, ax=axes[i])
        i += 1
    if criteria is not None:
        plot_criteria(
            criteria["n_components"],
            criteria["bic"],
            criteria.get("aic"),
            chosen=criteria.get("chosen"),
            ax=axes[i],
        )
    if title:
        fig.suptitle(title)
    return fig
