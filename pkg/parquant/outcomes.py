"""What every stage returns: a typed result that says itself in one log line, as JSON, and as an exit.

The command line runs every stage the same way (cmd/parquant_cli/main.py `run_stage`): it logs
`log_lines()`, prints `text()` where the stage has a human-readable form and the user did not ask
for JSON (else `to_dict()` as one JSON line), and raises `failure()` when there is one (a failed
precision gate: 79). A stage's own result type adds its fields; none carries an untyped bag.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from .errors import ParquantError


class StageOutcome(Protocol):
    def log_lines(self) -> list[str]:
        """What the run did, for the log (one line each)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable result (stdout, pipeline records, result files)."""
        ...

    def text(self) -> str | None:
        """A human-readable report for stdout, or None where the JSON is the report."""
        ...

    def failure(self) -> ParquantError | None:
        """The error the process exits with although the stage ran (79: a precision gate)."""
        ...


@dataclass
class WriteResult:
    """A stage that writes an output folder (import, export, quantize). Its JSON keeps the shape
    it always had: stage, output, skipped, seconds, warnings, and the stage's own fields under
    `details` (fields left at None are left out)."""

    stage: str
    output: str
    skipped: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)
    part: tuple[int, int] | None = None  # a fan-out worker's (index, count)

    _BASE = ("stage", "output", "skipped", "seconds", "warnings")

    @property
    def details(self) -> dict[str, Any]:
        """The stage's own fields (what JSON puts under `details`)."""
        found = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name not in self._BASE and value is not None:
                found[item.name] = list(value) if isinstance(value, tuple) else _plain(value)
        return found

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._BASE} | {"details": self.details}

    def log_lines(self) -> list[str]:
        if self.skipped:
            return [f"{self.stage}: already done, skipped"]
        if self.part:
            return [
                f"{self.stage}: fan-out worker {self.part[0]} of {self.part[1]} wrote its share of {self.output} in "
                f"{self.seconds:.1f}s (a run without --shard-index commits it)"
            ]
        return [f"{self.stage}: wrote {self.output} in {self.seconds:.1f}s"]

    def text(self) -> str | None:
        return None

    def failure(self) -> ParquantError | None:
        return None


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value
