"""A measured figure next to its target, and the PASS/FAIL table every benchmark prints.

Each benchmark module has a `figures(work: Path) -> list[Figure]` that measures its ratios side
by side in one run; `bench/run_all.py` (`make bench`) collects them into one table and a results
file. A figure is a ratio or a time: `at_least` says which side of the target passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    target_id: str  # which target of the performance issue, e.g. "1 conversion"
    name: str
    value: float
    target: float
    at_least: bool  # True: value >= target passes; False: value <= target passes
    unit: str = "x"
    detail: str = ""  # the raw figures behind a ratio, for the reader

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target

    def row(self) -> str:
        sign = ">=" if self.at_least else "<="
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"| {self.target_id} | {self.name} | {self.value:.3g}{self.unit} | {sign} {self.target:g}{self.unit} "
            f"| {verdict} | {self.detail} |"
        )


HEADER = "| target | figure | measured | target | verdict | detail |\n|---|---|---|---|---|---|"


def table(figures: Sequence[Figure]) -> str:
    return "\n".join([HEADER, *(f.row() for f in figures)])


def median_seconds(action: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """(median, min, max) wall seconds of `repeats` runs of `action`."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), min(samples), max(samples)


def machine() -> dict[str, Any]:
    """What the figures were measured on (a ratio is only comparable on the same machine)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    model = ""
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    return {
        "cpus": cpus,
        "cpu_model": model,
        "load_average_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save(figures: Sequence[Figure], path: Path, command: str, started_load: float) -> None:
    data = {
        "command": command,
        "machine": {**machine(), "load_average_at_start": started_load, "load_average_at_end": os.getloadavg()[0]},
        "figures": [{**asdict(f), "passed": f.passed} for f in figures],
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
