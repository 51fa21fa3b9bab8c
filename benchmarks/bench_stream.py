"""W5, data beyond memory: exact EM streamed from a float32 ``.npy`` file with
``jaxgmm.fit_stream`` -- seconds per iteration against reading the file once and
against the in-memory cost, and peak memory.

* streamed: ``fit_stream`` on an N x 8 float32 file, K = 8, full covariances, from
  given initial parameters; seconds per iteration from fits with ``max_iter`` a and b
  (tol 0), so the first pass (the scan) and compilation cancel;
* (a) reading the file once with the same chunked reader, nothing computed;
* (b) ``jaxgmm.fit`` per iteration on the first 10^7 rows in memory, times N / 10^7;
* target: streamed <= 1.3 x max(a, b);
* memory: a child process fits an M x 8 float32 file (M = 5 x 10^7: 1.5 GiB); its
  peak resident set (VmHWM) and anonymous memory (RssAnon) are compared with the same
  process after importing JAX and compiling on a small file. Target: < 1 GiB above.

The files are written to ``--dir`` (default the system's temporary folder) in blocks
and deleted afterwards. Run:
``python -m benchmarks.bench_stream [--quick] [--n N] [--memory-n M] [--out DIR]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    base_parser,
    call_in_child,
    machine_info,
    markdown_table,
    publish,
    report_heading,
)

D, K = 8, 8
SUBSET = 10_000_000


def write_npy(path: Path, n: int, d: int = D, k: int = K, seed: int = 0) -> None:
    """Write an (n, d) float32 mixture sample to ``path`` in blocks (bounded memory)."""
    from numpy.lib import format as npy_format

    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(k, d))
    mixing = rng.normal(scale=0.3, size=(k, d, d)) + np.eye(d)
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)}
        )
        step = 1_000_000
        for start in range(0, n, step):
            m = min(step, n - start)
            labels = rng.integers(0, k, size=m)
            block = rng.standard_normal((m, d), dtype=np.float32)
            for j in range(k):  # one small matrix product per component
                rows = labels == j
                block[rows] = block[rows] @ mixing[j].astype(np.float32) + centres[j]
            f.write(block.astype("<f4").tobytes())


def start_params(path: Path) -> dict:
    """Initial parameters from the file's first rows (the same for every fit)."""
    X = np.load(path, mmap_mode="r")[: 10 * K].astype(np.float64)
    return dict(
        weights_init=np.full(K, 1.0 / K),
        means_init=X[::10][:K],
        precisions_init=np.broadcast_to(np.eye(D), (K, D, D)).copy(),
    )


def read_once(path: Path) -> float:
    """Seconds to read the whole file once with fit_stream's reader."""
    from jaxgmm._sources import NpyFile

    reader = NpyFile(path, 2**22 // D)
    start = time.perf_counter()
    for _ in reader.blocks():
        pass
    return time.perf_counter() - start


def measure_speed(spec: dict) -> dict:
    """Streamed and in-memory seconds per iteration, and the read time, in rounds.

    Each round times, in turn: reading the file once, ``fit_stream`` with ``max_iter``
    a and b, and ``fit`` on the in-memory subset with a and b; the per-round ratio
    cancels slow changes of the machine's load.
    """
    import jax

    import jaxgmm

    path = Path(spec["path"])
    start = start_params(path)
    # In memory, fixed costs (checks, padding, the copy to the device) are noisy
    # next to one iteration on the subset: more iterations separate the two runs.
    a, b, b_memory = spec["a"], spec["b"], spec["b_memory"]
    subset = min(spec["subset"], spec["n"])
    X = np.load(path, mmap_mode="r")[:subset].copy()

    def streamed(max_iter: int):
        result = jaxgmm.fit_stream(path, K, max_iter=max_iter, tol=0.0, **start)
        return jax.block_until_ready(result.params.means)

    def in_memory(max_iter: int):
        result = jaxgmm.fit(X, K, max_iter=max_iter, tol=0.0, **start)
        return jax.block_until_ready(result.params.means)

    # Compile: the small file's chunks have the big file's shape; the subset itself.
    for max_iter in (a, b):
        jaxgmm.fit_stream(spec["small"], K, max_iter=max_iter, tol=0.0, **start)
    for max_iter in (a, b_memory):
        in_memory(max_iter)
    rounds = []
    for _ in range(spec["rounds"]):
        read = read_once(path)
        times = {}
        for name, fn, last in (("stream", streamed, b), ("memory", in_memory, b_memory)):
            for max_iter in (a, last):
                began = time.perf_counter()
                fn(max_iter)
                times[name, max_iter] = time.perf_counter() - began
        stream = (times["stream", b] - times["stream", a]) / (b - a)
        memory = (times["memory", b_memory] - times["memory", a]) / (b_memory - a)
        memory *= spec["n"] / subset
        rounds.append(
            {
                "read_s": read,
                "stream_per_iter_s": stream,
                "stream_a_s": times["stream", a],
                "stream_b_s": times["stream", b],
                "memory_scaled_per_iter_s": memory,
                "ratio": stream / max(read, memory),
            }
        )
    median = {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
    return {
        "n": spec["n"],
        "subset": subset,
        "a": a,
        "b": b,
        "b_memory": b_memory,
        "rounds": rounds,
        "median": median,
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def measure_memory(spec: dict) -> dict:
    """In a fresh process: baseline after JAX and a small fit, then the big streamed fit."""
    import jaxgmm

    path, small = Path(spec["path"]), Path(spec["small"])
    start = start_params(path)
    jaxgmm.fit_stream(small, K, max_iter=2, tol=0.0, **start)  # imports, compiles
    base_hwm, base_anon = _status_kib("VmHWM"), _status_kib("RssAnon")
    began = time.perf_counter()
    jaxgmm.fit_stream(path, K, max_iter=spec["max_iter"], tol=0.0, **start)
    seconds = time.perf_counter() - began
    return {
        "n": spec["n"],
        "max_iter": spec["max_iter"],
        "seconds": seconds,
        "baseline_hwm_mib": base_hwm / 1024,
        "baseline_anon_mib": base_anon / 1024,
        "peak_hwm_mib": _status_kib("VmHWM") / 1024,
        "end_anon_mib": _status_kib("RssAnon") / 1024,
        "file_mib": os.path.getsize(path) / 2**20,
    }


def render(info: dict, speed: dict, memory: dict, quick: bool, folder: str) -> str:
    """The Markdown report."""
    n, subset, median = speed["n"], speed["subset"], speed["median"]
    per_iter, read = median["stream_per_iter_s"], median["read_s"]
    scaled, ratio = median["memory_scaled_per_iter_s"], median["ratio"]
    extra = memory["peak_hwm_mib"] - memory["baseline_hwm_mib"]
    full_size = n >= 100_000_000
    lines = [
        *report_heading("# W5: data beyond memory (streamed EM from disk)", info, quick),
        f"`fit_stream` on an N x {D} float32 `.npy` file in {folder}, K={K}, full "
        "covariances, from given initial parameters; seconds per iteration from fits "
        f"with max_iter {speed['a']} and {speed['b']} (tol 0). (a): "
        "reading the file once with the same chunked reader (the file is in the page "
        "cache, as it is for the fit's passes). (b): "
        f"`jaxgmm.fit` per iteration on the first {subset:,} rows in memory (max_iter "
        f"{speed['a']} and {speed['b_memory']}), times "
        f"N / {subset:,}. Medians of {len(speed['rounds'])} rounds, each timing all "
        "of them in turn; the ratio is the median of the rounds' ratios.",
        "",
    ]
    if not full_size:
        lines += [
            f"**N = {n:,}, not the issue's 10^8**: on this shared 2-core machine a 10^8-row "
            "run takes too long; the method is the same (`--n 100000000` runs it).",
            "",
        ]
    lines += [
        markdown_table(
            [
                "N",
                "streamed s / iter",
                "(a) read once (s)",
                "(b) in-memory s / iter, scaled",
                "streamed / max(a, b)",
                "target",
            ],
            [[f"{n:,}", per_iter, read, scaled, ratio, "≤ 1.3"]],
        ),
        "",
        f"Memory: a child process fits an {memory['n']:,} x {D} float32 file "
        f"({memory['file_mib']:,.0f} MiB) for {memory['max_iter']} iterations "
        f"({memory['seconds']:.0f} s). Baseline: the same process after importing JAX and "
        "fitting a small file (compiled programs included).",
        "",
        markdown_table(
            [
                "rows",
                "baseline VmHWM (MiB)",
                "peak VmHWM (MiB)",
                "peak above baseline (MiB)",
                "RssAnon at end (MiB)",
                "target",
            ],
            [
                [
                    f"{memory['n']:,}",
                    memory["baseline_hwm_mib"],
                    memory["peak_hwm_mib"],
                    extra,
                    memory["end_anon_mib"],
                    "< 1024 above baseline",
                ]
            ],
        ),
        "",
        f"Targets: speed {'met' if ratio <= 1.3 else 'NOT met'} ({ratio:.2f} x); memory "
        f"{'met' if extra < 1024 else 'NOT met'} ({extra:.0f} MiB above baseline).",
    ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Run W5; returns the Markdown results path."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="rows of the speed file")
    parser.add_argument("--memory-n", type=int, default=None, help="rows of the memory file")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files")
    args = parser.parse_args(argv)
    info = machine_info()
    if args.quick:
        n, memory_n, subset, a, b, repeats = 20_000, 20_000, 10_000, 1, 2, 1
        b_memory = 3
    else:
        n, memory_n, subset, a, b, repeats = 100_000_000, 50_000_000, SUBSET, 1, 3, 3
        b_memory = 6
    n, memory_n = args.n or n, args.memory_n or memory_n
    folder = Path(tempfile.mkdtemp(prefix="jaxgmm-w5-", dir=args.dir))
    env = dict(os.environ)
    try:
        big, small = folder / "speed.npy", folder / "small.npy"
        write_npy(small, min(n, memory_n, 600_000))  # one full chunk: the same programs
        write_npy(big, n)
        speed = call_in_child(
            "benchmarks.bench_stream",
            "measure_speed",
            dict(
                path=str(big),
                n=n,
                a=a,
                b=b,
                b_memory=b_memory,
                rounds=repeats,
                small=str(small),
                subset=subset,
            ),
            env=env,
            timeout=6 * 3600,
        )
        if memory_n != n:
            os.remove(big)
            big = folder / "memory.npy"
            write_npy(big, memory_n)
        memory = call_in_child(
            "benchmarks.bench_stream",
            "measure_memory",
            dict(path=str(big), small=str(small), n=memory_n, max_iter=2),
            env=env,
            timeout=6 * 3600,
        )
    finally:
        for path in folder.glob("*.npy"):
            os.remove(path)
        folder.rmdir()
    markdown = render(info, speed, memory, args.quick, "the temporary folder")
    data = {"machine": info, "speed": speed, "memory": memory}
    return publish("bench_stream", markdown, data, args.out)


if __name__ == "__main__":
    main()
