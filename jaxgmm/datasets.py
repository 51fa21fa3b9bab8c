"""Small data sets that jaxgmm generates itself, with known true parameters.

Every data set is drawn from a Gaussian mixture whose parameters and seed are fixed
here, so it can always be regenerated bit for bit. ``data/make_datasets.py`` in the
source tree writes the same data to ``data/`` (one data file plus a JSON file with the
seed, the true parameters and the true labels per set). :func:`load` reads those files
when it runs from a source checkout and regenerates the data otherwise (e.g. from a
wheel install), and both paths return identical arrays: values are rounded to a fixed
number of decimals through their text form before they are returned or written.

Data sets (``names()``):

* ``"toy_2d"``: 250 x 2, four full-covariance components, in the spirit of the
  250 x 2 toy data of the seed notebooks; whitespace-separated, no header.
* ``"mixture_1d"``: 500 x 1, three components; CSV with a header line.
* ``"mixture_5d"``: 1000 x 5, four components with randomly rotated full
  covariances (drawn from the set's seed); CSV with a header line.

:func:`ratings` is a small users x items matrix of 1-5 ratings with missing entries
(``data/ratings.csv``, empty cells), for the missing-value examples.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

__all__ = [
    "Dataset",
    "DatasetSpec",
    "data_dir",
    "generate",
    "load",
    "names",
    "ratings",
    "sample_mixture",
    "write",
]

FORMAT = "jaxgmm-dataset"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one data set is generated and stored.

    Attributes:
        name: the set's name, as passed to :func:`load`.
        description: one line for people.
        seed: seed of ``numpy.random.default_rng`` for the draw.
        n_samples: N, number of points.
        weights: (K,) true mixing weights.
        means: (K, D) true means.
        covariances: (K, D, D) true covariances.
        filename: the data file's name under ``data/``.
        delimiter: ``" "`` (whitespace) or ``","``.
        header: whether the data file starts with a line of column names.
        decimals: values are rounded to this many decimals.
    """

    name: str
    description: str
    seed: int
    n_samples: int
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    filename: str
    delimiter: str
    header: bool
    decimals: int

    @property
    def n_features(self) -> int:
        """D, number of features."""
        return self.means.shape[1]

    @property
    def column_names(self) -> list[str]:
        """Header names: ``x`` for one feature, else ``x0, x1, ...``."""
        if self.n_features == 1:
            return ["x"]
        return [f"x{d}" for d in range(self.n_features)]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set with the mixture that generated it.

    Attributes:
        name: the set's name.
        description: one line for people.
        seed: seed the points were drawn with.
        X: (N, D) float64 points.
        labels: (N,) int, the true component of every point.
        weights: (K,) true mixing weights.
        means: (K, D) true means.
        covariances: (K, D, D) true full covariances.
        path: the file ``X`` was read from, or None when it was regenerated.
    """

    name: str
    description: str
    seed: int
    X: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    path: Path | None = None

    @property
    def n_components(self) -> int:
        """K, number of true components."""
        return self.weights.shape[0]

    def true_params(self):
        """The generating mixture as :class:`jaxgmm.GaussianMixtureParams` (full).

        Returns:
            Parameters with weights (K,), means (K, D), covariances (K, D, D) and
            precisions_cholesky (K, D, D), in float64 when x64 is enabled, else float32.
        """
        import jax.numpy as jnp

        from jaxgmm._params import GaussianMixtureParams
        from jaxgmm._validation import compute_dtype

        dtype = compute_dtype(np.float64)
        lower = np.linalg.cholesky(self.covariances)
        eye = np.broadcast_to(np.eye(self.means.shape[1]), self.covariances.shape)
        precisions_cholesky = np.swapaxes(np.linalg.solve(lower, eye), -1, -2)
        return GaussianMixtureParams(
            weights=jnp.asarray(self.weights.astype(dtype)),
            means=jnp.asarray(self.means.astype(dtype)),
            covariances=jnp.asarray(self.covariances.astype(dtype)),
            precisions_cholesky=jnp.asarray(precisions_cholesky.astype(dtype)),
            covariance_type="full",
        )


def _rotated_covariances(seed: int, n_components: int, n_features: int) -> np.ndarray:
    """Random full covariances Q diag(s) Q.T with scales s in [0.3, 1.5]; -> (K, D, D)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_components, n_features, n_features))
    for k in range(n_components):
        q, r = np.linalg.qr(rng.standard_normal((n_features, n_features)))
        q = q * np.sign(np.diag(r))
        scales = rng.uniform(0.3, 1.5, size=n_features) ** 2
        out[k] = (q * scales) @ q.T
    return _round(0.5 * (out + np.swapaxes(out, 1, 2)), 4)


def _round(values: np.ndarray, decimals: int) -> np.ndarray:
    """Round through the text form, so written and regenerated values are identical."""
    text = np.char.mod(f"%.{decimals}f", np.asarray(values, dtype=np.float64))
    return text.astype(np.float64) + 0.0  # + 0.0 turns -0.0 into 0.0


def _specs() -> dict[str, DatasetSpec]:
    toy = DatasetSpec(
        name="toy_2d",
        description="250 x 2 toy data from four full-covariance Gaussians",
        seed=20240611,
        n_samples=250,
        weights=np.array([0.36, 0.28, 0.2, 0.16]),
        means=np.array([[-3.0, 2.0], [1.5, -2.5], [6.5, 1.0], [2.0, 4.0]]),
        covariances=np.array(
            [
                [[1.2, 0.6], [0.6, 0.9]],
                [[2.5, -0.3], [-0.3, 0.5]],
                [[1.0, -0.7], [-0.7, 2.0]],
                [[0.4, 0.0], [0.0, 0.3]],
            ]
        ),
        filename="toy_2d.txt",
        delimiter=" ",
        header=False,
        decimals=3,
    )
    one_d = DatasetSpec(
        name="mixture_1d",
        description="500 points on a line from three Gaussians",
        seed=1618,
        n_samples=500,
        weights=np.array([0.5, 0.3, 0.2]),
        means=np.array([[-2.0], [1.5], [5.0]]),
        covariances=np.array([[[0.64]], [[0.25]], [[1.44]]]),
        filename="mixture_1d.csv",
        delimiter=",",
        header=True,
        decimals=4,
    )
    five_d = DatasetSpec(
        name="mixture_5d",
        description="1000 x 5 data from four Gaussians with rotated full covariances",
        seed=31415,
        n_samples=1000,
        weights=np.array([0.4, 0.3, 0.2, 0.1]),
        means=np.array(
            [
                [0.0, 0.0, 0.0, 0.0, 0.0],
                [4.0, -3.0, 1.0, 0.0, 2.0],
                [-3.0, 3.0, 3.0, -2.0, 0.0],
                [1.0, 4.0, -4.0, 3.0, -3.0],
            ]
        ),
        covariances=_rotated_covariances(seed=27182, n_components=4, n_features=5),
        filename="mixture_5d.csv",
        delimiter=",",
        header=True,
        decimals=4,
    )
    return {spec.name: spec for spec in (toy, one_d, five_d)}


SPECS: dict[str, DatasetSpec] = _specs()


def names() -> list[str]:
    """Names of the shipped data sets, for :func:`load`."""
    return list(SPECS)


def sample_mixture(
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    n_samples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw points from a full-covariance Gaussian mixture with numpy.

    Args:
        weights: (K,) mixing weights summing to 1.
        means: (K, D) component means.
        covariances: (K, D, D) positive-definite covariances.
        n_samples: N, number of points.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        X: (N, D) float64 points in random order, and labels: (N,) int64 components.
    """
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(weights), size=n_samples, p=weights)
    z = rng.standard_normal((n_samples, means.shape[1]))
    lower = np.linalg.cholesky(covariances)
    X = means[labels] + np.einsum("nde,ne->nd", lower[labels], z)
    return X, labels.astype(np.int64)


def _spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ValueError(f"unknown data set {name!r}; choose one of {names()}.")
    return SPECS[name]


def generate(name: str) -> Dataset:
    """Generate a data set from its fixed parameters and seed (never reads files).

    Args:
        name: one of :func:`names`.

    Returns:
        The :class:`Dataset`, with X: (N, D) rounded to the set's decimals.
    """
    spec = _spec(name)
    X, labels = sample_mixture(
        spec.weights, spec.means, spec.covariances, spec.n_samples, spec.seed
    )
    return Dataset(
        name=spec.name,
        description=spec.description,
        seed=spec.seed,
        X=_round(X, spec.decimals),
        labels=labels,
        weights=spec.weights.copy(),
        means=spec.means.copy(),
        covariances=spec.covariances.copy(),
    )


def data_dir() -> Path | None:
    """The source tree's ``data/`` folder, or None when jaxgmm runs from a wheel."""
    candidate = Path(__file__).resolve().parent.parent / "data"
    if (candidate / "make_datasets.py").is_file():
        return candidate
    return None


def _read_data_file(spec: DatasetSpec, path: Path) -> np.ndarray:
    """Read a shipped data file; -> (N, D) float64."""
    delimiter = None if spec.delimiter == " " else spec.delimiter
    X = np.loadtxt(path, delimiter=delimiter, skiprows=int(spec.header), ndmin=2)
    if X.shape != (spec.n_samples, spec.n_features):
        raise ValueError(
            f"{path} holds an array of shape {X.shape}, but data set {spec.name!r} has shape "
            f"{(spec.n_samples, spec.n_features)}; regenerate it with data/make_datasets.py."
        )
    return X


def load(name: str = "toy_2d") -> Dataset:
    """Load a shipped data set: from ``data/`` in a source tree, else regenerated.

    Args:
        name: one of :func:`names` (default ``"toy_2d"``).

    Returns:
        The :class:`Dataset`: X (N, D), true labels (N,), weights (K,), means (K, D),
        covariances (K, D, D), seed, and the path read from (None if regenerated).
    """
    spec = _spec(name)
    folder = data_dir()
    path = None if folder is None else folder / spec.filename
    meta_path = None if folder is None else folder / f"{spec.name}.json"
    if path is None or not path.is_file() or not meta_path.is_file():
        return generate(name)
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("name") != spec.name:
        raise ValueError(f"{meta_path} is not the metadata of data set {spec.name!r}.")
    return Dataset(
        name=spec.name,
        description=meta["description"],
        seed=int(meta["seed"]),
        X=_read_data_file(spec, path),
        labels=np.asarray(meta["labels"], dtype=np.int64),
        weights=np.asarray(meta["weights"], dtype=np.float64),
        means=np.asarray(meta["means"], dtype=np.float64),
        covariances=np.asarray(meta["covariances"], dtype=np.float64),
        path=path,
    )


def write(name: str, folder: Path) -> tuple[Path, Path]:
    """Generate a data set and write its data file and JSON metadata into ``folder``.

    Args:
        name: one of :func:`names`.
        folder: the output folder (created if missing).

    Returns:
        The paths of the data file and of the JSON file.
    """
    spec = _spec(name)
    data = generate(name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec.filename
    header = spec.delimiter.join(spec.column_names) if spec.header else ""
    np.savetxt(
        path,
        data.X,
        fmt=f"%.{spec.decimals}f",
        delimiter=spec.delimiter,
        header=header,
        comments="",
    )
    meta = {
        "format": FORMAT,
        "name": spec.name,
        "description": spec.description,
        "file": spec.filename,
        "generator": f"jaxgmm.datasets.generate({spec.name!r})",
        "seed": spec.seed,
        "n_samples": spec.n_samples,
        "n_features": spec.n_features,
        "n_components": int(spec.weights.shape[0]),
        "weights": spec.weights.tolist(),
        "means": spec.means.tolist(),
        "covariances": spec.covariances.tolist(),
        "labels": data.labels.tolist(),
    }
    meta_path = folder / f"{spec.name}.json"
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in meta.items()]
    meta_path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    return path, meta_path


RATINGS_ITEMS = ("drama", "comedy", "action", "horror", "romance", "documentary")
RATINGS_SEED = 4242


def ratings(n_users: int = 200, missing: float = 0.35, seed: int = RATINGS_SEED):
    """A ratings-like matrix with holes: users x items, 1-5 stars, NaN where unrated.

    Three kinds of users (weights 0.5, 0.3, 0.2) like different genres; each user's
    ratings are their kind's mean plus correlated noise, rounded and clipped to 1..5;
    then ``missing`` of the entries (at random) are removed. Deterministic in ``seed``.

    Args:
        n_users: rows N; missing: fraction of entries set to NaN; seed: numpy seed.

    Returns:
        (ratings (N, 6) float64 with NaN, complete (N, 6) float64 before removal,
        kind (N,) int): the observed matrix, the full one, each user's kind.
    """
    rng = np.random.default_rng(seed)
    means = np.array(
        [
            [4.2, 2.5, 2.0, 1.5, 4.0, 3.8],  # drama and romance
            [2.5, 4.3, 4.0, 3.0, 2.5, 2.0],  # comedy and action
            [2.0, 3.0, 4.2, 4.5, 1.5, 2.5],  # action and horror
        ]
    )
    kind = rng.choice(3, size=n_users, p=[0.5, 0.3, 0.2])
    mixing = 0.6 * np.eye(6) + 0.25 * rng.standard_normal((3, 6, 6)) / np.sqrt(6)
    noise = np.einsum("nd,nde->ne", rng.standard_normal((n_users, 6)), mixing[kind])
    complete = np.clip(np.rint(means[kind] + noise), 1, 5)
    observed = complete.copy()
    observed[rng.random(complete.shape) < missing] = np.nan
    return observed, complete, kind


def write_ratings(folder: Path) -> Path:
    """Write :func:`ratings` to ``folder / "ratings.csv"`` (empty cells = missing)."""
    observed, _, _ = ratings()
    lines = [",".join(RATINGS_ITEMS)]
    lines += [",".join("" if np.isnan(v) else str(int(v)) for v in row) for row in observed]
    path = Path(folder) / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
