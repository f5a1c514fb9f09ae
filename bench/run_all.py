"""`make bench`: every performance figure beside its target, PASS/FAIL, and a results file.

Runs each benchmark module's `figures(work)` in turn (each measures its ratios side by side in one
run), prints one table, and writes bench/results/performance-<host>.json and .md with the command
that made them and the machine's load before and after (a busy machine skews ratios: see
docs/tutorials/performance.md). Exit 1 when any target is missed. `--only NAME ...` runs a subset.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench"), str(REPO)]

from figures import Figure, save, table  # noqa: E402

MODULES = ["startup_bench", "read_bench", "convert_bench", "quantize_bench", "s3_bench", "benchmark_bench"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=MODULES, default=MODULES)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    started_load, started = os.getloadavg()[0], time.monotonic()
    measured: list[Figure] = []
    for name in args.only:
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix=f"parquant-{name}-") as folder:
            found = importlib.import_module(name).figures(Path(folder))
        print(table(found), flush=True)
        measured += found
    print(f"\n== all figures ({time.monotonic() - started:.0f} s)\n{table(measured)}")
    failed = [f for f in measured if not f.passed]
    print(f"{len(measured) - len(failed)} of {len(measured)} targets met")
    command = "python bench/run_all.py" + (f" --only {' '.join(args.only)}" if args.only != MODULES else "")
    stem = args.results / f"performance-{socket.gethostname().split('.')[0] or 'host'}"
    save(measured, stem.with_suffix(".json"), command, started_load)
    stem.with_suffix(".md").write_text(f"Command: `{command}`\n\n{table(measured)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
