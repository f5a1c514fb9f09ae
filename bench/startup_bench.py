"""Process start-up: what `parquant import/export/inspect` pay in imports before any work.

Each figure is the median wall time (of 15, in fresh processes) of importing the CLI and the
stage's module, the whole cost a run pays before it touches a byte. Target: <= 0.3 s each. A
bare interpreter and `parquant --help` are printed beside them for context.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]

from figures import Figure, table  # noqa: E402

STAGES = {"import": "hf_import", "export": "hf_export", "inspect": "inspect"}
RUNS = 15


def wall(argv: list[str]) -> float:
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def figures(work: Path) -> list[Figure]:
    bare = wall([sys.executable, "-c", "pass"])
    help_ = wall([sys.executable, "-m", "parquant_cli", "--help"])
    result = []
    for stage, module in STAGES.items():
        seconds = wall([sys.executable, "-c", f"import parquant_cli.main, parquant.stages.{module}"])
        result.append(
            Figure(
                "1 conversion",
                f"start-up of `parquant {stage}` (imports)",
                seconds,
                0.3,
                at_least=False,
                unit=" s",
                detail=f"bare interpreter {bare:.3f} s, `parquant --help` {help_:.3f} s",
            )
        )
    return result


if __name__ == "__main__":
    measured = figures(Path("."))
    print(table(measured))
    sys.exit(0 if all(f.passed for f in measured) else 1)
