"""`quantize --compare`: several methods on one model, each quantized, validated and benchmarked.

Layout under the output URL: `<method>/` (each quantized model), `results/<method>.json` (one
comparison row each, with the full validation and benchmark results), `report/` (Markdown, JSON,
HTML with plots). The reference itself and the built-in PTQ INT8 baseline are always rows. A
method that fails becomes a row that says why; the comparison goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParquantError, UsageError
from ..progress import ProgressCallback, no_progress
from ..quant.config import QuantizationConfig, load_config
from ..results import BenchmarkResult, ComparisonEntry, Thresholds, ValidationResult
from .benchmark import benchmark
from .common import StageContext, write_json
from .options import QuantizeOptions
from .quantize import QuantizePlanResult, QuantizeResult, config_flags, quantize
from .report import report
from .validate import validate

log = logging.getLogger("parquant")
BASELINE = "int8-weight"


@dataclass
class CompareSettings:
    eval_text: str
    seq_len: int = 256
    max_tokens: int = 4096
    thresholds: Thresholds = field(default_factory=Thresholds)
    batch_sizes: tuple[int, ...] = (1,)
    bench_seq_lens: tuple[int, ...] = (128,)
    new_tokens: int = 16
    repeats: int = 5
    notes: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    task_limit: int | None = None


@dataclass
class CompareResult:
    """`quantize --compare`'s outcome: the report's folder, its rows, the methods that failed."""

    report: str
    rows: list[ComparisonEntry]

    @property
    def failed(self) -> list[str]:
        return [entry.label for entry in self.rows if entry.error]

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report, "rows": len(self.rows), "failed": self.failed}

    def log_lines(self) -> list[str]:
        failed = f" ({len(self.failed)} failed: {', '.join(self.failed)})" if self.failed else ""
        return [f"compare: {len(self.rows)} rows, report in {self.report}{failed}"]

    def text(self) -> str | None:
        return None

    def failure(self) -> ParquantError | None:
        return None  # a method that failed is a row of the report, not the comparison's failure


def run(options: QuantizeOptions, context: StageContext) -> CompareResult:
    """`parquant quantize --compare M1,M2 --eval-text T`."""
    from ..tasks import parse_tasks

    if not options.eval_text:
        raise UsageError("--compare needs --eval-text URL (held-out text for validation)")
    flags = config_flags(options)
    methods = [m.strip() for m in (options.compare or "").split(",") if m.strip()]
    _check_names(methods)
    rows = compare(
        options.model,
        options.output,
        methods,
        lambda method: load_config(options.config, {**flags, "method": method, "backend": options.backend}),
        CompareSettings(eval_text=options.eval_text, tasks=parse_tasks(options.tasks)),
        force=options.force,
        storage_options=context.storage_options,
        progress=context.progress,
    )
    return CompareResult(f"{options.output.rstrip('/')}/report", rows)


def _check_names(names: list[str]) -> None:
    """Every name in `--compare` is a method, checked before any work: a typo is 64 at once (with
    the closest name), not an error row after minutes of the other methods. A method its backend
    cannot run is still a row that says why."""
    from ..quant.methods import did_you_mean, method_names

    known = method_names()
    for name in names:
        if name not in known:
            raise UsageError(
                f"--compare names {name!r}, which is no method: {did_you_mean(name)}choose from {', '.join(known)}"
            )


def compare(
    model: str,
    output: str,
    methods: list[str],
    config_for: Callable[[str], QuantizationConfig],
    settings: CompareSettings,
    *,
    force: bool = False,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> list[ComparisonEntry]:
    """Run every method (plus reference and PTQ INT8 baseline); returns the entries written."""
    base = output.rstrip("/")
    _announce(model, [BASELINE, *methods], config_for, storage_options)
    entries = [_reference_entry(model, base, settings, storage_options)]
    for method in dict.fromkeys([BASELINE, *methods]):
        log.info("compare: %s", method)
        entry = ComparisonEntry(method, method, "", f"{base}/{method}")
        try:
            config = config_for(method)
            quantized = quantize(
                model, entry.model, config, force=force, storage_options=storage_options, progress=progress
            )
            assert isinstance(quantized, QuantizeResult)
            entry.backend = quantized.backend or ""
            entry.method = quantized.method or method
            entry.quantize_seconds = round(quantized.seconds, 2)
            entry.note = "; ".join(quantized.fallbacks or [])
            entry.validation = _validate(model, entry.model, settings, storage_options)
            entry.benchmark = _benchmark(entry.model, settings, storage_options)
        except ParquantError as exc:
            log.warning("compare: %s failed: %s", method, exc)
            entry.error = f"exit {exc.exit_code}: {exc}"
        write_json(f"{base}/results/{method}.json", entry.to_dict(), storage_options)
        entries.append(entry)
    report(
        [f"{base}/results/{name}.json" for name in ["reference", *dict.fromkeys([BASELINE, *methods])]],
        f"{base}/report",
        title=f"parquant comparison: {model}",
        notes=settings.notes,
        force=True,
        storage_options=storage_options,
    )
    return entries


def _validate(
    reference: str, candidate: str, settings: CompareSettings, storage_options: Mapping[str, str] | None
) -> ValidationResult:
    return validate(
        reference,
        candidate,
        settings.eval_text,
        seq_len=settings.seq_len,
        max_tokens=settings.max_tokens,
        thresholds=settings.thresholds,
        tasks=settings.tasks,
        task_limit=settings.task_limit,
        storage_options=storage_options,
    )


def _benchmark(model: str, settings: CompareSettings, storage_options: Mapping[str, str] | None) -> BenchmarkResult:
    return benchmark(
        model,
        batch_sizes=settings.batch_sizes,
        seq_lens=settings.bench_seq_lens,
        new_tokens=settings.new_tokens,
        repeats=settings.repeats,
        storage_options=storage_options,
    )


def _announce(
    model: str,
    methods: list[str],
    config_for: Callable[[str], QuantizationConfig],
    storage_options: Mapping[str, str] | None,
) -> None:
    """Say up front how long the quantizations are estimated to take (each method's dry run)."""
    from ..quant.estimate import duration

    parts, total = [], 0.0
    for method in dict.fromkeys(methods):
        try:
            planned = quantize(model, "unused", config_for(method), dry_run=True, storage_options=storage_options)
        except ParquantError:
            continue  # the real run reports it
        assert isinstance(planned, QuantizePlanResult) and planned.estimate is not None
        seconds = planned.estimate.seconds
        total += seconds
        parts.append(f"{method} {duration(seconds)} on {planned.plan['device']}")
    if parts:
        log.info("compare: quantizing is estimated to take about %s (%s)", duration(total), ", ".join(parts))


def _reference_entry(
    model: str, base: str, settings: CompareSettings, storage_options: Mapping[str, str] | None
) -> ComparisonEntry:
    entry = ComparisonEntry("reference", "reference", "-", model)
    entry.validation = _validate(model, model, settings, storage_options)
    entry.benchmark = _benchmark(model, settings, storage_options)
    write_json(f"{base}/results/reference.json", entry.to_dict(), storage_options)
    return entry
