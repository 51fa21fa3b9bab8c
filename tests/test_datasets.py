"""Shipped data sets: files equal a fresh generation, loaders work without the files."""

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal

import jaxgmm
from jaxgmm import datasets

DATA = Path(__file__).resolve().parents[1] / "data"


def test_names_cover_the_three_promised_sets():
    shapes = {name: datasets.load(name).X.shape for name in datasets.names()}
    assert shapes == {"toy_2d": (250, 2), "mixture_1d": (500, 1), "mixture_5d": (1000, 5)}


@pytest.mark.parametrize("name", datasets.names())
def test_shipped_files_are_byte_identical_to_a_fresh_write(name, tmp_path):
    spec = datasets.SPECS[name]
    data_path, meta_path = datasets.write(name, tmp_path)
    assert data_path.read_bytes() == (DATA / spec.filename).read_bytes()
    assert meta_path.read_bytes() == (DATA / f"{name}.json").read_bytes()


@pytest.mark.parametrize("name", datasets.names())
def test_loading_the_files_equals_regenerating(name, monkeypatch):
    from_files = datasets.load(name)
    assert from_files.path == DATA / datasets.SPECS[name].filename
    monkeypatch.setattr(datasets, "data_dir", lambda: None)  # as from a wheel install
    regenerated = datasets.load(name)
    assert regenerated.path is None
    np.testing.assert_array_equal(from_files.X, regenerated.X)
    np.testing.assert_array_equal(from_files.labels, regenerated.labels)
    np.testing.assert_array_equal(from_files.means, regenerated.means)
    np.testing.assert_array_equal(from_files.covariances, regenerated.covariances)
    assert from_files.seed == regenerated.seed == datasets.SPECS[name].seed


@pytest.mark.parametrize("name", datasets.names())
def test_true_parameters_are_a_valid_mixture_matching_the_points(name):
    data = datasets.load(name)
    k, d = data.means.shape
    assert data.weights.shape == (k,) and data.covariances.shape == (k, d, d)
    np.testing.assert_allclose(data.weights.sum(), 1.0)
    np.testing.assert_array_equal(data.covariances, np.swapaxes(data.covariances, 1, 2))
    assert np.linalg.eigvalsh(data.covariances).min() > 0
    assert set(np.unique(data.labels)) == set(range(k))
    for j in range(k):
        points = data.X[data.labels == j]
        # Sample mean within 5 standard errors of the true mean, per coordinate.
        stderr = np.sqrt(np.diag(data.covariances[j]) / len(points))
        assert np.all(np.abs(points.mean(axis=0) - data.means[j]) < 5 * stderr + 1e-3)
        np.testing.assert_allclose(len(points) / len(data.X), data.weights[j], atol=0.06)


def test_true_params_density_matches_scipy():
    data = datasets.load("mixture_5d")
    X = data.X[:50]
    expected = np.log(
        sum(
            w * multivariate_normal(m, c).pdf(X)
            for w, m, c in zip(data.weights, data.means, data.covariances, strict=True)
        )
    )
    got = np.asarray(jaxgmm.score_samples(data.true_params(), X))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_values_have_the_promised_decimals():
    for name in datasets.names():
        spec = datasets.SPECS[name]
        X = datasets.generate(name).X
        np.testing.assert_array_equal(X, np.round(X, spec.decimals))


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="toy_2d"):
        datasets.load("nope")


def test_sample_mixture_is_deterministic_and_seed_dependent():
    spec = datasets.SPECS["toy_2d"]
    a = datasets.sample_mixture(spec.weights, spec.means, spec.covariances, 20, seed=1)
    b = datasets.sample_mixture(spec.weights, spec.means, spec.covariances, 20, seed=1)
    c = datasets.sample_mixture(spec.weights, spec.means, spec.covariances, 20, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_make_datasets_script_and_readme_exist():
    assert (DATA / "make_datasets.py").is_file()
    readme = (DATA / "README.md").read_text()
    for name in datasets.names():
        assert name in readme
        assert str(datasets.SPECS[name].seed) in readme
