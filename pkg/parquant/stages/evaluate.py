"""Stages `validate`, `benchmark` and `report`: thin wrappers that write their results atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..bench import BenchmarkResult, BenchmarkRunner
from ..errors import InvalidInputError
from ..fs import check_writable, resolve
from ..outputs import OutputFolder, write_file_atomically
from ..progress import ProgressCallback, no_progress
from ..report import render_report, rows_from_results
from ..validate import PrecisionValidator, Thresholds, ValidationResult


def write_json(url: str, payload: dict[str, Any], storage_options: Mapping[str, str] | None) -> None:
    write_file_atomically(resolve(url, storage_options), (json.dumps(payload, indent=2) + "\n").encode())


def validate(
    reference: str,
    candidate: str,
    eval_text: str,
    *,
    output: str | None = None,
    seq_len: int = 256,
    max_tokens: int = 4096,
    thresholds: Thresholds | None = None,
    tasks: list[str] | None = None,
    task_limit: int | None = None,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> ValidationResult:
    if output:
        check_writable(resolve(output, storage_options), "--output")
    result = PrecisionValidator(
        reference,
        candidate,
        eval_text,
        seq_len=seq_len,
        max_tokens=max_tokens,
        thresholds=thresholds,
        storage_options=storage_options,
        progress=progress,
        tasks=tasks,
        task_limit=task_limit,
    ).run()
    if output:
        write_json(output, result.to_dict(), storage_options)
    return result


def benchmark(
    model: str,
    *,
    output: str | None = None,
    batch_sizes: tuple[int, ...] = (1, 4),
    seq_lens: tuple[int, ...] = (128, 512),
    new_tokens: int = 32,
    repeats: int = 3,
    device: str = "cpu",
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> BenchmarkResult:
    if output:
        check_writable(resolve(output, storage_options), "--output")
    result = BenchmarkRunner(
        model,
        batch_sizes=batch_sizes,
        seq_lens=seq_lens,
        new_tokens=new_tokens,
        repeats=repeats,
        device=device,
        storage_options=storage_options,
        progress=progress,
    ).run()
    if output:
        write_json(output, result.to_dict(), storage_options)
    return result


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
        loaded += payload if isinstance(payload, list) else [payload]
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
