"""Recognise how a checkpoint is already quantized, from its config and tensor names.

Import and export carry such checkpoints unchanged; inspect reports the scheme; quantize refuses to
quantize twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .formats import compressed_tensors

PACKED_SUFFIXES = (".qweight",)
AUXILIARY_SUFFIXES = (
    ".weight_scale",
    ".input_scale",
    ".scales",
    ".qzeros",
    ".g_idx",
    ".weight_zero_point",
    ".weight_packed",
    ".weight_shape",
    ".output_scale",
    ".k_scale",
    ".v_scale",
    ".weight_scale_int4",
    ".weight_scale_2",
)


@dataclass(frozen=True)
class QuantizationScheme:
    """`method` is e.g. 'none', 'compressed-tensors', 'gptq', 'awq', 'fp8'; `details` what the config says."""

    method: str
    format: str = ""
    bits: int | None = None
    group_size: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.method != "none"

    def describe(self) -> str:
        if not self.quantized:
            return "none (full precision)"
        parts = [self.method]
        if self.format:
            parts.append(self.format)
        if self.bits:
            parts.append(f"{self.bits}-bit")
        if self.group_size:
            parts.append(f"group {self.group_size}")
        return ", ".join(parts)


def detect_quantization(config: dict[str, Any], tensor_names: Iterable[str]) -> QuantizationScheme:
    names = list(tensor_names)
    qconfig = config.get("quantization_config") or config.get("compression_config")
    if isinstance(qconfig, dict):
        method = str(qconfig.get("quant_method", "unknown"))
        if compressed_tensors.matches(qconfig):
            return _compressed_tensors(qconfig)
        return QuantizationScheme(
            method,
            str(qconfig.get("format", qconfig.get("version", "")) or ""),
            _int(qconfig.get("bits")),
            _int(qconfig.get("group_size")),
            qconfig,
        )
    if any(n.endswith(PACKED_SUFFIXES) for n in names):
        return QuantizationScheme("gptq-or-awq", "packed int (no quantization_config)")
    if any(n.endswith(AUXILIARY_SUFFIXES) for n in names):
        return QuantizationScheme("unknown", "scale tensors present (no quantization_config)")
    return QuantizationScheme("none")


_EXPERT = re.compile(r"\.experts\.\d+\.")


def needs_parquant_dequantizer(quantization_config: dict[str, Any], tensor_names: Iterable[str]) -> bool:
    """Whether transformers cannot load this quantized checkpoint on a CPU, so parquant dequantizes it:
    its format has no CPU kernel (GPTQ, AWQ, W4A8, NVFP4), or its experts are quantized (transformers 5
    holds an MoE layer's experts fused, which compressed-tensors does not replace)."""
    from .formats import format_for

    names = list(tensor_names)
    if not format_for(quantization_config).LOADS_IN_TRANSFORMERS_ON_CPU:
        return True
    return has_quantized_experts(names) or compressed_tensors.needs_own_dequantizer(names)


def has_quantized_experts(tensor_names: Iterable[str]) -> bool:
    """Whether per-expert weights of an MoE layer are stored quantized (scales or packed words)."""
    return any(_EXPERT.search(n) and n.endswith(AUXILIARY_SUFFIXES + PACKED_SUFFIXES) for n in tensor_names)


def _compressed_tensors(qconfig: dict[str, Any]) -> QuantizationScheme:
    layout, bits, group_size = compressed_tensors.describe(qconfig)
    return QuantizationScheme("compressed-tensors", layout, bits, group_size, qconfig)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def logical_parameters(name: str, dtype: str, numel: int, bits: int | None) -> int:
    """Parameters a tensor stands for: packed int32 words (GPTQ/AWQ `qweight`, compressed-tensors
    `weight_packed`) hold 32/bits weights, AngelSlim's W4A8 `qweight` bytes two INT4 values, and
    NVFP4's uint8 `weight` two FP4 values; scales count as 0."""
    if name.endswith((*PACKED_SUFFIXES, ".weight_packed")) and dtype == "I32":
        return numel * (32 // (bits or 4))
    if name.endswith(AUXILIARY_SUFFIXES):
        return 0
    if (name.endswith(PACKED_SUFFIXES) and dtype == "I8") or (name.endswith(".weight") and dtype == "U8"):
        return numel * 2
    return numel
