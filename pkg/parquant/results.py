"""The results stages write and the report reads, as types: validation, benchmark, comparison entry.

Each is a dataclass with `to_dict` (the JSON a stage writes, tagged with its `kind`) and a typed
reader, `parse_result`, which the report uses; a file that is not one of them is bad input (65),
never a KeyError. Fields added later have defaults, so results written by older versions still load.
"""

from __future__ import annotations

import dataclasses
import statistics
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Union

from .errors import InvalidInputError, ParquantError, PrecisionGateError

DEFAULT_MIN_COSINE = 0.99
DEFAULT_MAX_PPL_RATIO = 1.05


@dataclass
class Thresholds:
    min_cosine: float = DEFAULT_MIN_COSINE  # mean logits cosine
    max_ppl_ratio: float = DEFAULT_MAX_PPL_RATIO


@dataclass
class TensorMetric:
    name: str
    cosine: float
    relative_error: float
    max_abs_error: float


@dataclass
class WorstToken:
    position: int
    token: str
    cosine: float


@dataclass
class ValidationResult:
    reference: str
    candidate: str
    tensors: list[TensorMetric]
    worst_tensors: list[TensorMetric]
    logits_cosine_mean: float
    logits_cosine_worst: float
    worst_tokens: list[WorstToken]
    top1_agreement: float
    kl_divergence: float
    perplexity_reference: float
    perplexity_candidate: float
    perplexity_ratio: float
    tokens_evaluated: int
    seconds: float
    thresholds: Thresholds
    passed: bool
    failures: list[str] = field(default_factory=list)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> reference/candidate accuracy
    note: str = ""  # how the candidate was made, when it took a fallback (manifest provenance)
    method: str = "none"  # the method that made the candidate (manifest provenance)
    backend: str = "-"
    quantize_seconds: float | None = None  # how long making the candidate took (its manifest)
    # which activation quantization the candidate ran with (quant/activations.py; validate.md)
    activation_simulation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "validation", **asdict(self)}

    # -- as a stage's outcome (outcomes.StageOutcome) --
    def log_lines(self) -> list[str]:
        return []  # the text is the report

    def text(self) -> str | None:
        return self.summary()

    def failure(self) -> ParquantError | None:
        """79 when the candidate missed a threshold: the precision gate."""
        return None if self.passed else PrecisionGateError(f"precision gate failed: {'; '.join(self.failures)}")

    def summary(self) -> str:
        worst = self.worst_tensors[0] if self.worst_tensors else None
        lines = [
            f"validate {self.candidate} against {self.reference}: {'PASSED' if self.passed else 'FAILED'}",
            f"  logits cosine   mean {self.logits_cosine_mean:.5f}  worst token {self.logits_cosine_worst:.5f}",
            f"  top-1 agreement {self.top1_agreement:.4f}   KL {self.kl_divergence:.5f}",
            f"  perplexity      {self.perplexity_reference:.3f} -> {self.perplexity_candidate:.3f} "
            f"(x{self.perplexity_ratio:.4f}) on {self.tokens_evaluated} tokens",
        ]
        if worst is not None:
            lines.append(f"  worst tensor    {worst.name} cosine {worst.cosine:.5f} rel.err {worst.relative_error:.4f}")
        if self.activation_simulation:
            lines.append(f"  activations     {self.activation_simulation}")
        lines += [
            f"  task {name:<18} {scores['candidate']:.3f} (reference {scores['reference']:.3f})"
            for name, scores in self.tasks.items()
        ]
        lines += [f"  FAIL: {failure}" for failure in self.failures]
        return "\n".join(lines)


@dataclass
class Timing:
    median: float
    minimum: float
    maximum: float
    runs: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        """The timing of these runs (microsecond precision)."""
        return cls(round(statistics.median(seconds), 6), round(min(seconds), 6), round(max(seconds), 6), len(seconds))

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the runs were."""
        return (self.maximum - self.minimum) / self.median if self.median else 0.0


@dataclass
class BenchmarkResult:
    model: str
    device: str
    size_on_disk_bytes: int
    load_seconds: float
    prefill_seconds: dict[str, Timing] = field(default_factory=dict)  # "batch x seq_len" -> timing
    decode_tokens_per_second: dict[str, Timing] = field(default_factory=dict)  # "batch" -> tokens/s
    method: str = "none"  # how the model was quantized (manifest provenance), "none" for full precision
    backend: str = "-"
    note: str = ""  # the fallbacks that made the model (manifest provenance), e.g. GPU -> CPU
    model_memory_bytes: int = 0  # parameters + buffers after the first forward pass (CPU decompresses FP8/INT8)
    peak_host_rss_bytes: int = 0  # the process's high-water mark (includes anything it ran before)
    peak_gpu_allocated_bytes: int = 0
    quantize_seconds: float | None = None  # how long making the model took, when quantize made it
    environment: dict[str, str] = field(default_factory=dict)  # device, threads, versions, kernels

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "benchmark", **asdict(self)}

    # -- as a stage's outcome (outcomes.StageOutcome) --
    def log_lines(self) -> list[str]:
        return []  # the text is the report

    def text(self) -> str | None:
        return self.summary()

    def failure(self) -> ParquantError | None:
        return None

    def summary(self) -> str:
        lines = [
            f"benchmark {self.model} on {self.device}: load {self.load_seconds:.2f}s, "
            f"{self.size_on_disk_bytes / 1e6:.1f} MB on disk, peak RSS {self.peak_host_rss_bytes / 1e6:.0f} MB"
        ]
        lines += [
            f"  prefill {k}: {t.median * 1000:.1f} ms (min {t.minimum * 1000:.1f}, max {t.maximum * 1000:.1f})"
            for k, t in self.prefill_seconds.items()
        ]
        lines += [
            f"  decode batch {k}: {t.median:.1f} tokens/s (min {t.minimum:.1f}, max {t.maximum:.1f})"
            for k, t in self.decode_tokens_per_second.items()
        ]
        return "\n".join(lines)


@dataclass
class ComparisonEntry:
    """One model of `quantize --compare`: how it was made, and its validation and benchmark."""

    label: str
    method: str
    backend: str
    model: str
    quantize_seconds: float | None = None
    note: str = ""
    error: str = ""
    validation: ValidationResult | None = None
    benchmark: BenchmarkResult | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["validation"] = self.validation.to_dict() if self.validation else None
        data["benchmark"] = self.benchmark.to_dict() if self.benchmark else None
        return {"kind": "comparison-row", **data}


Result = ValidationResult | BenchmarkResult | ComparisonEntry
_KINDS: dict[str, type[Any]] = {
    "validation": ValidationResult,
    "benchmark": BenchmarkResult,
    "comparison-row": ComparisonEntry,
}


def parse_result(payload: Any, where: str) -> Result:
    """A result a stage wrote, typed; InvalidInputError (65) naming the file for anything else."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind not in _KINDS:
        raise InvalidInputError(
            f"{where} holds no validation, benchmark or comparison result (kind {kind!r}): pass the JSON "
            "files validate/benchmark --output or quantize --compare wrote"
        )
    try:
        built: Result = _build(_KINDS[kind], payload)
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"{where}: a {kind} result with missing or wrong fields ({exc})") from None
    return built


def _build(cls: type[Any], data: Any) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        if item.name in data:
            values[item.name] = _convert(hints[item.name], data[item.name])
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise TypeError(f"{hint.__name__} must be an object")
        return _build(hint, value)
    if origin is list:
        (inner,) = typing.get_args(hint)
        return [_convert(inner, v) for v in value]
    if origin is dict:
        _, inner = typing.get_args(hint)
        return {str(k): _convert(inner, v) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise TypeError(f"expected {hint.__name__}, got {type(value).__name__}")
    return value
