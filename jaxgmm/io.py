"""Save and load fitted mixtures as portable ``.npz`` files that never unpickle code.

A model file is a zip archive written by :func:`numpy.savez_compressed` holding four
numeric arrays -- ``weights`` (K,), ``means`` (K, D), ``covariances`` and
``precisions_cholesky`` (in scikit-learn's shapes for the covariance type) -- and one
text array ``metadata``: JSON with

* ``format``: ``"jaxgmm-model"``, ``format_version``: an int (this module writes
  :data:`FORMAT_VERSION` and reads any version up to it),
* ``jaxgmm_version``, ``covariance_type``, ``dtype``, ``n_components``, ``n_features``,
* ``fit``: ``{"lower_bound", "n_iter", "converged", "status"}`` when a
  :class:`~jaxgmm.FitResult` was saved, else null,
* ``user``: any JSON-serialisable metadata passed to :func:`save`.

Files are read with ``allow_pickle=False`` and checked (names, shapes, dtypes, finite
values, weights summing to one) before any array reaches JAX; anything wrong raises
:class:`ModelFileError` with one plain sentence. The file can be read without jaxgmm:
``numpy.load(path)`` gives the arrays, ``json.loads(str(f["metadata"]))`` the metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DataFileError",
    "DataTable",
    "ModelFileError",
    "load",
    "load_metadata",
    "read_data",
    "save",
]

FORMAT = "jaxgmm-model"
FORMAT_VERSION = 1
_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")
_DTYPES = ("float32", "float64")


class ModelFileError(ValueError):
    """A file is not a readable jaxgmm model (corrupt, truncated, newer, or foreign)."""


def _unpack(model) -> tuple[dict[str, np.ndarray], str, dict[str, Any] | None]:
    """(arrays, covariance_type, fit summary or None) of a model to save."""
    from jaxgmm._params import FitResult, GaussianMixtureParams

    if isinstance(model, FitResult):
        if np.ndim(model.lower_bound) != 0:
            raise ValueError(
                "save expects one fitted model; this FitResult holds a batch (from fit_many "
                "or vmap). Save each model separately, e.g. jax.tree.map(lambda a: a[b], result)."
            )
        fit = {
            "lower_bound": float(model.lower_bound),
            "n_iter": int(model.n_iter),
            "converged": bool(model.converged),
            "status": int(model.status),
        }
        params = model.params
    elif isinstance(model, GaussianMixtureParams):
        params, fit = model, None
    elif all(hasattr(model, f"{name}_") for name in _ARRAYS) and hasattr(model, "n_iter_"):
        # A fitted jaxgmm.GaussianMixture (or any estimator with scikit-learn's
        # attribute names): save its arrays as they are, in their own dtype.
        arrays = {name: np.asarray(getattr(model, f"{name}_")) for name in _ARRAYS}
        fit = {
            "lower_bound": float(model.lower_bound_),
            "n_iter": int(model.n_iter_),
            "converged": bool(model.converged_),
            "status": 0 if bool(model.converged_) else 1,
        }
        return arrays, str(model.covariance_type), fit
    else:
        raise TypeError(
            "save expects GaussianMixtureParams, the FitResult of jaxgmm.fit, or a fitted "
            f"jaxgmm.GaussianMixture, got {type(model).__name__}."
        )
    arrays = {name: np.asarray(getattr(params, name)) for name in _ARRAYS}
    return arrays, params.covariance_type, fit


def save(path: str | os.PathLike, model, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write a fitted mixture to a portable ``.npz`` model file.

    The file is written to a temporary name and renamed into place, so an interrupted
    save never leaves a half-written model at ``path``. The name is used as given (no
    ``.npz`` is appended).

    Args:
        path: where to write; parent folders must exist.
        model: :class:`~jaxgmm.GaussianMixtureParams` with weights (K,), means (K, D),
            covariances and precisions_cholesky; or the :class:`~jaxgmm.FitResult` of
            :func:`jaxgmm.fit` or a fitted :class:`~jaxgmm.GaussianMixture`, whose
            lower bound, iteration count and convergence are saved too.
        metadata: optional JSON-serialisable dict stored under ``"user"``.

    Returns:
        The path written.
    """
    from jaxgmm import __version__
    from jaxgmm._covariance import COVARIANCE_TYPES

    arrays, covariance_type, fit = _unpack(model)
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"unknown covariance_type {covariance_type!r}; expected one of {COVARIANCE_TYPES}."
        )
    if arrays["means"].ndim != 2:
        raise ValueError(
            f"save expects one model with means of shape (K, D), got {arrays['means'].shape}."
        )
    dtype = arrays["means"].dtype
    if dtype.name not in _DTYPES:
        raise ValueError(f"parameters must be float32 or float64, got {dtype}.")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jaxgmm_version": __version__,
        "covariance_type": covariance_type,
        "dtype": dtype.name,
        "n_components": int(arrays["means"].shape[0]),
        "n_features": int(arrays["means"].shape[1]),
        "fit": fit,
        "user": metadata,
    }
    try:
        text = json.dumps(meta, allow_nan=True)
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from None
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, metadata=np.array(text), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a model file; -> (metadata, arrays)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist.")
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a folder, not a jaxgmm model file.")
    not_model = f"{str(path)!r} is not a jaxgmm model file"
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":
        raise ModelFileError(f"{not_model} (it is not an .npz archive).")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{str(path)!r} is corrupt or truncated (its zip index is missing).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "metadata" not in archive.files:
                raise ModelFileError(f"{not_model} (it has no jaxgmm metadata).")
            meta_array = archive["metadata"]
            arrays = {name: archive[name] for name in _ARRAYS if name in archive.files}
    except ModelFileError:
        raise
    except ValueError as err:
        if "pickle" in str(err):
            raise ModelFileError(
                f"{not_model}: it holds pickled objects, which jaxgmm never loads."
            ) from None
        raise ModelFileError(f"{str(path)!r} is corrupt or truncated ({err}).") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
        raise ModelFileError(f"{str(path)!r} is corrupt or truncated ({err}).") from None
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise ModelFileError(f"{not_model} (its metadata is not a JSON text).")
    try:
        meta = json.loads(str(meta_array))
    except json.JSONDecodeError:
        raise ModelFileError(f"{not_model} (its metadata is not valid JSON).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{not_model} (metadata format is not {FORMAT!r}).")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{str(path)!r} has an invalid format_version {version!r}.")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} uses model format version {version}, written by jaxgmm "
            f"{meta.get('jaxgmm_version', '?')}; this jaxgmm reads versions up to "
            f"{FORMAT_VERSION}. Upgrade jaxgmm (pip install -U jaxgmm) to load it."
        )
    _check(path, meta, arrays)
    return meta, arrays


def _check(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    from jaxgmm._covariance import COVARIANCE_TYPES, covariance_model

    bad = f"{str(path)!r} is corrupt:"
    missing = [name for name in _ARRAYS if name not in arrays]
    if missing:
        raise ModelFileError(f"{bad} it lacks the array(s) {missing}.")
    covariance_type = meta.get("covariance_type")
    if covariance_type not in COVARIANCE_TYPES:
        raise ModelFileError(f"{bad} unknown covariance_type {covariance_type!r}.")
    dtype = meta.get("dtype")
    if dtype not in _DTYPES:
        raise ModelFileError(f"{bad} unsupported dtype {dtype!r}.")
    k, d = meta.get("n_components"), meta.get("n_features")
    if not (isinstance(k, int) and isinstance(d, int) and k >= 1 and d >= 1):
        raise ModelFileError(f"{bad} invalid n_components/n_features {k!r}/{d!r}.")
    cov_shape = covariance_model(covariance_type).shape(k, d)
    shapes = {
        "weights": (k,),
        "means": (k, d),
        "covariances": cov_shape,
        "precisions_cholesky": cov_shape,
    }
    for name, shape in shapes.items():
        array = arrays[name]
        if array.shape != shape:
            raise ModelFileError(f"{bad} {name} has shape {array.shape}, expected {shape}.")
        if array.dtype != np.dtype(dtype):
            raise ModelFileError(f"{bad} {name} has dtype {array.dtype}, expected {dtype}.")
        if not np.isfinite(array).all():
            raise ModelFileError(f"{bad} {name} holds non-finite values.")
    weights = arrays["weights"].astype(np.float64)
    if (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-4:
        raise ModelFileError(f"{bad} its weights are not a probability vector.")


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a model file and return its metadata.

    Args:
        path: a file written by :func:`save`.

    Returns:
        The metadata dict: format, format_version, jaxgmm_version, covariance_type,
        dtype, n_components, n_features, fit (or None) and user (or None).

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelFileError: the file is corrupt, truncated, of a newer format version, or
            not a jaxgmm model.
    """
    return _read(path)[0]


def load(path: str | os.PathLike):
    """Load a model file written by :func:`save` (never unpickles anything).

    A float64 model loaded while ``jax_enable_x64`` is off is converted to float32,
    with a warning.

    Args:
        path: a file written by :func:`save`.

    Returns:
        :class:`~jaxgmm.GaussianMixtureParams` with weights (K,), means (K, D),
        covariances and precisions_cholesky exactly as saved.

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelFileError: the file is corrupt, truncated, of a newer format version, or
            not a jaxgmm model.
    """
    import jax.numpy as jnp

    from jaxgmm._params import GaussianMixtureParams
    from jaxgmm._validation import check_params, compute_dtype

    meta, arrays = _read(path)
    dtype = compute_dtype(np.dtype(meta["dtype"]))
    if dtype != np.dtype(meta["dtype"]):
        warnings.warn(
            f"{str(path)!r} holds a float64 model but jax_enable_x64 is off; loading it as "
            "float32. Enable x64 (jax.config.update('jax_enable_x64', True)) for exact values.",
            UserWarning,
            stacklevel=2,
        )
    params = GaussianMixtureParams(
        **{name: jnp.asarray(arrays[name].astype(dtype)) for name in _ARRAYS},
        covariance_type=meta["covariance_type"],
    )
    try:  # checked once here: predictions with these parameters skip the value checks
        return check_params(params)
    except ValueError as err:
        raise ModelFileError(f"{str(path)!r} is corrupt: {err}") from None


# ---------------------------------------------------------------------------------------
# Data files (.csv / .txt / .tsv / .npy)
# ---------------------------------------------------------------------------------------


class DataFileError(ValueError):
    """A data file cannot be read as a table of numbers (empty, ragged, non-numeric)."""


_DELIMITERS = (",", "\t", ";", "|")
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", None: "whitespace"}


def delimiter_name(delimiter: str | None) -> str:
    """A word for a delimiter, for messages (None means runs of whitespace)."""
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split(line: str, delimiter: str | None) -> list[str]:
    fields = line.split(delimiter) if delimiter is not None else line.split()
    return [field.strip().strip('"').strip("'").strip() for field in fields]


def _detect_delimiter(lines: list[str]) -> str | None:
    """The delimiter that splits every sampled line into the same number (> 1) of fields."""
    sample = lines[:50]
    present = [c for c in _DELIMITERS if all(c in line for line in sample)]
    if "," in present and ";" in present:  # "1,5;2,5": decimal commas
        return ";"
    return present[0] if present else None


def _detect_header(fields: list[str], rest: list[list[str]]) -> bool:
    """A first row is a header if none of its cells is a number, or if it reads
    0, 1, ..., D-1 (pandas' names for unnamed columns) above rows that are not all
    integers. A row mixing numbers and words is data, so a bad cell is reported."""
    if not any(_is_number(f) for f in fields):
        return True
    if fields == [str(i) for i in range(len(fields))] and rest:
        return any(not f.lstrip("+-").isdigit() for row in rest[:50] for f in row)
    return False


@dataclasses.dataclass(frozen=True)
class DataTable:
    """Numbers read from a data file.

    Attributes:
        X: (N, D) float64 values.
        columns: D column names (from the header, else ``"0"``, ``"1"``, ...).
        delimiter: the delimiter used (None: whitespace; also None for .npy).
        header: whether a header line was found/used.
    """

    X: np.ndarray
    columns: list[str]
    delimiter: str | None
    header: bool


def read_data(
    path: str | os.PathLike,
    *,
    delimiter: str | None = None,
    header: bool | None = None,
) -> DataTable:
    """Read a numeric table from a .csv/.txt/.tsv/.dat text file or a .npy file.

    Text files: blank lines and lines starting with ``#`` are skipped; the delimiter
    (comma, tab, semicolon, pipe, else whitespace) and a header line are detected
    unless given. Empty cells and ``nan`` are missing values, read as NaN (fit them
    with ``nan_policy``). ``.npy`` files are read with ``allow_pickle=False``; a 1-D array is
    one feature.

    Args:
        path: the file.
        delimiter: force a delimiter (``"\\t"`` for tab, ``" "`` for whitespace).
        header: force (True) or forbid (False) a header line; None detects it.

    Returns:
        A :class:`DataTable` with X: (N, D) float64 and the column names.

    Raises:
        FileNotFoundError: no file at ``path``.
        DataFileError: the file is empty, binary, ragged, or has a non-numeric
            cell; the message names the line and column.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist.")
    if path.is_dir():
        raise DataFileError(f"{str(path)!r} is a folder, not a data file.")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    if delimiter == " ":
        delimiter = None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataFileError(
            f"{str(path)!r} is not a text file; give a .csv/.txt table or a .npy array."
        ) from None
    numbered = [
        (i + 1, line)
        for i, line in enumerate(text.splitlines())
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise DataFileError(f"{str(path)!r} is empty: it holds no data rows.")
    lines = [line for _, line in numbered]
    if delimiter is None:
        delimiter = _detect_delimiter(lines)
    first = _split(lines[0], delimiter)
    if header is None:
        header = _detect_header(first, [_split(line, delimiter) for line in lines[1:51]])
    columns = first if header else [str(d) for d in range(len(first))]
    rows = numbered[1:] if header else numbered
    if not rows:
        raise DataFileError(f"{str(path)!r} has a header line but no data rows.")
    n_columns = len(columns)
    try:
        X = np.loadtxt(
            [line for _, line in rows],
            delimiter=delimiter,
            quotechar='"',
            ndmin=2,
            dtype=np.float64,
            comments=None,
        )
    except ValueError:
        X = None
    if X is None or X.shape[1] != n_columns:
        X = _parse_slowly(path, rows, delimiter, n_columns, header)
    return DataTable(X=X, columns=columns, delimiter=delimiter, header=header)


def _parse_slowly(path: Path, rows, delimiter, n_columns: int, header: bool) -> np.ndarray:
    """Parse row by row; raise a DataFileError naming the first bad line and column."""
    expected_from = "the header" if header else f"line {rows[0][0]}"
    values = []
    for line_number, line in rows:
        fields = _split(line, delimiter)
        if len(fields) != n_columns:
            raise DataFileError(
                f"{str(path)!r} line {line_number} has {len(fields)} values but "
                f"{expected_from} has {n_columns} ({delimiter_name(delimiter)}-delimited); "
                "every row needs the same number of values."
            )
        for column, field in enumerate(fields, start=1):
            if field == "":  # a missing value: NaN (see nan_policy)
                continue
            if not _is_number(field):
                hint = ""
                if _is_number(field.replace(",", ".", 1)):
                    hint = " (a decimal comma? write 1.5, not 1,5)"
                raise DataFileError(
                    f"{str(path)!r} line {line_number}, column {column}: {field!r} is not "
                    f"a number{hint}."
                )
        values.append([float(field) if field else np.nan for field in fields])
    return np.asarray(values, dtype=np.float64).reshape(len(rows), n_columns)


def _read_npy(path: Path) -> DataTable:
    try:
        X = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise DataFileError(
                f"{str(path)!r} holds pickled objects, which jaxgmm never loads; save a "
                "numeric array instead."
            ) from None
        raise DataFileError(f"{str(path)!r} is not a readable .npy array ({err}).") from None
    except (OSError, EOFError) as err:
        raise DataFileError(f"{str(path)!r} is not a readable .npy array ({err}).") from None
    if not isinstance(X, np.ndarray):
        raise DataFileError(f"{str(path)!r} is not a single .npy array.")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_) or np.iscomplexobj(X):
        raise DataFileError(f"{str(path)!r} holds {X.dtype} values, not real numbers.")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DataFileError(
            f"{str(path)!r} holds an array of shape {X.shape}; expected (N, D) or (N,)."
        )
    if X.size == 0:
        raise DataFileError(f"{str(path)!r} is empty: its array has shape {X.shape}.")
    columns = [str(d) for d in range(X.shape[1])]
    return DataTable(X=X.astype(np.float64), columns=columns, delimiter=None, header=False)
