"""Stage `report`: result files of validate, benchmark and --compare -> one comparison report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError, ParquantError
from ..fs import resolve
from ..outputs import OutputFolder
from ..report import render_report, rows_from_results
from ..results import parse_result
from .common import StageContext
from .options import ReportOptions


@dataclass
class ReportResult:
    """`parquant report`'s outcome: where the report is, and its files."""

    output: str
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"stage": "report", "output": self.output, "files": self.files}

    def log_lines(self) -> list[str]:
        return [f"report: wrote {self.output} ({', '.join(self.files)})"]

    def text(self) -> str | None:
        return None

    def failure(self) -> ParquantError | None:
        return None


def run(options: ReportOptions, context: StageContext) -> ReportResult:
    """`parquant report`: the files written into the output folder."""
    files = report(
        options.results,
        options.output,
        title=options.title,
        force=options.force,
        storage_options=context.storage_options,
    )
    return ReportResult(options.output, files)


def report(
    results: list[str],
    output: str,
    *,
    title: str = "parquant comparison",
    notes: list[str] | None = None,
    force: bool = False,
    storage_options: Mapping[str, str] | None = None,
) -> list[str]:
    """Read result JSON files (validate / benchmark / compare rows) and write one comparison report."""
    loaded = []
    for url in results:
        location = resolve(url, storage_options)
        try:
            payload = json.loads(location.read_bytes())
        except ValueError as exc:
            raise InvalidInputError(f"result file {url} is not JSON ({exc})") from None
        loaded += [parse_result(item, url) for item in (payload if isinstance(payload, list) else [payload])]
    rows = rows_from_results(loaded)
    if not rows:
        raise InvalidInputError("no validation, benchmark or comparison results in the given files")
    folder = OutputFolder(resolve(output, storage_options), force=force, marker="report.json")
    with folder.locked():
        folder.check_free()
        files = render_report(rows, title, notes)
        folder.begin("report")
        for name, data in files.items():
            if name != "report.json":
                folder.write_bytes(name, data)
        folder.commit(files["report.json"])
    return sorted(files)
