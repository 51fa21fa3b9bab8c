"""The ``jaxgmm`` command line: fit, select, predict, plot, info and demo.

Run ``jaxgmm --help`` or ``jaxgmm COMMAND --help``. Every command calls only the public
functional API (``jaxgmm.fit``, ``predict``, ``bic``, ...), :mod:`jaxgmm.io`,
:mod:`jaxgmm.datasets` and :mod:`jaxgmm.plot`. Errors caused by the input (a missing
file, a malformed table, a file that is not a model) print one line on stderr and exit
with status 1; usage errors exit with 2. Ctrl-C stops a fit within a second, prints one
line and exits with status 130; every output file is written atomically (a temporary
file renamed into place), so an interrupted command leaves none half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "parse_components"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_K_RANGE = "1..8"
DEMO_K_RANGE = "1..6"
_MAX_MEAN_COLUMNS = 8
# The files this command has written so far (for the message after an interrupt).
_written: list[Path] = []

_EPILOG = """\
exit status: 0 success, 1 bad input or failed fit, 2 usage error, 130 interrupted.
environment: compiled fits are cached on disk so repeated runs start fast;
JAXGMM_COMPILATION_CACHE=FOLDER moves the cache (default ~/.cache/jaxgmm/xla), =0 turns
it off. JAXGMM_TRACEBACK=1 shows full tracebacks instead of one-line errors.
"""


class CLIError(Exception):
    """An error for people: printed as one line, exit status 1."""


class MissingPlotExtraError(CLIError):
    """A picture was asked for but matplotlib is not installed."""


# --------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------


def parse_components(text: str) -> list[int]:
    """Parse a K list: ``"4"``, ``"1..10"`` (inclusive range, also ``1-10``) or ``"2,4,8"``.

    Args:
        text: the option's value.

    Returns:
        Sorted, distinct positive K values.
    """
    text = text.strip()
    try:
        if ".." in text or ("-" in text and not text.startswith("-")):
            lo, hi = text.replace("..", "-").split("-")
            values = list(range(int(lo), int(hi) + 1))
            if int(lo) > int(hi):
                raise ValueError
        else:
            values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid components {text!r}: give a number (4), a range (1..10) or a list (2,4,8)"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"invalid components {text!r}: every K must be >= 1")
    return sorted(set(values))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _delimiter(text: str) -> str:
    named = {"comma": ",", "tab": "\t", "\\t": "\t", "semicolon": ";", "space": " "}
    named.update({"whitespace": " ", "pipe": "|"})
    value = named.get(text.lower(), text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(
            f"invalid delimiter {text!r}: give one character, or comma/tab/semicolon/space"
        )
    return value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading the data file")
    group.add_argument(
        "--delimiter",
        type=_delimiter,
        help="column delimiter of a text file: a character or comma/tab/semicolon/space "
        "(default: detected)",
    )
    group.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the first line holds column names (default: detected)",
    )
    group.add_argument(
        "--columns",
        help="use only these columns: names from the header or 0-based indices, "
        "comma-separated (e.g. x,y or 0,2)",
    )


def _add_fit_options(parser: argparse.ArgumentParser, *, default_restarts: int = 1) -> None:
    from jaxgmm._covariance import COVARIANCE_TYPES
    from jaxgmm._init import INIT_METHODS
    from jaxgmm._options import DEFAULTS

    group = parser.add_argument_group("fitting")
    group.add_argument(
        "-c",
        "--covariance-type",
        choices=COVARIANCE_TYPES,
        default=DEFAULTS.covariance_type,
        help=f"shape of each component's covariance (default: {DEFAULTS.covariance_type})",
    )
    group.add_argument(
        "-r",
        "--restarts",
        type=_positive_int,
        default=default_restarts,
        metavar="N",
        help=f"EM runs from different initialisations; the best is kept "
        f"(default: {default_restarts})",
    )
    group.add_argument(
        "--init",
        choices=INIT_METHODS,
        default=DEFAULTS.init,
        help=f"initialisation (default: {DEFAULTS.init})",
    )
    group.add_argument(
        "--tol",
        type=_non_negative_float,
        default=DEFAULTS.tol,
        help="stop when the mean log-likelihood per point improves by less "
        f"(default: {DEFAULTS.tol:g})",
    )
    group.add_argument(
        "--max-iter",
        type=_non_negative_int,
        default=DEFAULTS.max_iter,
        metavar="N",
        help=f"maximum EM iterations per restart (default: {DEFAULTS.max_iter})",
    )
    group.add_argument(
        "--reg-covar",
        type=_non_negative_float,
        default=DEFAULTS.reg_covar,
        metavar="EPS",
        help=f"added to every covariance's diagonal (default: {DEFAULTS.reg_covar:g})",
    )
    group.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="random seed of the initialisation (default: 0)",
    )
    group.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the computation (default: float32)",
    )
    _add_nan_policy_option(group)


def _add_nan_policy_option(parser) -> None:
    from jaxgmm._validation import NAN_POLICIES

    parser.add_argument(
        "--nan-policy",
        choices=NAN_POLICIES,
        default="raise",
        help="missing values (empty cells, nan): 'raise' refuses them, 'omit' drops their "
        "rows, 'marginalize' uses every observed entry (exact EM) (default: raise)",
    )


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars on stderr (default: only when stderr is a terminal)",
    )


def _add_fitting_command_arguments(
    parser: argparse.ArgumentParser,
    *,
    components_default: list[int] | None,
    components_metavar: str,
    components_help: str,
    criterion_help: str,
    output_help: str,
    plot_help: str,
) -> None:
    """Add the arguments ``fit`` and ``select`` share; only defaults and help texts differ.

    FILE, ``-k``, ``--criterion``, ``-o`` and ``--plot`` (in that order), then the
    fitting, data-file and progress options.
    """
    parser.add_argument("file", type=Path, metavar="FILE", help="data: .csv, .tsv, .txt or .npy")
    parser.add_argument(
        "-k",
        "--components",
        type=parse_components,
        default=components_default,
        metavar=components_metavar,
        help=components_help,
    )
    parser.add_argument("--criterion", choices=("bic", "aic"), default="bic", help=criterion_help)
    parser.add_argument("-o", "--output", type=Path, metavar="MODEL", help=output_help)
    parser.add_argument("--plot", nargs="?", const="", metavar="PNG", help=plot_help)
    _add_fit_options(parser)
    _add_data_options(parser)
    _add_progress_option(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxgmm`` command."""
    from jaxgmm import __version__

    parser = argparse.ArgumentParser(
        prog="jaxgmm",
        description="Fit Gaussian mixture models by EM (in JAX) from the shell.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jaxgmm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = commands.add_parser(
        "fit",
        help="fit a mixture to a .csv/.txt/.npy file and print a summary",
        description="Fit a Gaussian mixture to the rows of FILE and print a summary. Without "
        f"--components, K is chosen by BIC over K={DEFAULT_K_RANGE}.",
        epilog="example: jaxgmm fit data.csv -k 3 -c diag -r 5 -o model.npz --plot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_fitting_command_arguments(
        fit,
        components_default=None,
        components_metavar="K",
        components_help="number of components: 3, or a range/list (1..10, 2,4,8) to choose "
        f"from by the criterion (default: choose from {DEFAULT_K_RANGE} by BIC)",
        criterion_help="criterion for choosing K from a range (default: bic)",
        output_help="save the model here",
        plot_help="draw the fit to a PNG (default name: FILE's stem + '-gmm.png')",
    )
    stream = fit.add_argument_group("data larger than memory")
    stream.add_argument(
        "--stream",
        action="store_true",
        help="read the .npy FILE chunk by chunk on every EM iteration instead of loading "
        "it (exact EM, memory independent of its size; needs one K)",
    )
    stream.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=None,
        metavar="R",
        help="rows per chunk with --stream (default: about 4 million values)",
    )
    stream.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="F",
        help="with --stream: save the fit's state to F after every iteration; the same "
        "command resumes from it",
    )
    fit.set_defaults(handler=_cmd_fit)

    select = commands.add_parser(
        "select",
        help="fit each K in a range and compare BIC/AIC",
        description="Fit a mixture for each K and report log-likelihood, BIC and AIC; the "
        "lowest criterion wins.",
        epilog="example: jaxgmm select data.csv --components 1..10 --plot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_fitting_command_arguments(
        select,
        components_default=parse_components(DEFAULT_K_RANGE),
        components_metavar="KS",
        components_help="K values to compare: a range (1..10) or a list (2,4,8) "
        f"(default: {DEFAULT_K_RANGE})",
        criterion_help="criterion that picks the best K (default: bic)",
        output_help="save the best model here",
        plot_help="draw BIC/AIC against K and the best fit "
        "(default name: FILE's stem + '-select.png')",
    )
    select.set_defaults(handler=_cmd_select)

    predict = commands.add_parser(
        "predict",
        help="label the rows of a file with a saved model",
        description="Write, for each row of FILE, the most probable component, the "
        "log-likelihood under the model and the component probabilities, as CSV.",
        epilog="example: jaxgmm predict model.npz data.csv -o labels.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("model", type=Path, metavar="MODEL", help="a model saved by jaxgmm")
    predict.add_argument("file", type=Path, metavar="FILE", help="data: .csv, .tsv, .txt or .npy")
    predict.add_argument(
        "-o", "--output", type=Path, metavar="CSV", help="write here (default: stdout)"
    )
    predict.add_argument(
        "--what",
        choices=("all", "labels", "proba", "log-likelihood"),
        default="all",
        help="columns to write: label, log_likelihood and proba_0..proba_{K-1} (default: all)",
    )
    _add_nan_policy_option(predict)
    _add_data_options(predict)
    predict.set_defaults(handler=_cmd_predict)

    impute = commands.add_parser(
        "impute",
        help="fill the missing values of a file with a saved model",
        description="Write FILE with every missing value (empty cell or nan) replaced by "
        "its conditional expectation given the row's observed values under the model "
        "(--method sample: one draw from the conditional distribution), as CSV.",
        epilog="example: jaxgmm fit ratings.csv -k 3 --nan-policy marginalize -o model.npz\n"
        "         jaxgmm impute model.npz ratings.csv -o filled.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    impute.add_argument("model", type=Path, metavar="MODEL", help="a model saved by jaxgmm")
    impute.add_argument("file", type=Path, metavar="FILE", help="data: .csv, .tsv, .txt or .npy")
    impute.add_argument(
        "-o", "--output", type=Path, metavar="CSV", help="write here (default: stdout)"
    )
    impute.add_argument(
        "--method",
        choices=("mean", "sample"),
        default="mean",
        help="conditional mean, or one conditional draw (default: mean)",
    )
    impute.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of --method sample (default: 0)"
    )
    _add_data_options(impute)
    impute.set_defaults(handler=_cmd_impute)

    plot = commands.add_parser(
        "plot",
        help="draw a saved model over the rows of a file",
        description="Draw FILE's rows coloured by the saved model's components, with the "
        "covariance ellipses (needs matplotlib: pip install 'jaxgmm[plot]').",
        epilog="example: jaxgmm plot model.npz data.csv -o picture.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("model", type=Path, metavar="MODEL", help="a model saved by jaxgmm")
    plot.add_argument("file", type=Path, metavar="FILE", help="data: .csv, .tsv, .txt or .npy")
    plot.add_argument(
        "-o",
        "--output",
        metavar="PNG",
        help="where to draw (default: MODEL's stem + '.png')",
    )
    _add_data_options(plot)
    plot.set_defaults(handler=_cmd_plot)

    info = commands.add_parser(
        "info",
        help="show what a saved model holds",
        description="Print a saved model's metadata and parameters.",
    )
    info.add_argument("model", type=Path, metavar="MODEL", help="a model saved by jaxgmm")
    info.set_defaults(handler=_cmd_info)

    demo = commands.add_parser(
        "demo",
        help="fit the shipped toy data, print a summary, draw a picture",
        description=f"Choose K by BIC over K={DEMO_K_RANGE} on a shipped data set, print "
        "the fit and draw it (the picture needs matplotlib: pip install 'jaxgmm[plot]').",
    )
    from jaxgmm import datasets

    demo.add_argument(
        "--dataset",
        choices=datasets.names(),
        default="toy_2d",
        help="which shipped data set (default: toy_2d)",
    )
    demo.add_argument(
        "--plot",
        default="jaxgmm-demo.png",
        metavar="PNG",
        help="where to draw the picture (default: jaxgmm-demo.png)",
    )
    demo.add_argument("--no-plot", action="store_true", help="do not draw a picture")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    _add_progress_option(demo)
    demo.set_defaults(handler=_cmd_demo)
    return parser


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxgmm`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 bad input or failed fit, 2 usage error,
        130 interrupted.
    """
    from jaxgmm.io import DataFileError, ModelFileError

    if argv is None:
        _enable_compilation_cache()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _written.clear()
    try:
        return args.handler(args)
    except KeyboardInterrupt as interrupt:
        print(f"jaxgmm: {_interrupted_message(interrupt)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CLIError, DataFileError, ModelFileError, OSError, ValueError, TypeError) as err:
        if os.environ.get("JAXGMM_TRACEBACK"):
            raise
        print(f"jaxgmm: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


def _interrupted_message(interrupt: KeyboardInterrupt) -> str:
    """One line: how far the fit got, and which files (if any) were written before."""
    n_iter = getattr(interrupt, "n_iter", None)
    where = "interrupted" if n_iter is None else f"interrupted after {n_iter} iterations"
    if not _written:
        return f"{where}; nothing was written"
    return f"{where}; already written: {', '.join(str(p) for p in _written)}"


def _write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write a file through ``write(temporary_path)``, then rename it into place.

    An interrupt or error leaves no half-written file at ``path`` (and no temporary one).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a new file's usual permissions, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _written.append(path)


def _save_figure(fig, path: str | os.PathLike) -> None:
    """``fig.savefig(path)``, written atomically (no suffix: PNG, ``.png`` added, as matplotlib)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    fmt = path.suffix[1:].lower()
    _write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format=fmt))


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {str(err.filename)!r}"
    return " ".join(str(err).split()) or type(err).__name__


def _enable_compilation_cache() -> None:
    """Keep compiled fits on disk so that repeated commands skip XLA compilation.

    On by default for the command line (its process is ours, so the process-wide JAX
    setting touches nothing else); see :mod:`jaxgmm.compilation_cache`.
    ``JAXGMM_COMPILATION_CACHE`` = a folder picks the folder, ``0``/``false``/``no``/``off``
    turns it off; a cache folder the user gave JAX is left alone.
    """
    from jaxgmm import compilation_cache

    value = os.environ.get(compilation_cache.ENV_VAR, "").strip()
    if value.lower() in ("0", "false", "no", "off"):
        return
    folder = None if value.lower() in ("", "1", "true", "yes", "on") else Path(value).expanduser()
    try:
        compilation_cache.enable_compilation_cache(folder)
    except OSError:
        return  # an unwritable cache only costs speed


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Data:
    X: np.ndarray  # (N, D) in the compute dtype
    columns: list[str]
    header: bool
    description: str


def _select_columns(columns: list[str], spec: str | None, source: str) -> list[int]:
    if spec is None:
        return list(range(len(columns)))
    chosen = []
    for token in (t.strip() for t in spec.split(",")):
        if token in columns:
            chosen.append(columns.index(token))
        elif token.isdigit() and int(token) < len(columns):
            chosen.append(int(token))
        else:
            raise CLIError(
                f"--columns: {source} has no column {token!r}; its columns are "
                f"{', '.join(columns)} (or 0..{len(columns) - 1})."
            )
    if not chosen:
        raise CLIError("--columns names no column.")
    return chosen


def _read_data(args: argparse.Namespace, *, dtype: str, model_columns=None) -> _Data:
    from jaxgmm.io import delimiter_name, read_data

    table = read_data(args.file, delimiter=args.delimiter, header=args.header)
    spec = args.columns
    if spec is None and model_columns and table.header:
        if all(name in table.columns for name in model_columns):
            spec = ",".join(model_columns)
    index = _select_columns(table.columns, spec, str(args.file))
    X = table.X[:, index]
    columns = [table.columns[i] for i in index]
    if args.file.suffix.lower() == ".npy":
        layout = ".npy array"
    else:
        head = f"header: {', '.join(columns)}" if table.header else "no header"
        layout = f"{delimiter_name(table.delimiter)}-delimited, {head}"
    picked = "" if columns == table.columns else f"; using columns {', '.join(columns)}"
    description = (
        f"{args.file}: {X.shape[0]} rows x {X.shape[1]} columns ({layout}{picked}), {dtype}"
    )
    return _Data(X=X.astype(dtype), columns=columns, header=table.header, description=description)


def _use_dtype(dtype: str) -> None:
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def _check_finite_data(data: _Data, source: Path, nan_policy: str = "raise") -> None:
    """Reuse the library's validation, with the file's name in the message."""
    from jaxgmm._validation import check_data, check_data_array

    if nan_policy == "raise":
        check_data(data.X, name=str(source))
    else:
        check_data_array(data.X, name=str(source), allow_nan=True)


# --------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Trial:
    """One K of a sweep."""

    k: int
    n_points: int
    result: Any = None
    log_likelihood: float = math.nan  # total, under the final parameters
    bic: float = math.nan
    aic: float = math.nan
    seconds: float = math.nan
    error: str | None = None


def _fit_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        covariance_type=args.covariance_type,
        tol=args.tol,
        reg_covar=args.reg_covar,
        max_iter=args.max_iter,
        n_init=args.restarts,
        init=args.init,
        key=args.seed,
        nan_policy=args.nan_policy,
    )


def _fit_trial(X: np.ndarray, k: int, options: dict[str, Any], progress: bool | None) -> _Trial:
    import jaxgmm
    from jaxgmm._progress import progress_enabled

    start = time.perf_counter()
    nan_policy = options.get("nan_policy", "raise")
    if nan_policy == "omit":  # dropped once here (fit would warn on every K)
        X = X[~np.isnan(X).any(axis=1)]
        options = dict(options, nan_policy="raise")
    result = jaxgmm.fit(X, k, progress=progress_enabled(progress), **options)
    log_lik = float(jaxgmm.score(result.params, X, nan_policy=options.get("nan_policy", "raise")))
    log_lik *= X.shape[0]
    seconds = time.perf_counter() - start
    n_params = jaxgmm.n_parameters(result.params)
    return _Trial(
        k=k,
        n_points=X.shape[0],
        result=result,
        log_likelihood=log_lik,
        bic=-2.0 * log_lik + n_params * math.log(X.shape[0]),
        aic=-2.0 * log_lik + 2.0 * n_params,
        seconds=seconds,
    )


def _sweep(
    X: np.ndarray, ks: list[int], options: dict[str, Any], progress: bool | None
) -> list[_Trial]:
    """Fit every K (a failing K is recorded, not raised)."""
    from jaxgmm._progress import progress_bar

    trials = []
    bar = progress_bar(ks, desc="fitting K", enabled=progress, unit="K")
    try:
        for k in bar:
            bar.set_postfix_str(f"K={k}")
            if k > X.shape[0]:
                error = f"K={k} > {X.shape[0]} points"
                trials.append(_Trial(k=k, n_points=X.shape[0], error=error))
                continue
            try:
                trials.append(_fit_trial(X, k, options, progress))
            except ValueError as err:
                trials.append(_Trial(k=k, n_points=X.shape[0], error=_one_line(err)))
    finally:
        bar.close()
    return trials


def _best(trials: list[_Trial], criterion: str) -> _Trial:
    ok = [t for t in trials if t.error is None and math.isfinite(getattr(t, criterion))]
    if not ok:
        reasons = "; ".join(f"K={t.k}: {t.error}" for t in trials if t.error)
        raise CLIError(f"no K could be fitted ({reasons}).")
    return min(ok, key=lambda t: getattr(t, criterion))


# --------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if abs(value) >= 1e5 or 0 < abs(value) < 1e-3 else f"{value:.3f}"


def _print_components(params, columns: list[str] | None, out) -> None:
    weights = np.asarray(params.weights, dtype=np.float64)
    means = np.asarray(params.means, dtype=np.float64)
    d = means.shape[1]
    shown = min(d, _MAX_MEAN_COLUMNS)
    names = columns if columns and len(columns) == d else [str(i) for i in range(d)]
    labels = [f"mean {n}" for n in names[:shown]]
    width = max(10, *(len(label) for label in labels)) + 1
    head = "".join(f"{label:>{width}}" for label in labels)
    print(f"  {'component':>9}  {'weight':>7}{head}", file=out)
    for k in range(len(weights)):
        cells = "".join(f"{m:>{width}.4g}" for m in means[k, :shown])
        more = f"  ... ({d - shown} more)" if d > shown else ""
        print(f"  {k:>9}  {weights[k]:>7.4f}{cells}{more}", file=out)


def _print_summary(trial: _Trial, data: _Data, options: dict[str, Any], out=None) -> None:
    import jaxgmm

    out = out or sys.stdout
    result = trial.result
    params = result.params
    n = data.X.shape[0]
    status = jaxgmm.Status(int(result.status))
    n_iter = int(result.n_iter)
    restarts = options["n_init"]
    print(
        f"\nGaussian mixture: K={params.n_components} components, {params.covariance_type} "
        f"covariances, fitted to {n} points x {params.n_features} "
        f"feature{'s' if params.n_features > 1 else ''}.",
        file=out,
    )
    if status == jaxgmm.Status.CONVERGED:
        converged = f"yes, after {n_iter} EM iterations (tol {options['tol']:g})"
    else:
        converged = f"no: stopped at --max-iter {options['max_iter']} (raise --max-iter or --tol)"
    best_of = f"; best of {restarts} restarts" if restarts > 1 else ""
    print(f"  converged       {converged}{best_of}", file=out)
    print(
        f"  log-likelihood  {trial.log_likelihood:.3f} total, "
        f"{trial.log_likelihood / n:.4f} per point",
        file=out,
    )
    print(
        f"  BIC             {trial.bic:.3f}   AIC {trial.aic:.3f}   "
        f"({jaxgmm.n_parameters(params)} free parameters)",
        file=out,
    )
    print(
        f"  time            {trial.seconds:.2f} s (the first run of a shape includes compilation)",
        file=out,
    )
    print("", file=out)
    _print_components(params, data.columns if data.header else None, out)


def _print_table(trials: list[_Trial], best: _Trial, criterion: str, out=None) -> None:
    out = out or sys.stdout
    print(
        f"\n  {'K':>4} {'BIC':>12} {'AIC':>12} {'loglik/pt':>10} {'iters':>6} "
        f"{'converged':>9} {'time':>7}",
        file=out,
    )
    for t in trials:
        mark = "*" if t is best else " "
        if t.error is not None:
            print(f"{mark} {t.k:>4}   failed: {t.error}", file=out)
            continue
        per_point = t.log_likelihood / t.n_points
        print(
            f"{mark} {t.k:>4} {t.bic:>12.3f} {t.aic:>12.3f} {per_point:>10.4f} "
            f"{int(t.result.n_iter):>6} {'yes' if bool(t.result.converged) else 'no':>9} "
            f"{t.seconds:>6.2f}s",
            file=out,
        )
    print(f"  (* lowest {criterion.upper()}; lower is better)", file=out)


def _explain_choice(trials: list[_Trial], best: _Trial, criterion: str) -> str:
    name = criterion.upper()
    value = getattr(best, criterion)
    others = sorted(
        (t for t in trials if t is not best and t.error is None),
        key=lambda t: getattr(t, criterion),
    )
    ks = [t.k for t in trials]
    span = (
        f"K={ks[0]}..{ks[-1]}"
        if ks == list(range(ks[0], ks[-1] + 1))
        else "K in {" + ",".join(map(str, ks)) + "}"
    )
    text = f"Chose K={best.k}: lowest {name} ({value:.1f}) of {span}"
    if others:
        gap = getattr(others[0], criterion) - value
        strength = " (a gap above 10 is strong evidence)" if criterion == "bic" else ""
        text += f"; the runner-up K={others[0].k} is {gap:.1f} higher{strength}"
    at_edge = best.k == ks[-1] and len(ks) > 1
    if at_edge:
        text += f". The best K is the largest tried: try a wider range (-k 1..{2 * ks[-1]})"
    return text + "."


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------


def _save_model(path: Path, trial: _Trial, data: _Data, source: Path, command: str) -> None:
    from jaxgmm import io

    metadata = {
        "created_by": f"jaxgmm {command}",
        "source": str(source),
        "n_samples": int(data.X.shape[0]),
        "columns": data.columns if data.header else None,
        "log_likelihood": trial.log_likelihood,
        "bic": trial.bic,
        "aic": trial.aic,
    }
    io.save(path, trial.result, metadata=metadata)  # written atomically
    _written.append(Path(path))
    print(f"\nSaved the model to {path} (load it with jaxgmm.load or jaxgmm predict).")


def _draw(path: str, trial: _Trial, data: _Data, trials: list[_Trial] | None, title: str) -> None:
    try:
        from jaxgmm import plot

        plot.require_matplotlib()
    except ImportError as err:
        raise MissingPlotExtraError(f"no picture: {err}") from None
    criteria = None
    if trials is not None and len(trials) > 1:
        criteria = {
            "n_components": [t.k for t in trials],
            "bic": [t.bic for t in trials],
            "aic": [t.aic for t in trials],
            "chosen": trial.k,
        }
    fig = plot.summary_figure(
        trial.result.params,
        data.X[~np.isnan(data.X).any(axis=1)],  # complete rows only
        history=trial.result.history,
        criteria=criteria,
        title=title,
    )
    _save_figure(fig, path)
    print(f"Wrote the picture to {path}")


def _plot_path(value: str | None, source: Path, suffix: str) -> str | None:
    if value is None:
        return None
    return value or f"{source.stem}-{suffix}.png"


# --------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------


def _print_missing(n_missing: int, n_rows: int, nan_policy: str) -> None:
    """Say how many values are missing and what --nan-policy does with them (if any)."""
    if n_missing:
        what = "dropping those rows" if nan_policy == "omit" else "using observed entries"
        print(f"{n_missing} missing values in {n_rows} rows (--nan-policy {nan_policy}: {what}).")


@dataclasses.dataclass(frozen=True)
class _MissingCounts:
    """Missing values of a file: NaN entries, rows with one or more, rows with only NaN."""

    values: int
    rows: int
    empty_rows: int


def _count_missing(path: Path, n_features: int) -> _MissingCounts:
    """Count the NaN entries of a .npy file in one read, block by block (bounded memory)."""
    from jaxgmm._sources import NpyFile

    values = rows = empty_rows = 0
    for block, _ in NpyFile(path, max(1, (1 << 22) // max(n_features, 1))).blocks():
        nan = np.isnan(block)
        per_row = nan.sum(axis=1)
        values += int(per_row.sum())
        rows += int(np.count_nonzero(per_row))
        empty_rows += int(np.count_nonzero(per_row == n_features))
    return _MissingCounts(values, rows, empty_rows)


def _prepare(args: argparse.Namespace) -> _Data:
    _use_dtype(args.dtype)
    data = _read_data(args, dtype=args.dtype)
    _check_finite_data(data, args.file, args.nan_policy)
    print(f"Read {data.description}.")
    n_missing = int(np.isnan(data.X).sum())
    _print_missing(n_missing, int(np.isnan(data.X).any(axis=1).sum()), args.nan_policy)
    if args.nan_policy == "omit" and n_missing:
        X = data.X[~np.isnan(data.X).any(axis=1)]
        if X.shape[0] == 0:
            raise CLIError(f"every row of {args.file} has a missing value; nothing is left.")
        data = dataclasses.replace(data, X=X)
    return data


def _run_selection(
    data: _Data, ks: list[int], options: dict[str, Any], criterion: str, progress
) -> tuple[_Trial, list[_Trial]]:
    what = f"Fitting K={ks[0]}..{ks[-1]}" if len(ks) > 1 else f"Fitting K={ks[0]}"
    print(f"{what} ({options['covariance_type']} covariances) to choose by {criterion.upper()}:")
    trials = _sweep(data.X, ks, options, progress)
    best = _best(trials, criterion)
    _print_table(trials, best, criterion)
    print(_explain_choice(trials, best, criterion))
    return best, trials


def _cmd_fit_stream(args: argparse.Namespace) -> int:
    """``jaxgmm fit FILE --stream``: one K, the .npy file read chunk by chunk."""
    import jaxgmm
    from jaxgmm._progress import progress_enabled
    from jaxgmm._sources import NpyFile

    if args.file.suffix.lower() != ".npy":
        raise CLIError(
            f"--stream reads .npy files, got {args.file.name}; convert it with "
            "numpy.save (np.save('data.npy', X)) first."
        )
    if args.components is None or len(args.components) != 1:
        raise CLIError("--stream fits one number of components: give -k K (e.g. -k 8).")
    if args.plot is not None:
        raise CLIError("--plot needs the data in memory; leave it out with --stream.")
    _use_dtype(args.dtype)
    header = NpyFile(args.file, 1)
    n, d = header.n_rows, header.n_features
    print(f"Streaming {n} rows x {d} columns ({header.dtype}) from {args.file}.")
    # Rows the lower bound averages over, and rows BIC/AIC count (as the in-memory path).
    n_scored, n_points = n, n
    if args.nan_policy != "raise":
        missing = _count_missing(args.file, d)
        _print_missing(missing.values, missing.rows, args.nan_policy)
        if args.nan_policy == "omit":
            n_scored = n_points = n - missing.rows
            if n_points == 0:
                raise CLIError(f"every row of {args.file} has a missing value; nothing is left.")
        else:  # marginalize: rows with no observed entry carry no information
            n_scored = n - missing.empty_rows
    options = _fit_options(args)
    k = args.components[0]
    start = time.perf_counter()
    with warnings.catch_warnings():  # the dropped rows were counted and printed above
        warnings.filterwarnings("ignore", "nan_policy='omit': dropped", UserWarning)
        result = jaxgmm.fit_stream(
            args.file,
            k,
            chunk_rows=args.chunk_rows,
            checkpoint=args.checkpoint,
            progress=progress_enabled(args.progress),
            **options,
        )
    # The last E-step's log-likelihood: no extra pass over the file.
    log_lik = float(result.lower_bound) * n_scored
    n_params = jaxgmm.n_parameters(result.params)
    trial = _Trial(
        k=k,
        n_points=n_points,
        result=result,
        log_likelihood=log_lik,
        bic=-2.0 * log_lik + n_params * math.log(n_points),
        aic=-2.0 * log_lik + 2.0 * n_params,
        seconds=time.perf_counter() - start,
    )
    rows = np.broadcast_to(np.zeros((1, d)), (n_points, d))  # the shape only: nothing loaded
    data = _Data(rows, [f"x{j}" for j in range(d)], False, f"{args.file} (streamed)")
    _print_summary(trial, data, options)
    if args.output is not None:
        _save_model(args.output, trial, data, args.file, "fit --stream")
    return EXIT_OK


def _cmd_fit(args: argparse.Namespace) -> int:
    if args.stream:
        return _cmd_fit_stream(args)
    if args.chunk_rows is not None or args.checkpoint is not None:
        raise CLIError("--chunk-rows and --checkpoint go with --stream.")
    data = _prepare(args)
    options = _fit_options(args)
    ks = args.components or [k for k in parse_components(DEFAULT_K_RANGE)]
    trials = None
    if len(ks) == 1:
        best = _fit_trial(data.X, ks[0], options, args.progress)
    else:
        if args.components is None:
            ks = [k for k in ks if k <= data.X.shape[0]]
            print("No --components given: choosing K by BIC.")
        best, trials = _run_selection(data, ks, options, args.criterion, args.progress)
    _print_summary(best, data, options)
    if args.output is not None:
        _save_model(args.output, best, data, args.file, "fit")
    plot_path = _plot_path(args.plot, args.file, "gmm")
    if plot_path is not None:
        _draw(plot_path, best, data, trials, title=f"{args.file.name}: K={best.k}")
    return EXIT_OK


def _cmd_select(args: argparse.Namespace) -> int:
    data = _prepare(args)
    options = _fit_options(args)
    best, trials = _run_selection(data, args.components, options, args.criterion, args.progress)
    ok = [t for t in trials if t.error is None]
    other = "aic" if args.criterion == "bic" else "bic"
    other_best = min(ok, key=lambda t: getattr(t, other))
    if other_best.k != best.k:
        print(f"({other.upper()} alone would choose K={other_best.k}.)")
    if args.output is not None:
        _save_model(args.output, best, data, args.file, "select")
    plot_path = _plot_path(args.plot, args.file, "select")
    if plot_path is not None:
        _draw(plot_path, best, data, trials, title=f"{args.file.name}: K={best.k}")
    return EXIT_OK


def _load_model_and_data(args: argparse.Namespace, allow_nan: bool = False):
    """The saved model and FILE's rows (its columns picked by name when it can)."""
    from jaxgmm import io
    from jaxgmm._validation import check_data, check_data_array

    meta = io.load_metadata(args.model)
    _use_dtype(meta["dtype"])
    params = io.load(args.model)
    user = meta.get("user") or {}
    columns = user.get("columns") if isinstance(user, dict) else None
    data = _read_data(args, dtype=meta["dtype"], model_columns=columns)
    if allow_nan:
        check_data_array(data.X, name=str(args.file), n_features=params.n_features, allow_nan=True)
    else:
        check_data(data.X, name=str(args.file), n_features=params.n_features)
    print(f"Read {data.description}.", file=sys.stderr)
    return meta, params, data


def _cmd_plot(args: argparse.Namespace) -> int:
    try:
        from jaxgmm import plot

        plot.require_matplotlib()
    except ImportError as err:
        raise MissingPlotExtraError(f"no picture: {err}") from None
    _, params, data = _load_model_and_data(args)
    path = args.output or f"{args.model.stem}.png"
    fig = plot.summary_figure(params, data.X, title=f"{args.model.name} on {args.file.name}")
    _save_figure(fig, path)
    print(f"Wrote the picture to {path}")
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    import jaxgmm

    meta, params, data = _load_model_and_data(args, allow_nan=args.nan_policy != "raise")
    k = params.n_components
    policy = dict(nan_policy=args.nan_policy)
    header, blocks, formats = [], [], []
    float_fmt = "%.9g" if meta["dtype"] == "float32" else "%.17g"
    if args.what in ("all", "labels"):
        header.append("label")
        blocks.append(np.asarray(jaxgmm.predict(params, data.X, **policy))[:, None])
        formats.append("%d")
    if args.what in ("all", "log-likelihood"):
        header.append("log_likelihood")
        blocks.append(np.asarray(jaxgmm.score_samples(params, data.X, **policy))[:, None])
        formats.append(float_fmt)
    if args.what in ("all", "proba"):
        header.extend(f"proba_{j}" for j in range(k))
        blocks.append(np.asarray(jaxgmm.predict_proba(params, data.X, **policy)))
        formats.extend([float_fmt] * k)
    table = np.concatenate([b.astype(np.float64) for b in blocks], axis=1)
    lines = [",".join(header)]
    lines.extend(",".join(fmt % v for fmt, v in zip(formats, row, strict=True)) for row in table)
    text = "\n".join(lines) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomically(args.output, lambda tmp: Path(tmp).write_text(text))
        print(f"Wrote {table.shape[0]} rows to {args.output}.", file=sys.stderr)
    return EXIT_OK


def _cmd_impute(args: argparse.Namespace) -> int:
    import jaxgmm

    meta, params, data = _load_model_and_data(args, allow_nan=True)
    filled = np.asarray(
        jaxgmm.impute(params, data.X, method=args.method, key=args.seed), np.float64
    )
    float_fmt = "%.9g" if meta["dtype"] == "float32" else "%.17g"
    lines = [",".join(data.columns)] if data.header else []
    lines.extend(",".join(float_fmt % v for v in row) for row in filled)
    text = "\n".join(lines) + "\n"
    n_missing = int(np.isnan(data.X).sum())
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomically(args.output, lambda tmp: Path(tmp).write_text(text))
        print(
            f"Filled {n_missing} missing values; wrote {filled.shape[0]} rows to {args.output}.",
            file=sys.stderr,
        )
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from jaxgmm import io

    meta = io.load_metadata(args.model)
    _use_dtype(meta["dtype"])
    params = io.load(args.model)
    print(
        f"{args.model}: jaxgmm model (format {meta['format_version']}, written by jaxgmm "
        f"{meta['jaxgmm_version']}), K={meta['n_components']}, D={meta['n_features']}, "
        f"{meta['covariance_type']} covariances, {meta['dtype']}."
    )
    fit = meta.get("fit")
    if fit:
        print(
            f"  fit: lower bound {fit['lower_bound']:.4f} per point, {fit['n_iter']} "
            f"iterations, converged: {'yes' if fit['converged'] else 'no'}"
        )
    user = meta.get("user")
    if isinstance(user, dict):
        for key, value in user.items():
            if value is not None:
                shown = value
                if isinstance(value, float):
                    shown = f"{value:.3f}"
                elif isinstance(value, list):
                    shown = ", ".join(map(str, value))
                print(f"  {key}: {shown}")
    print("")
    columns = user.get("columns") if isinstance(user, dict) else None
    _print_components(params, columns, sys.stdout)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from jaxgmm import datasets
    from jaxgmm._options import DEFAULTS

    data_set = datasets.load(args.dataset)
    where = data_set.path if data_set.path is not None else "regenerated from its seed"
    print(f"jaxgmm demo: {data_set.description} ({where}).")
    print(
        f"The points were drawn from a {data_set.n_components}-component mixture "
        f"(seed {data_set.seed}); let's see whether BIC finds it."
    )
    data = _Data(
        X=data_set.X.astype(np.float32),
        columns=[f"x{d}" for d in range(data_set.X.shape[1])],
        header=True,
        description="",
    )
    options = dict(
        covariance_type=DEFAULTS.covariance_type,
        tol=DEFAULTS.tol,
        reg_covar=DEFAULTS.reg_covar,
        max_iter=DEFAULTS.max_iter,
        n_init=DEFAULTS.n_init,
        init=DEFAULTS.init,
        key=args.seed,
    )
    ks = parse_components(DEMO_K_RANGE)
    best, trials = _run_selection(data, ks, options, "bic", args.progress)
    _print_summary(best, data, options)
    true_k = data_set.n_components
    verdict = "matches" if best.k == true_k else "differs from"
    print(f"\nThe chosen K={best.k} {verdict} the true K={true_k}.")
    if args.no_plot:
        return EXIT_OK
    try:
        _draw(args.plot, best, data, trials, title=f"jaxgmm demo: {data_set.name}")
    except MissingPlotExtraError:
        print(
            "\nNo picture: matplotlib is not installed. For the picture, install the plot "
            "extra and run the demo again:\n"
            '    pip install -e ".[plot]"      (in a source checkout)\n'
            '    pip install "jaxgmm[plot]"    (from an index)'
        )
    return EXIT_OK
