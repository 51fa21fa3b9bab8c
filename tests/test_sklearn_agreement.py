"""Agreement with scikit-learn's GaussianMixture from the same starting parameters (float64)."""

import numpy as np
import pytest

import jaxgmm

sklearn_mixture = pytest.importorskip("sklearn.mixture")

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
N_ITER = 15


def _data(seed: int = 0) -> np.ndarray:
    """Three overlapping, anisotropic 3-D clusters (so EM needs many iterations)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [2.5, 1.0, -1.0], [-1.5, 2.0, 1.5]])
    scales = [
        np.diag([1.0, 0.5, 0.8]),
        np.array([[1.0, 0.6, 0], [0, 0.7, 0.2], [0, 0, 0.5]]),
        0.6 * np.eye(3),
    ]
    parts = [
        rng.normal(size=(n, 3)) @ s + c
        for n, s, c in zip([150, 100, 80], scales, centers, strict=True)
    ]
    return np.concatenate(parts)


def _starting_params(X: np.ndarray, covariance_type: str, n_components: int = 3):
    rng = np.random.default_rng(1)
    means = X[rng.choice(len(X), n_components, replace=False)]
    weights = np.full(n_components, 1.0 / n_components)
    d = X.shape[1]
    precisions = {
        "full": np.stack([np.eye(d) * (1.0 + 0.3 * k) for k in range(n_components)]),
        "tied": np.eye(d) * 1.2 + 0.1,
        "diag": np.ones((n_components, d)) * np.array([1.0, 1.5, 0.7]),
        "spherical": np.array([1.0, 0.8, 1.3])[:n_components],
    }[covariance_type]
    return weights, means, precisions


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_same_iterates_as_sklearn(covariance_type):
    X = _data()
    weights, means, precisions = _starting_params(X, covariance_type)
    options = dict(covariance_type=covariance_type, tol=0.0, reg_covar=1e-6, max_iter=N_ITER)
    ours = jaxgmm.fit(
        X, 3, weights_init=weights, means_init=means, precisions_init=precisions, **options
    )
    ref = sklearn_mixture.GaussianMixture(
        3, weights_init=weights, means_init=means, precisions_init=precisions, **options
    ).fit(X)
    p = ours.params
    np.testing.assert_allclose(p.weights, ref.weights_, rtol=1e-6)
    np.testing.assert_allclose(p.means, ref.means_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p.covariances, ref.covariances_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        p.precisions_cholesky, ref.precisions_cholesky_, rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(float(ours.lower_bound), ref.lower_bound_, rtol=1e-6)
    assert int(ours.n_iter) == ref.n_iter_ == N_ITER
    np.testing.assert_allclose(ours.history, ref.lower_bounds_, rtol=1e-6)
    # Functions of the fitted parameters agree too.
    np.testing.assert_allclose(jaxgmm.score_samples(p, X), ref.score_samples(X), rtol=1e-6)
    np.testing.assert_allclose(jaxgmm.predict_proba(p, X), ref.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(float(jaxgmm.bic(p, X)), ref.bic(X), rtol=1e-6)
    np.testing.assert_allclose(float(jaxgmm.aic(p, X)), ref.aic(X), rtol=1e-6)
    assert jaxgmm.n_parameters(p) == ref._n_parameters()


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_converges_at_same_iteration_as_sklearn(covariance_type):
    """With a real tol, both stop at the same iteration with the same lower bound."""
    X = _data(seed=3)
    weights, means, precisions = _starting_params(X, covariance_type)
    options = dict(covariance_type=covariance_type, tol=1e-4, max_iter=200)
    ours = jaxgmm.fit(
        X, 3, weights_init=weights, means_init=means, precisions_init=precisions, **options
    )
    ref = sklearn_mixture.GaussianMixture(
        3, weights_init=weights, means_init=means, precisions_init=precisions, **options
    ).fit(X)
    assert bool(ours.converged) and ref.converged_
    assert int(ours.n_iter) == ref.n_iter_
    assert int(ours.status) == jaxgmm.Status.CONVERGED
    np.testing.assert_allclose(float(ours.lower_bound), ref.lower_bound_, rtol=1e-6)
    np.testing.assert_allclose(ours.params.means, ref.means_, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random_from_data"])
def test_reaches_sklearn_optimum_on_separated_data(init):
    """Different random streams, same optimum when the clusters are well separated."""
    rng = np.random.default_rng(5)
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    X = np.concatenate([rng.normal(size=(120, 2)) + c for c in centers])
    ours = jaxgmm.fit(X, 3, init=init, n_init=4, key=2, tol=1e-8, max_iter=300)
    ref = sklearn_mixture.GaussianMixture(
        3, init_params=init, n_init=4, random_state=0, tol=1e-8, max_iter=300
    ).fit(X)
    order = np.argsort(
        np.asarray(ours.params.means)[:, 0] * 10 + np.asarray(ours.params.means)[:, 1]
    )
    ref_order = np.argsort(ref.means_[:, 0] * 10 + ref.means_[:, 1])
    np.testing.assert_allclose(
        np.asarray(ours.params.means)[order], ref.means_[ref_order], atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(ours.params.weights)[order], ref.weights_[ref_order], atol=1e-6
    )
    np.testing.assert_allclose(float(ours.lower_bound), ref.lower_bound_, rtol=1e-7)
    labels = np.asarray(jaxgmm.predict(ours.params, X))
    ref_labels = ref.predict(X)
    # Same partition up to relabelling.
    mapping = {a: b for a, b in zip(labels, ref_labels, strict=True)}
    assert len(set(mapping.values())) == 3
    np.testing.assert_array_equal([mapping[a] for a in labels], ref_labels)
