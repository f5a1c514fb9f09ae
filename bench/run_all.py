"""`make bench`: every performance figure beside its target, PASS/FAIL, and a results file.

Runs each benchmark module's `figures(work)` in turn (each measures its ratios side by side in one
run), prints one table, and writes bench/results/performance/<module>.json for each module run
(with the command that made it and the machine's load before and after: a busy machine skews
ratios, see docs/tutorials/performance.md), then bench/results/performance.md, the table of every
module's latest results. Exit 1 when any target is missed. `--only NAME ...` runs a subset.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench"), str(REPO)]

from figures import Figure, save, table  # noqa: E402

MODULES = [
    "startup_bench",
    "read_bench",
    "convert_bench",
    "quantize_bench",
    "fanout_bench",
    "s3_bench",
    "benchmark_bench",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=MODULES, default=MODULES)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    started = time.monotonic()
    measured: list[Figure] = []
    folder = args.results / "performance"
    folder.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        print(f"== {name}", flush=True)
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix=f"parquant-{name}-") as work:
            found = importlib.import_module(name).figures(Path(work))
        print(table(found), flush=True)
        save(found, folder / f"{name}.json", f"python bench/run_all.py --only {name}", load)
        measured += found
    print(f"\n== all figures ({time.monotonic() - started:.0f} s)\n{table(measured)}")
    failed = [f for f in measured if not f.passed]
    print(f"{len(measured) - len(failed)} of {len(measured)} targets met")
    write_summary(folder, args.results / "performance.md")
    return 1 if failed else 0


def write_summary(folder: Path, target: Path) -> None:
    """One table of every module's latest figures, each module with the command and load it ran under."""
    lines = [f"# Performance on {socket.gethostname().split('.')[0] or 'this host'} (`make bench`)", ""]
    for name in MODULES:
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        machine = data["machine"]
        figures = [Figure(**{k: v for k, v in f.items() if k != "passed"}) for f in data["figures"]]
        lines += [
            f"## {name}",
            "",
            f"`{data['command']}` on {machine['cpus']} CPUs ({machine['cpu_model']}), load average "
            f"{machine['load_average_at_start']:.2f} before, {machine['load_average_at_end']:.2f} after.",
            "",
            table(figures),
            "",
        ]
    target.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
