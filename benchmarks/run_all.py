"""Run every benchmark and write ``benchmarks/results/README.md`` from their reports.

Run: ``python -m benchmarks.run_all [--quick] [--out DIR] [--only NAME ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    bench_bign,
    bench_blocks,
    bench_compile,
    bench_compile_loop,
    bench_em,
    bench_latency,
    bench_many,
    bench_missing,
    bench_online,
    bench_realdata,
    bench_restarts,
    bench_sharded,
    bench_stream,
)
from benchmarks._common import RESULTS_DIR, base_parser

SCRIPTS = {
    "em": bench_em,
    "restarts": bench_restarts,
    "many": bench_many,
    "bign": bench_bign,
    "compile": bench_compile,
    "compile_loop": bench_compile_loop,
    "latency": bench_latency,
    "realdata": bench_realdata,
    "sharded": bench_sharded,
    "online": bench_online,
    "blocks": bench_blocks,
    "missing": bench_missing,
    "stream": bench_stream,
}


def main(argv=None) -> Path:
    """Run the selected benchmarks and concatenate their Markdown reports."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCRIPTS), default=None)
    parser.add_argument(
        "--compose", action="store_true", help="only rebuild README.md from existing reports"
    )
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR
    forwarded = (["--quick"] if args.quick else []) + ["--out", str(out)]
    forwarded += ["--cache"] if args.cache else []
    for name in [] if args.compose else args.only or SCRIPTS:
        print(f"=== {name} ===", flush=True)
        SCRIPTS[name].main(forwarded)
    parts = [
        "# jaxgmm benchmark results",
        "",
        "Written by `python -m benchmarks.run_all`; each section is also in its own file.",
    ]
    for name in SCRIPTS:
        path = out / f"{SCRIPTS[name].__name__.rsplit('.', 1)[1]}.md"
        if path.exists():
            parts += ["", path.read_text().replace("\n# ", "\n## ").replace("# ", "## ", 1)]
    readme = out / "README.md"
    readme.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {readme}")
    return readme


if __name__ == "__main__":
    main()
