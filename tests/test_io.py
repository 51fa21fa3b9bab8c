"""Model files (save -> load -> predict round-trips exactly; bad files fail clearly) and
data files (delimiter/header detection, line-and-column errors)."""

import json
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxgmm
from jaxgmm import datasets, io
from jaxgmm.io import DataFileError, ModelFileError

TOY = datasets.load("toy_2d").X


@pytest.fixture(scope="module")
def fitted():
    """One float32 fit per covariance type on the toy data (K=3)."""
    X = TOY.astype(np.float32)
    return {ct: jaxgmm.fit(X, 3, covariance_type=ct, key=0) for ct in jaxgmm.COVARIANCE_TYPES}


# ---------------------------------------------------------------- model round trip


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_save_load_predict_round_trips_exactly(fitted, covariance_type, tmp_path):
    result = fitted[covariance_type]
    path = io.save(tmp_path / "model.npz", result)
    loaded = io.load(path)
    assert loaded.covariance_type == covariance_type
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        original, back = getattr(result.params, name), getattr(loaded, name)
        assert back.dtype == original.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(back), np.asarray(original))
    X = TOY.astype(np.float32)
    np.testing.assert_array_equal(jaxgmm.predict(loaded, X), jaxgmm.predict(result.params, X))
    np.testing.assert_array_equal(
        jaxgmm.predict_proba(loaded, X), jaxgmm.predict_proba(result.params, X)
    )
    np.testing.assert_array_equal(
        jaxgmm.score_samples(loaded, X), jaxgmm.score_samples(result.params, X)
    )


def test_float64_model_round_trips_in_float64(tmp_path):
    X = TOY[:100]  # float64, and the suite runs with x64 enabled
    result = jaxgmm.fit(X, 2, key=1)
    assert result.params.means.dtype == np.float64
    loaded = io.load(io.save(tmp_path / "m64.npz", result))
    assert loaded.means.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(loaded.covariances), result.params.covariances)
    assert io.load_metadata(tmp_path / "m64.npz")["dtype"] == "float64"
    with jax.enable_x64(False):
        with pytest.warns(UserWarning, match="float64 model but jax_enable_x64 is off"):
            narrowed = io.load(tmp_path / "m64.npz")
        assert narrowed.means.dtype == np.float32


def test_metadata_records_versions_fit_and_user_fields(fitted, tmp_path):
    result = fitted["diag"]
    io.save(tmp_path / "m.npz", result, metadata={"source": "toy", "columns": ["a", "b"]})
    meta = io.load_metadata(tmp_path / "m.npz")
    assert meta["format"] == "jaxgmm-model"
    assert meta["format_version"] == io.FORMAT_VERSION
    assert meta["jaxgmm_version"] == jaxgmm.__version__
    assert (meta["covariance_type"], meta["dtype"]) == ("diag", "float32")
    assert (meta["n_components"], meta["n_features"]) == (3, 2)
    assert meta["fit"] == {
        "lower_bound": float(result.lower_bound),
        "n_iter": int(result.n_iter),
        "converged": bool(result.converged),
        "status": int(result.status),
    }
    assert meta["user"] == {"source": "toy", "columns": ["a", "b"]}


def test_file_is_plain_numpy_and_json(fitted, tmp_path):
    io.save(tmp_path / "m.npz", fitted["full"].params)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        assert set(archive.files) == {
            "metadata",
            "weights",
            "means",
            "covariances",
            "precisions_cholesky",
        }
        meta = json.loads(str(archive["metadata"]))
        np.testing.assert_array_equal(archive["means"], fitted["full"].params.means)
    assert meta["fit"] is None


def test_save_writes_the_exact_name_and_leaves_no_temporary_files(fitted, tmp_path):
    io.save(tmp_path / "model.gmm", fitted["full"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gmm"]


def test_saved_estimator_predicts_like_the_estimator(tmp_path):
    pytest.importorskip("sklearn")
    X = TOY.astype(np.float32)
    estimator = jaxgmm.GaussianMixture(n_components=3, random_state=0).fit(X)
    io.save(tmp_path / "est.npz", estimator)
    loaded = io.load(tmp_path / "est.npz")
    np.testing.assert_array_equal(np.asarray(loaded.means), estimator.means_)
    np.testing.assert_array_equal(np.asarray(jaxgmm.predict(loaded, X)), estimator.predict(X))
    assert io.load_metadata(tmp_path / "est.npz")["fit"]["n_iter"] == estimator.n_iter_


def test_save_rejects_batches_and_foreign_objects(tmp_path):
    batch = jaxgmm.fit_many(np.stack([TOY[:50], TOY[50:100]]), 2, max_iter=3)
    with pytest.raises(ValueError, match="batch"):
        io.save(tmp_path / "b.npz", batch)
    with pytest.raises(TypeError, match="GaussianMixtureParams"):
        io.save(tmp_path / "x.npz", {"means": [1.0]})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- bad model files


@pytest.fixture
def model_file(fitted, tmp_path) -> Path:
    return io.save(tmp_path / "good.npz", fitted["full"])


def _rewrite(path: Path, **changes) -> None:
    """Rewrite a model file with some entries replaced (None deletes) — still a valid zip."""
    with np.load(path, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    for name, value in changes.items():
        if value is None:
            entries.pop(name)
        else:
            entries[name] = value
    np.savez(path, **entries)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load(tmp_path / "absent.npz")


def test_text_file_is_not_a_model():
    with pytest.raises(ModelFileError, match="not a jaxgmm model file"):
        io.load(Path(__file__).resolve().parents[1] / "data" / "toy_2d.txt")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_file_is_reported(model_file, fraction):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        io.load(model_file)


def test_flipped_bytes_are_caught_by_the_checksums(model_file):
    data = bytearray(model_file.read_bytes())
    with zipfile.ZipFile(model_file) as archive:
        info = archive.getinfo("means.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start, start + info.compress_size):
        data[i] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        io.load(model_file)


def test_npz_without_metadata_is_not_a_model(tmp_path):
    np.savez(tmp_path / "plain.npz", means=np.zeros((2, 2)))
    with pytest.raises(ModelFileError, match="no jaxgmm metadata"):
        io.load(tmp_path / "plain.npz")


def test_foreign_metadata_is_not_a_model(model_file):
    _rewrite(model_file, metadata=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(ModelFileError, match="not a jaxgmm model"):
        io.load(model_file)


def test_newer_format_version_asks_for_an_upgrade(model_file):
    meta = io.load_metadata(model_file)
    meta.update(format_version=io.FORMAT_VERSION + 1, jaxgmm_version="99.0")
    _rewrite(model_file, metadata=np.array(json.dumps(meta)))
    with pytest.raises(ModelFileError, match=r"format version 2.*jaxgmm 99.0.*Upgrade jaxgmm"):
        io.load(model_file)


class _Boobytrap:
    """Unpickling this would create a file; loading must never get that far."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_pickled_arrays_are_refused_and_never_run(model_file, tmp_path):
    target = tmp_path / "pwned"
    trap = np.empty(1, dtype=object)
    trap[0] = _Boobytrap(str(target))
    _rewrite(model_file, means=trap)
    with pytest.raises(ModelFileError, match="pickled objects"):
        io.load(model_file)
    assert not target.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"means": np.zeros((3, 3), np.float32)}, "means has shape"),
        ({"weights": np.full(3, 0.5, np.float32)}, "not a probability vector"),
        ({"covariances": np.zeros((3, 2, 2), np.float64)}, "dtype float64, expected float32"),
        ({"means": np.full((3, 2), np.nan, np.float32)}, "non-finite"),
        ({"precisions_cholesky": None}, "lacks the array"),
        ({"metadata": np.array("not json")}, "not valid JSON"),
        (
            {"precisions_cholesky": -np.tile(np.eye(2, dtype=np.float32), (3, 1, 1))},
            "strictly positive diagonal",
        ),
    ],
)
def test_inconsistent_contents_are_reported(model_file, changes, message):
    _rewrite(model_file, **changes)
    with pytest.raises(ModelFileError, match=message):
        io.load(model_file)


def test_model_errors_are_value_errors():
    assert issubclass(ModelFileError, ValueError) and issubclass(DataFileError, ValueError)


# ---------------------------------------------------------------- data files


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "delimiter", "header", "columns"),
    [
        ("a.csv", "x,y\n1,2\n3,4\n", ",", True, ["x", "y"]),
        ("b.txt", "1 2\n3   4\n", None, False, ["0", "1"]),
        ("c.tsv", "a\tb\n1\t2\n3\t4\n", "\t", True, ["a", "b"]),
        ("d.csv", "u;v\n1;2\n3;4\n", ";", True, ["u", "v"]),
        ("e.csv", '"x","y"\n"1","2"\n"3", "4"\n', ",", True, ["x", "y"]),
        ("f.csv", "# comment\n\nx,y\n1,2\n\n# more\n3,4\n", ",", True, ["x", "y"]),
        ("g.csv", "0,1\n1.0,2\n3,4\n", ",", True, ["0", "1"]),  # pandas' default header
        ("h.csv", "\ufeffx,y\n1,2\n3,4\n", ",", True, ["x", "y"]),  # UTF-8 BOM
    ],
)
def test_delimiter_and_header_detection(tmp_path, name, text, delimiter, header, columns):
    table = io.read_data(_write(tmp_path, name, text))
    np.testing.assert_array_equal(table.X, [[1.0, 2.0], [3.0, 4.0]])
    assert table.delimiter == delimiter
    assert table.header is header
    assert table.columns == columns


def test_integer_rows_under_0_1_header_are_data(tmp_path):
    table = io.read_data(_write(tmp_path, "i.csv", "0,1\n2,3\n"))
    np.testing.assert_array_equal(table.X, [[0.0, 1.0], [2.0, 3.0]])


def test_forced_header_and_delimiter(tmp_path):
    path = _write(tmp_path, "j.txt", "5|6\n7|8\n")
    table = io.read_data(path, delimiter="|", header=True)
    np.testing.assert_array_equal(table.X, [[7.0, 8.0]])
    assert table.columns == ["5", "6"]


def test_single_column_file(tmp_path):
    table = io.read_data(_write(tmp_path, "k.csv", "x\n1.5\n-2\n"))
    assert table.X.shape == (2, 1) and table.columns == ["x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x,y\n1,2\n3,4,5\n", "line 3 has 3 values but the header has 2"),
        ("1 2\n3 4 5\n", "line 2 has 3 values but line 1 has 2"),
        ("x,y\n1,2\n3,abc\n", r"line 3, column 2: 'abc' is not a number"),
        ("a;b\n1,5;2\n", "decimal comma"),
        ("", "is empty"),
        ("# only a comment\n\n", "is empty"),
        ("x,y\n", "header line but no data rows"),
    ],
)
def test_malformed_text_names_the_line(tmp_path, text, message):
    with pytest.raises(DataFileError, match=message):
        io.read_data(_write(tmp_path, "bad.csv", text))


def test_binary_and_missing_files(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(DataFileError, match="not a text file"):
        io.read_data(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.read_data(tmp_path / "absent.csv")


def test_npy_files(tmp_path):
    np.save(tmp_path / "two.npy", np.arange(6.0).reshape(3, 2))
    np.save(tmp_path / "one.npy", np.arange(4, dtype=np.int32))
    np.testing.assert_array_equal(io.read_data(tmp_path / "two.npy").X, [[0, 1], [2, 3], [4, 5]])
    one = io.read_data(tmp_path / "one.npy")
    assert one.X.shape == (4, 1) and one.X.dtype == np.float64
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(DataFileError, match=r"shape \(2, 2, 2\)"):
        io.read_data(tmp_path / "cube.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFileError, match="pickled objects"):
        io.read_data(tmp_path / "obj.npy")
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    with pytest.raises(DataFileError, match="not real numbers"):
        io.read_data(tmp_path / "text.npy")


def test_shipped_data_reads_identically_to_the_loader():
    for name in datasets.names():
        spec = datasets.SPECS[name]
        table = io.read_data(datasets.data_dir() / spec.filename)
        np.testing.assert_array_equal(table.X, datasets.load(name).X)
        assert table.header is spec.header
