"""One comparison row per model: what it is, how it was made, how precise and how fast it is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..results import BenchmarkResult, ComparisonEntry, Result, ValidationResult


@dataclass
class ComparisonRow:
    label: str
    method: str
    backend: str
    model: str
    size_bytes: int | None = None
    compression_ratio: float | None = None
    quantize_seconds: float | None = None
    peak_memory_bytes: int | None = None
    logits_cosine: float | None = None
    worst_token_cosine: float | None = None
    top1_agreement: float | None = None
    perplexity: float | None = None
    perplexity_ratio: float | None = None
    decode_tokens_per_second: float | None = None
    decode_spread: float | None = None  # (max - min) / median of the decode runs
    prefill_ms: float | None = None
    kernels: str = ""  # native, simulated (CPU) or real (GPU): what the speed figures measured
    environment: dict[str, str] | None = None  # the benchmark's device, threads and versions
    passed: bool | None = None
    tasks: dict[str, float] | None = None  # task -> candidate accuracy
    note: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rows_from_results(results: Iterable[Result]) -> list[ComparisonRow]:
    """Group validation / benchmark / comparison results by the model they describe."""
    rows: dict[str, ComparisonRow] = {}
    order: list[str] = []

    def row(model: str, label: str = "", method: str = "", backend: str = "") -> ComparisonRow:
        if model not in rows:
            rows[model] = ComparisonRow(label or model.rstrip("/").rsplit("/", 1)[-1], method, backend, model)
            order.append(model)
        found = rows[model]
        found.label, found.method, found.backend = (
            label or found.label,
            method or found.method,
            backend or found.backend,
        )
        return found

    for result in results:
        if isinstance(result, ComparisonEntry):
            target = row(result.model, result.label, result.method, result.backend)
            target.note, target.error = result.note, result.error
            if result.quantize_seconds is not None:
                target.quantize_seconds = result.quantize_seconds
            if result.validation is not None:
                _apply_validation(target, result.validation)
            if result.benchmark is not None:
                _apply_benchmark(target, result.benchmark)
        elif isinstance(result, ValidationResult):
            _apply_validation(row(result.candidate, method=result.method, backend=result.backend), result)
        else:
            _apply_benchmark(row(result.model, method=result.method, backend=result.backend), result)
    table = [rows[m] for m in order]
    _fill_ratios(table)
    return table


def _apply_validation(target: ComparisonRow, result: ValidationResult) -> None:
    target.note = target.note or result.note  # e.g. a fallback recorded in the manifest
    target.quantize_seconds = target.quantize_seconds or result.quantize_seconds
    target.logits_cosine = result.logits_cosine_mean
    target.worst_token_cosine = result.logits_cosine_worst
    target.top1_agreement = result.top1_agreement
    target.perplexity = result.perplexity_candidate
    target.perplexity_ratio = result.perplexity_ratio
    target.passed = result.passed
    target.tasks = {name: scores["candidate"] for name, scores in result.tasks.items()} or None


def _apply_benchmark(target: ComparisonRow, result: BenchmarkResult) -> None:
    target.note = target.note or result.note
    target.quantize_seconds = target.quantize_seconds or result.quantize_seconds
    target.size_bytes = result.size_on_disk_bytes
    target.peak_memory_bytes = result.model_memory_bytes or result.peak_host_rss_bytes
    decode = result.decode_tokens_per_second.get("1")
    target.decode_tokens_per_second = decode.median if decode else None
    target.decode_spread = round(decode.spread, 3) if decode else None
    target.environment = result.environment or None
    target.kernels = result.environment.get("kernels", "").split(":", 1)[0]
    prefill = next(iter(result.prefill_seconds.values()), None)
    target.prefill_ms = round(prefill.median * 1000, 2) if prefill else None


def _fill_ratios(table: list[ComparisonRow]) -> None:
    """Compression ratio against the baseline row (the unquantized reference, when present)."""
    baseline = next((r for r in table if r.method in ("none", "reference")), None)
    if baseline is None or not baseline.size_bytes:
        return
    for entry in table:
        if entry.size_bytes:
            entry.compression_ratio = round(baseline.size_bytes / entry.size_bytes, 3)
