"""Stage `inspect`: what a Parquet model holds, without reading its tensor bytes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ParquantError
from ..fs import resolve
from ..moe import summarize_experts
from ..quant.detect import detect_quantization, logical_parameters
from ..quant.runtimes import loads_in
from ..store.reader import ModelReader
from .common import StageContext
from .options import InspectOptions


@dataclass
class TensorRow:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int


@dataclass
class ModelSummary:
    url: str
    format_version: str
    architecture: str
    model_type: str
    shards: list[str]
    tensor_count: int
    total_bytes: int
    parameters: int
    bytes_by_dtype: dict[str, int]
    quantization: str
    quantization_details: dict[str, Any]
    files: list[str]
    created_by: dict[str, Any]
    source: dict[str, str]
    tensors: list[TensorRow]
    experts: dict[str, Any] | None = None  # MoE models: experts per layer, experts per token, active parameters
    loads_in: dict[str, str] | None = None  # which runtimes load its export (quant/runtimes.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- as a stage's outcome (outcomes.StageOutcome) --
    def log_lines(self) -> list[str]:
        return []  # the text is the report

    def text(self) -> str | None:
        return format_summary(self)

    def failure(self) -> ParquantError | None:
        return None


def run(options: InspectOptions, context: StageContext) -> ModelSummary:
    return inspect_model(options.model, context.storage_options)


def inspect_model(url: str, storage_options: Mapping[str, str] | None = None) -> ModelSummary:
    with ModelReader(resolve(url, storage_options)) as reader:
        manifest = reader.manifest
        config = reader.config()
        scheme = detect_quantization(config, manifest.tensors)
        rows = [TensorRow(n, e.dtype, list(e.shape), e.nbytes) for n, e in manifest.tensors.items()]
        by_dtype: dict[str, int] = {}
        counted: dict[str, tuple[int, tuple[int, ...]]] = {}
        for name, entry in manifest.tensors.items():
            by_dtype[entry.dtype] = by_dtype.get(entry.dtype, 0) + entry.nbytes
            counted[name] = (logical_parameters(name, entry.dtype, entry.spec(name).numel, scheme.bits), entry.shape)
        parameters = sum(count for count, _ in counted.values())
        experts = summarize_experts(config, counted)
        architectures = config.get("architectures") or ["unknown"]
        return ModelSummary(
            url=url,
            format_version=manifest.format_version,
            architecture=str(architectures[0]),
            model_type=str(config.get("model_type", "unknown")),
            shards=manifest.shards,
            tensor_count=len(rows),
            total_bytes=sum(r.nbytes for r in rows),
            parameters=parameters,
            bytes_by_dtype=dict(sorted(by_dtype.items())),
            quantization=scheme.describe(),
            quantization_details=scheme.details,
            files=list(manifest.files),
            created_by=asdict(manifest.created_by),
            source=manifest.source,
            tensors=rows,
            experts=experts.to_dict() if experts else None,
            loads_in=loads_in(config, manifest.tensors),
        )


def format_summary(summary: ModelSummary, max_tensors: int = 40) -> str:
    """The human view: a header, dtype totals, then the tensor table (abridged for big models)."""
    made_by = summary.created_by
    lines = [
        f"model        {summary.url}",
        f"format       parquant v{summary.format_version}, {len(summary.shards)} shard(s)",
        f"architecture {summary.architecture} ({summary.model_type})",
        f"parameters   {summary.parameters:,}",
        *_expert_lines(summary.experts),
        f"size         {summary.total_bytes:,} bytes in {summary.tensor_count} tensors",
        f"quantization {summary.quantization}",
        *_share_lines(made_by.get("config", {}).get("quantized_share")),
        *([f"loads in     transformers on CPU: {summary.loads_in['transformers_cpu']}"] if summary.loads_in else []),
        f"made by      {made_by.get('stage', '?')} (parquant {made_by.get('parquant_version', '?')})",
        f"files        {', '.join(summary.files) or '-'}",
        "bytes by dtype: " + ", ".join(f"{k} {v:,}" for k, v in summary.bytes_by_dtype.items()),
        "",
        f"{'tensor':<60} {'dtype':<8} {'shape':<20} {'bytes':>12}",
    ]
    for row in summary.tensors[:max_tensors]:
        lines.append(f"{row.name:<60} {row.dtype:<8} {row.shape!s:<20} {row.nbytes:>12,}")
    if len(summary.tensors) > max_tensors:
        lines.append(f"... {len(summary.tensors) - max_tensors} more (use --json for all)")
    return "\n".join(lines)


def _share_lines(share: Any) -> list[str]:
    """What share of the model a quantization covered, per role (quant/roles.py)."""
    from ..quant.roles import describe

    if not isinstance(share, dict) or not isinstance(share.get("roles"), dict):
        return []
    return [f"quantized    {share.get('fraction', 0):.1%} of the parameters asked for: {describe(share)}"]


def _expert_lines(experts: dict[str, Any] | None) -> list[str]:
    """An MoE model's experts: a summary line, active vs total parameters, then each MoE layer."""
    if not experts:
        return []
    per_layer: dict[str, int] = experts["experts_per_layer"]
    counts = sorted(set(per_layer.values()))
    top_k = experts["experts_per_token"]
    lines = [
        f"experts      {'/'.join(map(str, counts))} per layer in {len(per_layer)} MoE layer(s)"
        + (f", {top_k} per token" if top_k else "")
    ]
    if top_k:
        share = experts["active_parameters"] / max(1, experts["total_parameters"])
        lines.append(
            f"active       {experts['active_parameters']:,} of {experts['total_parameters']:,} "
            f"parameters per token ({share:.0%})"
        )
    lines += [f"             {layer}: {count} experts" for layer, count in per_layer.items()]
    return lines
