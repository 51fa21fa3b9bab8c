"""The jaxgmm command line, end to end on the shipped data.

Most behaviours run in-process through ``main([...])`` (compiled fits are shared between
tests); a handful of tests run the real console script / ``python -m jaxgmm`` in a
subprocess.
"""

import contextlib
import io as stdio
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxgmm
from jaxgmm import _progress, datasets, io
from jaxgmm.cli import main, parse_components

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "data" / "toy_2d.txt"
X32 = datasets.load("toy_2d").X.astype(np.float32)


def run(*args) -> tuple[int, str, str]:
    """main(args) with stdout and stderr captured."""
    out, err = stdio.StringIO(), stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxgmm: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def fit_k4(workdir):
    """``jaxgmm fit toy_2d.txt -k 4 -o model.npz --plot fit.png`` and the same fit via the API."""
    model, picture = workdir / "model.npz", workdir / "fit.png"
    code, out, err = run("fit", TOY, "-k", "4", "-o", model, "--plot", picture)
    expected = jaxgmm.fit(X32, 4, key=0)
    return dict(code=code, out=out, err=err, model=model, picture=picture, expected=expected)


# ---------------------------------------------------------------- fit / predict / info


def test_fit_prints_a_summary_of_the_same_fit_as_the_api(fit_k4):
    assert fit_k4["code"] == 0, fit_k4["err"]
    out, expected = fit_k4["out"], fit_k4["expected"]
    assert "Read " in out and "250 rows x 2 columns (whitespace-delimited, no header)" in out
    assert "K=4 components, full covariances, fitted to 250 points x 2 features" in out
    assert f"converged       yes, after {int(expected.n_iter)} EM iterations" in out
    for w in np.asarray(expected.params.weights):
        assert f"{w:.4f}" in out
    bic = float(re.search(r"BIC\s+(-?[\d.]+)", out).group(1))
    aic = float(re.search(r"AIC\s+(-?[\d.]+)", out).group(1))
    assert bic == pytest.approx(float(jaxgmm.bic(expected.params, X32)), abs=0.01)
    assert aic == pytest.approx(float(jaxgmm.aic(expected.params, X32)), abs=0.01)
    assert re.search(r"time\s+[\d.]+ s", out)
    assert fit_k4["err"] == ""  # no progress bars when stderr is not a terminal


def test_fit_saves_a_model_that_round_trips_exactly(fit_k4):
    loaded = io.load(fit_k4["model"])
    expected = fit_k4["expected"].params
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), getattr(expected, name))
    meta = io.load_metadata(fit_k4["model"])
    assert meta["user"]["source"] == str(TOY)
    assert meta["fit"]["n_iter"] == int(fit_k4["expected"].n_iter)


def test_fit_draws_a_png(fit_k4):
    assert fit_k4["picture"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Wrote the picture to {fit_k4['picture']}" in fit_k4["out"]


def test_predict_writes_exact_labels_probabilities_and_log_likelihoods(fit_k4, workdir):
    out_csv = workdir / "pred.csv"
    code, out, err = run("predict", fit_k4["model"], TOY, "-o", out_csv)
    assert code == 0, err
    assert out == ""
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "label,log_likelihood,proba_0,proba_1,proba_2,proba_3"
    table = np.loadtxt(out_csv, delimiter=",", skiprows=1)
    params = io.load(fit_k4["model"])
    np.testing.assert_array_equal(table[:, 0].astype(int), jaxgmm.predict(params, X32))
    np.testing.assert_array_equal(table[:, 1].astype(np.float32), jaxgmm.score_samples(params, X32))
    np.testing.assert_array_equal(
        table[:, 2:].astype(np.float32), jaxgmm.predict_proba(params, X32)
    )


def test_predict_to_stdout_with_one_kind_of_output(fit_k4):
    code, out, err = run("predict", fit_k4["model"], TOY, "--what", "labels")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "label" and len(lines) == 251
    expected = np.asarray(jaxgmm.predict(fit_k4["expected"].params, X32))
    np.testing.assert_array_equal(np.array(lines[1:], dtype=int), expected)
    assert "Read " in err  # the chatter goes to stderr, the table to stdout


def test_plot_draws_a_saved_model_over_a_file(fit_k4, workdir):
    picture = workdir / "model-on-toy.png"
    code, out, err = run("plot", fit_k4["model"], TOY, "-o", picture)
    assert code == 0, err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Wrote the picture to {picture}" in out


def test_info_describes_the_model(fit_k4):
    code, out, _ = run("info", fit_k4["model"])
    assert code == 0
    assert "jaxgmm model (format 1" in out
    assert "K=4, D=2, full covariances, float32" in out
    for mean in np.asarray(fit_k4["expected"].params.means)[:, 0]:
        assert f"{mean:.4g}" in out


def test_columns_are_picked_by_name_and_remembered_by_the_model(fit_k4, workdir):
    table = workdir / "with_id.csv"
    rows = [f"{i},{x:.3f},{y:.3f}" for i, (x, y) in enumerate(X32.astype(np.float64))]
    table.write_text("id,x,y\n" + "\n".join(rows) + "\n")
    model = workdir / "xy.npz"
    code, out, err = run("fit", table, "-k", "4", "--columns", "x,y", "-o", model)
    assert code == 0, err
    assert "using columns x, y" in out
    np.testing.assert_array_equal(np.asarray(io.load(model).means), fit_k4["expected"].params.means)
    # predict finds the model's columns (x, y) in the file by name, ignoring "id".
    code, out, err = run("predict", model, table, "--what", "labels")
    assert code == 0, err
    labels = np.array(out.splitlines()[1:], dtype=int)
    np.testing.assert_array_equal(labels, jaxgmm.predict(fit_k4["expected"].params, X32))
    code, _, err = run("fit", table, "-k", "4", "--columns", "x,z")
    assert_one_line_error(code, err, "has no column 'z'; its columns are id, x, y")


def test_npy_input_fits_like_the_text_file(fit_k4, workdir):
    npy = workdir / "toy.npy"
    np.save(npy, datasets.load("toy_2d").X)
    model = workdir / "from_npy.npz"
    code, out, err = run("fit", npy, "-k", "4", "-o", model)
    assert code == 0, err
    assert "250 rows x 2 columns (.npy array)" in out
    np.testing.assert_array_equal(np.asarray(io.load(model).means), fit_k4["expected"].params.means)


def test_float64_fits_in_float64(workdir):
    model = workdir / "m64.npz"
    code, out, err = run("fit", TOY, "-k", "2", "--dtype", "float64", "-o", model)
    assert code == 0, err
    assert "float64" in out
    assert io.load_metadata(model)["dtype"] == "float64"
    expected = jaxgmm.fit(datasets.load("toy_2d").X, 2, key=0)
    np.testing.assert_array_equal(np.asarray(io.load(model).means), expected.params.means)


# ---------------------------------------------------------------- choosing K


def _table(out: str) -> dict[int, tuple[float, float]]:
    pattern = r"^[* ]\s+(\d+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s.*\s(?:yes|no)\s+[\d.]+s$"
    rows = re.findall(pattern, out, flags=re.M)
    return {int(k): (float(b), float(a)) for k, b, a in rows}


def test_fit_without_components_chooses_k_by_bic_and_says_why(fit_k4):
    code, out, err = run("fit", TOY)
    assert code == 0, err
    assert "No --components given: choosing K by BIC." in out
    table = _table(out)
    assert sorted(table) == list(range(1, 9))
    best = min(table, key=lambda k: table[k][0])
    assert best == 4  # the true K of the toy data
    runner_up = sorted(table, key=lambda k: table[k][0])[1]
    gap = table[runner_up][0] - table[4][0]
    assert f"Chose K=4: lowest BIC ({table[4][0]:.1f}) of K=1..8" in out
    assert f"the runner-up K={runner_up} is {gap:.1f} higher" in out
    assert re.search(r"^\*\s+4\s", out, flags=re.M)
    assert "K=4 components" in out
    # The K=4 row is the same fit as `fit -k 4`.
    k4_bic = float(re.search(r"BIC\s+(-?[\d.]+)", fit_k4["out"]).group(1))
    assert table[4][0] == pytest.approx(k4_bic, abs=1e-3)


def test_select_reports_every_k_and_saves_the_best(workdir):
    model, picture = workdir / "best.npz", workdir / "select.png"
    code, out, err = run(
        "select", TOY, "-k", "1..3", "--criterion", "aic", "-o", model, "--plot", picture
    )
    assert code == 0, err
    table = _table(out)
    assert sorted(table) == [1, 2, 3]
    best = min(table, key=lambda k: table[k][1])
    assert f"Chose K={best}: lowest AIC" in out
    assert "(* lowest AIC" in out
    assert "the largest tried: try a wider range" in out  # best is K=3, the edge
    assert io.load_metadata(model)["n_components"] == best
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_progress_bars_only_when_asked(workdir):
    code, _, err = run("select", TOY, "-k", "1..2", "--progress")
    assert code == 0
    assert "fitting K" in err and "EM fit, K=2" in err
    code, _, err = run("select", TOY, "-k", "1..2", "--no-progress")
    assert code == 0 and err == ""


def test_progress_default_follows_the_terminal(monkeypatch):
    class Stream(stdio.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert _progress.progress_enabled(None) is True
    assert _progress.progress_enabled(False) is False
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert _progress.progress_enabled(None) is False
    assert _progress.progress_enabled(True) is True
    assert list(_progress.progress_bar([1, 2, 3], enabled=None)) == [1, 2, 3]
    assert sys.stderr.getvalue() == ""


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("0", None), ("off", None), ("{tmp}/mine", "{tmp}/mine"), ("", "{tmp}/xdg/jaxgmm/xla")],
)
def test_compilation_cache_setting(monkeypatch, tmp_path, setting, expected):
    import jax

    from jaxgmm import _program_cache, cli

    updates = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.update({name: value}))
    monkeypatch.setattr(_program_cache, "_folder", None)  # restored after the test
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("JAXGMM_COMPILATION_CACHE", setting.format(tmp=tmp_path))
    cli._enable_compilation_cache()
    if expected is None:
        assert updates == {}
    else:
        folder = expected.format(tmp=tmp_path)
        assert updates["jax_compilation_cache_dir"] == folder
        assert Path(folder).is_dir()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4", [4]), ("1..5", [1, 2, 3, 4, 5]), ("2-4", [2, 3, 4]), ("8,2,4,2", [2, 4, 8])],
)
def test_parse_components(text, expected):
    assert parse_components(text) == expected


# ---------------------------------------------------------------- demo


def test_demo_fits_prints_and_draws(workdir):
    picture = workdir / "demo.png"
    code, out, err = run("demo", "--plot", picture)
    assert code == 0, err
    assert "Chose K=4" in out
    assert "The chosen K=4 matches the true K=4." in out
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_demo_without_matplotlib_still_fits_and_explains(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    picture = workdir / "never.png"
    code, out, err = run("demo", "--plot", picture)
    assert code == 0, err
    assert "The chosen K=4 matches the true K=4." in out
    assert "No picture: matplotlib is not installed" in out
    assert 'pip install -e ".[plot]"' in out
    assert not picture.exists()


def test_fit_plot_without_matplotlib_is_an_error_after_saving(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    model = workdir / "noplot.npz"
    code, out, err = run("fit", TOY, "-k", "4", "-o", model, "--plot", workdir / "x.png")
    assert_one_line_error(code, err, r'pip install "jaxgmm\[plot\]"')
    assert model.exists()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("x,y\n1,2\n3,oops\n4,5\n", r"line 3, column 2: 'oops' is not a number"),
        ("x,y\n1,2\n3,4,5\n", r"line 3 has 3 values but the header has 2"),
        ("", r"is empty"),
        ("x,y\n1,2\nnan,4\n3,4\n", r"non-finite value"),
    ],
)
def test_malformed_data_is_one_line_and_exit_1(workdir, text, pattern):
    path = workdir / "bad.csv"
    path.write_text(text)
    code, _, err = run("fit", path, "-k", "1")
    assert_one_line_error(code, err, pattern)


def test_missing_files_and_non_models(fit_k4, workdir):
    code, _, err = run("fit", workdir / "absent.csv")
    assert_one_line_error(code, err, r"data file '.*absent.csv' does not exist")
    code, _, err = run("predict", TOY, TOY)
    assert_one_line_error(code, err, r"is not a jaxgmm model file")
    code, _, err = run("info", workdir / "absent.npz")
    assert_one_line_error(code, err, r"model file '.*absent.npz' does not exist")
    five = ROOT / "data" / "mixture_5d.csv"
    code, _, err = run("predict", fit_k4["model"], five)
    assert_one_line_error(code, err, r"has 5 features, but the model was fitted on 2")


def test_too_many_components_and_unwritable_output(workdir):
    tiny = workdir / "tiny.csv"
    tiny.write_text("x\n1\n2\n")
    code, _, err = run("fit", tiny, "-k", "3")
    assert_one_line_error(code, err, r"n_samples >= n_components")
    code, _, err = run("fit", TOY, "-k", "1", "-o", workdir / "no" / "such" / "dir.npz")
    assert_one_line_error(code, err, r"No such file or directory")


@pytest.mark.parametrize(
    "args",
    [[], ["fit"], ["fit", "x.csv", "-k", "abc"], ["fit", "x.csv", "-k", "0"], ["nope"]],
)
def test_usage_errors_exit_2(args):
    code, _, err = run(*args)
    assert code == 2
    assert "usage: jaxgmm" in err


def test_help_and_version():
    code, out, _ = run("--help")
    assert code == 0
    for command in ("fit", "select", "predict", "plot", "info", "demo"):
        assert command in out
    code, out, _ = run("fit", "--help")
    assert code == 0
    for option in ("--components", "--covariance-type", "--restarts", "--tol", "--max-iter"):
        assert option in out
    for option in ("--seed", "--dtype", "--output", "--plot", "--progress", "--delimiter"):
        assert option in out
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"jaxgmm {jaxgmm.__version__}"


# ---------------------------------------------------------------- real subprocesses


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("xla-cache")
    return {**os.environ, "JAXGMM_COMPILATION_CACHE": str(cache)}


def _console_script() -> str:
    script = Path(sys.executable).parent / "jaxgmm"
    if not script.exists():
        pytest.skip("the jaxgmm console script is not installed next to this Python")
    return str(script)


def _run(cmd, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_subprocess_help(env, workdir):
    done = _run([sys.executable, "-m", "jaxgmm", "--help"], env, workdir)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: jaxgmm")


def test_subprocess_fit_then_predict(env, workdir):
    script = _console_script()
    done = _run([script, "fit", TOY, "-k", "4", "-o", "sub.npz"], env, workdir)
    assert done.returncode == 0, done.stderr
    assert "K=4 components" in done.stdout
    done = _run([script, "predict", "sub.npz", TOY, "-o", "sub.csv"], env, workdir)
    assert done.returncode == 0, done.stderr
    labels = np.loadtxt(workdir / "sub.csv", delimiter=",", skiprows=1)[:, 0].astype(int)
    params = io.load(workdir / "sub.npz")
    np.testing.assert_array_equal(labels, jaxgmm.predict(params, X32))


def test_subprocess_demo_writes_its_picture(env, tmp_path):
    done = _run([_console_script(), "demo"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "matches the true K=4" in done.stdout
    assert (tmp_path / "jaxgmm-demo.png").read_bytes()[:4] == b"\x89PNG"


def test_subprocess_bad_input_is_one_line_without_traceback(env, workdir):
    bad = workdir / "ragged.txt"
    bad.write_text("1 2\n3\n")
    for target, pattern in [(bad, "line 2 has 1 values"), ("missing.csv", "does not exist")]:
        done = _run([sys.executable, "-m", "jaxgmm", "fit", target], env, workdir)
        assert done.returncode == 1
        assert done.stdout == ""
        assert_one_line_error(done.returncode, done.stderr, pattern)


# ---------------------------------------------------------------- missing values


def test_missing_cells_fit_with_marginalize_and_impute(workdir):
    """Empty cells and ``nan`` are missing; fit --nan-policy marginalize, then impute."""
    X = X32[:120].copy()
    rng = np.random.default_rng(0)
    X[rng.random(X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 1.0
    lines = ["x,y"]
    for i, row in enumerate(X):
        cells = ["" if np.isnan(v) else repr(float(v)) for v in row]
        if i == 3:
            cells[1] = "nan"
            X[3, 1] = np.nan
        lines.append(",".join(cells))
    data = workdir / "holes.csv"
    data.write_text("\n".join(lines) + "\n")
    code, out, err = run("fit", data, "-k", "2")
    assert_one_line_error(code, err, "nan_policy")
    model = workdir / "holes.npz"
    code, out, err = run("fit", data, "-k", "2", "--nan-policy", "marginalize", "-o", model)
    assert code == 0, err
    assert "missing values" in out
    expected = jaxgmm.fit(X, 2, key=0, nan_policy="marginalize")
    np.testing.assert_allclose(io.load(model).means, expected.params.means, rtol=1e-5)
    filled = workdir / "filled.csv"
    code, out, err = run("impute", model, data, "-o", filled)
    assert code == 0, err
    table = np.loadtxt(filled, delimiter=",", skiprows=1)
    np.testing.assert_allclose(table, jaxgmm.impute(io.load(model), X), rtol=1e-6)
    assert filled.read_text().splitlines()[0] == "x,y"
