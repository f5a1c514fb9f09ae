"""compressed-tensors FP8/INT8: `weight` (F8_E4M3 or I8) x `weight_scale` ([1], [out, 1] or [out, groups]).

The config block is built and read with the `compressed-tensors` library (the one vLLM, SGLang
and transformers load it with), so a block parquant writes is one that library accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NAME = "compressed-tensors"
LOADS_IN_TRANSFORMERS_ON_CPU = True
# Fields the library adds that today's outputs do not carry: dropped, so config.json keeps its bytes.
_UNWRITTEN = {"global_compression_ratio", "moe_sparsity_config"}


def matches(quantization_config: Mapping[str, Any]) -> bool:
    return quantization_config.get("quant_method") == NAME


def config_block(weight_type: str, activations_dynamic: bool, ignore: list[str]) -> dict[str, Any]:
    """The `quantization_config` of a per-channel 8-bit method (weights `int` or `float`)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    layout = "float-quantized" if weight_type == "float" else "int-quantized"
    weights = QuantizationArgs(
        num_bits=8,
        type=weight_type,
        symmetric=True,
        strategy="channel",
        dynamic=False,
        group_size=None,
        observer="minmax",
    )
    activations = None
    if activations_dynamic:
        activations = QuantizationArgs(
            num_bits=8,
            type=weight_type,
            symmetric=True,
            strategy="token",
            dynamic=True,
            group_size=None,
            observer=None,
        )
    config = QuantizationConfig(
        quant_method=NAME,
        format=layout,
        quantization_status="compressed",
        ignore=sorted(ignore),
        kv_cache_scheme=None,
        # The per-group format matters: without it, weight-only int8 is read as packed int4-style.
        config_groups={
            "group_0": QuantizationScheme(
                targets=["Linear"],
                weights=weights,
                input_activations=activations,
                output_activations=None,
                format=layout,
            )
        },
    )
    block: dict[str, Any] = config.model_dump(mode="json", exclude=_UNWRITTEN)
    if activations is not None:
        # the library leaves `observer` out for dynamic activations; parquant's outputs have always
        # said `null` there, and keep saying it so their config.json stays byte for byte the same
        block["config_groups"]["group_0"]["input_activations"].setdefault("observer", None)
    return block


def describe(quantization_config: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    """(format and weight type, bits, group size) of the first config group: read by the library,
    or field by field when the block is one the library refuses (a newer or hand-made one)."""
    from compressed_tensors.quantization import QuantizationConfig
    from pydantic import ValidationError

    try:
        parsed = QuantizationConfig.model_validate(dict(quantization_config))
        scheme = next(iter(parsed.config_groups.values()), None)
        weights = scheme.weights if scheme is not None else None
        fields = {} if weights is None else weights.model_dump(mode="json")
        layout = parsed.format
    except (ValidationError, TypeError, ValueError, AttributeError):
        groups = quantization_config.get("config_groups") or {}
        first: Any = next(iter(groups.values()), {}) if isinstance(groups, Mapping) else {}
        fields = (first.get("weights") or {}) if isinstance(first, Mapping) else {}
        layout = quantization_config.get("format")
    return (
        f"{layout or ''} {fields.get('type', '')}".strip(),
        _int(fields.get("num_bits")),
        _int(fields.get("group_size")),
    )


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def dequantize_scaled(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """weight x scale, per tensor, per channel or per group."""
    import torch

    values = weight.to(torch.float32)
    scale = scale.to(torch.float32)
    if scale.ndim == 2 and scale.shape[1] not in (1, values.shape[1]):
        group = values.shape[1] // scale.shape[1]
        scale = scale.repeat_interleave(group, dim=1)
    return values * scale


def dequantize(
    prefix: str, tensors: Mapping[str, torch.Tensor], quantization_config: Mapping[str, Any]
) -> torch.Tensor | None:
    weight = tensors.get(f"{prefix}.weight")
    if weight is None:
        return None
    scale = tensors.get(f"{prefix}.weight_scale")
    return dequantize_scaled(weight, scale if scale is not None else weight.new_ones(1))
