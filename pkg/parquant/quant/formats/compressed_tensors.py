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
    """The `quantization_config` of a per-channel 8-bit method (weights `int` or `float`).

    Built by the library in a child process once per library version (importing it costs a
    streaming stage 3.5 s and its memory: see quant/isolated.py); the ignore list is filled in here."""
    from ..isolated import isolated_call

    blocks = isolated_call("parquant.quant.formats.compressed_tensors.library_blocks", [], ("compressed-tensors",))
    block: dict[str, Any] = blocks[f"{weight_type}-{'dynamic' if activations_dynamic else 'weight-only'}"]
    block["ignore"] = sorted(ignore)
    return block


def library_blocks() -> dict[str, dict[str, Any]]:
    """Every per-channel 8-bit block, built by the compressed-tensors library (no ignore list)."""
    return {
        f"{weight_type}-{'dynamic' if dynamic else 'weight-only'}": library_block(weight_type, dynamic)
        for weight_type in ("int", "float")
        for dynamic in (False, True)
    }


def library_block(weight_type: str, activations_dynamic: bool) -> dict[str, Any]:
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
        ignore=[],
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
    """(format and weight type, bits, group size) of the first config group, read field by field:
    describing a model (inspect, validate) must not import the library and transformers with it
    (3.5 s, measured). The blocks parquant writes are built by the library; loaders validate them."""
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
