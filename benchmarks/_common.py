"""Shared helpers of the benchmark scripts: machine description, robust timers, the
matmul floor, and Markdown/JSON result files.

Timing rules (the machines are shared and noisy):

* every number is a median of repeats, and runs being compared are interleaved;
* per-iteration EM cost excludes compilation and initialisation: a fit with
  ``max_iter = a`` and one with ``max_iter = b`` (``tol = 0`` so neither stops early)
  are timed alternately, and ``(median(t_b) - median(t_a)) / (b - a)`` is reported;
* the *floor* of a workload is the time the machine's float32 matmul takes for the
  workload's flop count, with the matmul rate measured in the same run, right next to
  the measurement it is compared with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU, cores, memory, library versions and load: what a result was measured on."""
    import jax
    import jaxlib

    info = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "jax_backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import sklearn

        info["scikit-learn"] = sklearn.__version__
    except ImportError:
        info["scikit-learn"] = None
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def machine_line(info: dict) -> str:
    """One Markdown line describing the machine."""
    mem = f", {info['memory_gib']} GiB RAM" if "memory_gib" in info else ""
    load = f"; load average at start {info['load_average'][0]}" if "load_average" in info else ""
    return (
        f"{info['cpu']}, {info['cores']} cores{mem}; JAX {info['jax']} "
        f"({info['jax_backend']}), numpy {info['numpy']}, scikit-learn "
        f"{info['scikit-learn']}, Python {info['python']}{load}"
    )


def block(x):
    """Wait for JAX arrays inside ``x`` (no-op for numpy results)."""
    try:
        import jax

        return jax.block_until_ready(x)
    except (ImportError, TypeError):
        return x


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call, waiting for JAX results."""
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        block(fn())
    return float(np.median([time_call(fn) for _ in range(repeats)]))


def interleaved_times(
    fns: dict[str, Callable[[], object]], rounds: int, repeats: dict[str, int] | None = None
) -> dict[str, list]:
    """Seconds of each call, the implementations taken in turn once per round.

    On a shared machine the load drifts; timing the implementations in turn within
    each round lets per-round ratios cancel the drift.

    Args:
        fns: name -> zero-argument call (JAX results are waited for).
        rounds: how many rounds.
        repeats: name -> consecutive calls per round (default 1); the round records
            their median, i.e. the steady-state time of a call repeated back to back
            (the first call after another library's work finds cold caches and
            sleeping threads).

    Returns:
        name -> list of ``rounds`` wall-clock times.
    """
    repeats = repeats or {}
    times: dict[str, list] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_time(fn, repeats.get(name, 1), warmup=0))
    return times


def per_iteration(
    run: Callable[[int], object],
    a: int,
    b: int,
    repeats: int,
    warmup: bool = True,
    reference: Callable[[], float] | None = None,
) -> dict:
    """Per-iteration seconds from alternating runs with ``max_iter`` a and b.

    Args:
        run: ``run(max_iter)`` performs a whole fit (its results are waited for).
        a, b: the two iteration counts, ``a < b``.
        repeats: number of (a, b) pairs timed, alternating.
        warmup: call each once first (compilation, caches).
        reference: if given, called right before every (a, b) pair; its values (e.g.
            the floor's seconds) are returned so ratios can be taken pair by pair,
            which cancels slow changes of the machine's load.

    Returns:
        dict with ``per_iter_s`` (median difference / (b - a)), ``t_a_s``, ``t_b_s``
        (medians), ``first_call_s`` (the warm-up call of ``b``, compile included),
        ``pair_per_iter_s`` (each pair's estimate) and ``reference_values``.
    """
    first = None
    if warmup:
        time_call(lambda: run(a))
        first = time_call(lambda: run(b))
    times_a, times_b, references = [], [], []
    for _ in range(repeats):
        if reference is not None:
            references.append(reference())
        times_a.append(time_call(lambda: run(a)))
        times_b.append(time_call(lambda: run(b)))
    t_a, t_b = float(np.median(times_a)), float(np.median(times_b))
    return {
        "per_iter_s": max(t_b - t_a, 0.0) / (b - a),
        "t_a_s": t_a,
        "t_b_s": t_b,
        "first_call_s": first,
        "a": a,
        "b": b,
        "pair_per_iter_s": [(tb - ta) / (b - a) for ta, tb in zip(times_a, times_b, strict=True)],
        "reference_values": references,
    }


_MATMUL_CACHE: dict = {}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate in JAX (GFLOP/s): median of an n x n product."""
    import jax
    import jax.numpy as jnp

    if n not in _MATMUL_CACHE:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
        _MATMUL_CACHE[n] = (jax.jit(lambda x: x @ x), a)
    fn, a = _MATMUL_CACHE[n]
    seconds = median_time(lambda: fn(a), repeats)
    return 2.0 * n**3 / seconds / 1e9


def full_flops(n: int, k: int, d: int) -> float:
    """Flops of one full-covariance EM iteration, 4 N K D^2 (issue 4's count)."""
    return 4.0 * n * k * d * d


def diag_flops(n: int, k: int, d: int) -> float:
    """Flops of one diagonal-covariance EM iteration, 8 N K D."""
    return 8.0 * n * k * d


def current_rss_mib() -> float | None:
    """This process's resident set size now (MiB; None where ``/proc`` is missing)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process's own memory so far (MiB).

    On Linux this is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this
    process image alone. ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a child
    started by a large parent would report the parent's peak (it is the fallback on
    other systems).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def make_blobs(
    n: int, d: int, k: int, seed: int = 0, dtype=np.float32, spread: float = 4.0
) -> np.ndarray:
    """n points around k random centres with random full covariances, generated in dtype."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, d))
    mixing = rng.normal(scale=0.3, size=(k, d, d)) + np.eye(d)
    labels = rng.integers(0, k, size=n)
    out = np.empty((n, d), dtype=dtype)
    step = 100_000  # bounds the generator's own memory (W4's peak RSS is jaxgmm's)
    for start in range(0, n, step):
        stop = min(n, start + step)
        z = rng.standard_normal((stop - start, d))
        lab = labels[start:stop]
        out[start:stop] = (np.einsum("nd,nde->ne", z, mixing[lab]) + centres[lab]).astype(dtype)
    return out


@contextlib.contextmanager
def single_threaded_blas():
    """Limit BLAS/OpenMP to one thread (scikit-learn's fastest setting on tiny problems)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def quiet_sklearn() -> None:
    """Silence scikit-learn's ConvergenceWarning (benchmarks run to max_iter on purpose)."""
    try:
        from sklearn.exceptions import ConvergenceWarning

        warnings.filterwarnings("ignore", category=ConvergenceWarning)
    except ImportError:
        pass


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table."""

    def cell(x: object) -> str:
        if x is None:
            return "–"
        if isinstance(x, float):
            if x == 0:
                return "0"
            if abs(x) >= 100:
                return f"{x:,.0f}"
            if abs(x) >= 10:
                return f"{x:.1f}"
            return f"{x:.3g}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def report_heading(title: str, info: dict, quick: bool) -> list[str]:
    """The first lines of every report: ``title`` (marked on a --quick run) and the machine."""
    return [
        title + (" (quick smoke run)" if quick else ""),
        "",
        f"Machine: {machine_line(info)}.",
        "",
    ]


def write_results(name: str, markdown: str, data: dict, out_dir: Path | None = None) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` to the results folder; returns the .md path."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    path = out / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every script takes: --quick and --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and few repeats: a smoke run"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for the .md/.json/.png results (default {RESULTS_DIR})",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="enable jaxgmm's persistent compilation cache (faster reruns; compile "
        "times then measure cache loads)",
    )
    return parser


def setup_jax(cache: bool) -> None:
    """Enable jaxgmm's persistent compilation cache if asked."""
    if cache:
        from jaxgmm.compilation_cache import enable_compilation_cache

        enable_compilation_cache()


def start_run(
    doc: str, argv: Sequence[str] | None, *, fits_here: bool = True
) -> tuple[argparse.Namespace, dict]:
    """Parse a script's arguments and describe the machine, before anything is timed.

    Args:
        doc: the script's docstring; its first line is the ``--help`` description.
        argv: the arguments (default: ``sys.argv[1:]``).
        fits_here: the script fits in this process, so ``--cache`` is honoured
            (:func:`setup_jax`) and scikit-learn's ConvergenceWarning silenced first.
            False where the fits run in child processes that set themselves up.

    Returns:
        The parsed arguments and :func:`machine_info`.
    """
    args = base_parser(doc.splitlines()[0]).parse_args(argv)
    if fits_here:
        setup_jax(args.cache)
        quiet_sklearn()
    return args, machine_info()


def publish(name: str, markdown: str, data: dict, out_dir: Path | None) -> Path:
    """Write the report (:func:`write_results`), print it, and return the .md path."""
    path = write_results(name, markdown, data, out_dir)
    print(markdown)
    return path


def run_child(code: str, args: Sequence[str], *, env: dict[str, str], timeout: float) -> dict:
    """Run ``python -c code *args`` in a fresh process; returns its last stdout line's JSON.

    A failing or overrunning child raises :class:`subprocess.CalledProcessError` or
    :class:`subprocess.TimeoutExpired`.
    """
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=timeout,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


_CALL_IN_CHILD = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
function = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])
print(json.dumps(function(json.loads(sys.argv[4])), default=float))
"""


def call_in_child(
    module: str, function: str, spec: dict, *, env: dict[str, str], timeout: float
) -> dict:
    """``module.function(spec)`` in a fresh process with environment ``env``; its result.

    The function takes and returns JSON-serialisable dicts. A failing child raises
    RuntimeError with the end of its stderr (an overrunning one,
    :class:`subprocess.TimeoutExpired`).
    """
    root = str(Path(__file__).resolve().parents[1])
    try:
        return run_child(
            _CALL_IN_CHILD, [root, module, function, json.dumps(spec)], env=env, timeout=timeout
        )
    except subprocess.CalledProcessError as err:
        raise RuntimeError(
            f"{module}.{function} failed in a child process:\n{err.stderr[-4000:]}"
        ) from err


def device_peak_mib() -> float | None:
    """Peak memory in use on JAX's first device so far (MiB), or None (no statistics).

    Accelerator backends report their allocator's ``peak_bytes_in_use``; the CPU
    backend keeps no statistics (``memory_stats()`` is None).
    """
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20
