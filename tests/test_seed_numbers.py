"""The seed notebooks' numbers, reproduced by jaxgmm's E- and M-steps (float64)."""

import numpy as np
import pytest

import jaxgmm

# Second seed notebook: a 1-D two-component mixture, one E-step and one M-step.
X_1D = np.array([0.2, -0.9, -1.0, 1.2, 1.8])[:, None]
POSTERIOR_COMPONENT_1 = [
    0.29421497216298875,
    0.6224593312018546,
    0.6513548646660543,
    0.10669059394565118,
    0.053403329799824234,
]


def _fit_from_notebook_start(max_iter: int, covariance_type: str):
    precision = 1.0 / 4.0
    precisions = {
        "full": np.full((2, 1, 1), precision),
        "tied": np.full((1, 1), precision),
        "diag": np.full((2, 1), precision),
        "spherical": np.full(2, precision),
    }[covariance_type]
    return jaxgmm.fit(
        X_1D,
        2,
        covariance_type=covariance_type,
        weights_init=np.array([0.5, 0.5]),
        means_init=np.array([[-3.0], [2.0]]),
        precisions_init=precisions,
        reg_covar=0.0,
        max_iter=max_iter,
        tol=0.0,
    )


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_notebook2_posterior(covariance_type):
    start = _fit_from_notebook_start(0, covariance_type)
    resp = np.asarray(jaxgmm.predict_proba(start.params, X_1D))
    np.testing.assert_allclose(resp[:, 0], POSTERIOR_COMPONENT_1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_notebook2_one_m_step(covariance_type):
    params = _fit_from_notebook_start(1, covariance_type).params
    assert params.means.dtype == np.float64
    np.testing.assert_allclose(params.weights[0], 0.34562461835527464, rtol=1e-12)
    np.testing.assert_allclose(params.means[0, 0], -0.5373289474340418, rtol=1e-12)
    variance = np.asarray(params.covariances).reshape(2, -1)[0, 0]
    np.testing.assert_allclose(variance, 0.5757859076870627, rtol=1e-12)


def test_notebook1_toy_e_step(shared_data):
    """First seed notebook: spherical E-step on the 250x2 toy data."""
    X = np.loadtxt(shared_data / "toy_data.txt")
    sigmas = np.array([0.45, 0.67])
    start = jaxgmm.fit(
        X,
        2,
        covariance_type="spherical",
        weights_init=np.array([1 / 250, 249 / 250]),
        means_init=X[[163, 28]],
        precisions_init=1.0 / sigmas**2,
        reg_covar=0.0,
        max_iter=0,
    )
    total = float(np.sum(jaxgmm.score_samples(start.params, X)))
    np.testing.assert_allclose(total, -4854.331613120599, rtol=1e-9)
    soft_counts = np.asarray(jaxgmm.predict_proba(start.params, X)).sum(axis=0)
    np.testing.assert_allclose(soft_counts, [98.97150702, 151.02849298], rtol=0, atol=1e-8)
    # The same log-likelihood is the lower bound reported by one EM iteration.
    one_step = jaxgmm.fit(
        X,
        2,
        covariance_type="spherical",
        weights_init=np.array([1 / 250, 249 / 250]),
        means_init=X[[163, 28]],
        precisions_init=1.0 / sigmas**2,
        reg_covar=0.0,
        max_iter=1,
    )
    np.testing.assert_allclose(float(one_step.lower_bound) * 250, -4854.331613120599, rtol=1e-9)
