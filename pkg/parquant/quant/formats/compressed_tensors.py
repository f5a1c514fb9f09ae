"""compressed-tensors: `weight` (F8_E4M3 or I8) x `weight_scale` ([1], [out, 1], [out, groups], or
[out/128, in/128] blocks for block FP8), and INT4 `pack-quantized` (`weight_packed`: eight signed
nibbles per int32 along the input dimension, `weight_scale` per group, `weight_shape`).

The config block is built and read with the `compressed-tensors` library (the one vLLM, SGLang
and transformers load it with), so a block parquant writes is one that library accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from ..targets import targeted
from . import nvfp4, w4a8_fp8

NAME = "compressed-tensors"
_LAYOUTS_UNDER_THIS_NAME = (w4a8_fp8, nvfp4)
LOADS_IN_TRANSFORMERS_ON_CPU = True
# Fields the library adds that today's outputs do not carry: dropped, so config.json keeps its bytes.
_UNWRITTEN = {"global_compression_ratio", "moe_sparsity_config"}


def matches(quantization_config: Mapping[str, Any]) -> bool:
    return quantization_config.get("quant_method") == NAME


BLOCK = 128  # block FP8: 128 x 128 weight blocks, the layout of DeepSeek-V3 checkpoints and vLLM's kernels
MIXED = "mixed-precision"  # the config's format when its groups have formats of their own that differ


def config_block(groups: list[tuple[list[str], dict[str, Any]]], ignore: list[str]) -> dict[str, Any]:
    """The `quantization_config` of a recipe: one `config_groups` entry per (targets, scheme fields).

    Built by the library in a child process once per library version (importing it costs a
    streaming stage 3.5 s and its memory: see quant/isolated.py); the ignore list is filled in here."""
    from ..isolated import isolated_call

    block: dict[str, Any] = isolated_call(
        "parquant.quant.formats.compressed_tensors.library_block", [groups], ("compressed-tensors",)
    )
    block["ignore"] = sorted(ignore)
    return block


def needs_own_dequantizer(tensor_names: Iterable[str]) -> bool:
    """Whether the checkpoint holds one of the layouts AngelSlim writes under this format's name
    (W4A8, NVFP4: no CPU kernel in transformers), recognised by their marker tensor."""
    markers = tuple(f".{layout.MARKER}" for layout in _LAYOUTS_UNDER_THIS_NAME)
    return any(name.endswith(markers) for name in tensor_names)


def library_block(groups: list[tuple[list[str], dict[str, Any]]]) -> dict[str, Any]:
    """The config block as the compressed-tensors library builds it from the schemes (no ignore list):
    the library validates each scheme, the format is the groups' own or `mixed-precision`."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    schemes = {
        f"group_{index}": QuantizationScheme.model_validate({"targets": targets, **fields})
        for index, (targets, fields) in enumerate(groups)
    }
    formats = list(dict.fromkeys(str(scheme.format) for scheme in schemes.values()))
    config = QuantizationConfig(
        quant_method=NAME,
        format=formats[0] if len(formats) == 1 else MIXED,
        quantization_status="compressed",
        ignore=[],
        kv_cache_scheme=None,
        config_groups=schemes,
    )
    block: dict[str, Any] = config.model_dump(mode="json", exclude=_UNWRITTEN)
    for written, (_, fields) in zip(block["config_groups"].values(), groups, strict=True):
        # A field the scheme gives that the library leaves out when it dumps (a dynamic activation's
        # `observer: null`) is written as given: parquant's outputs have always said it, and keep
        # their config.json byte for byte the same.
        for part in ("weights", "input_activations"):
            given, dumped = fields.get(part), written.get(part)
            if isinstance(given, dict) and isinstance(dumped, dict):
                for key, value in given.items():
                    dumped.setdefault(key, value)
    return block


def validated_schemes(raw: list[Any]) -> list[dict[str, Any]]:
    """Each user scheme checked by the library: a preset name (`W4A16`, `FP8_DYNAMIC`...) or the
    fields of a QuantizationScheme, answered as {"fields": ...} or {"error": what is wrong}."""
    from compressed_tensors.quantization import QuantizationScheme, preset_name_to_scheme
    from pydantic import ValidationError

    answers: list[dict[str, Any]] = []
    for entry in raw:
        try:
            if isinstance(entry, str):
                scheme = preset_name_to_scheme(entry, ["Linear"])
            else:
                scheme = QuantizationScheme.model_validate({"targets": ["Linear"], **entry})
        except (ValidationError, KeyError, ValueError, TypeError) as exc:
            first = " ".join(str(exc).split())
            answers.append({"error": first[:300]})
            continue
        fields = scheme.model_dump(mode="json", exclude={"targets"}, exclude_none=False)
        answers.append({"fields": fields})
    return answers


def describe(quantization_config: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    """(format and weight type, bits, group size) read field by field: describing a model (inspect,
    validate) must not import the library and transformers with it (3.5 s, measured). A config of
    several groups (a per-layer recipe) names each group's format, type and bits, and has no single
    bit width or group size. The blocks parquant writes are built by the library; loaders validate them."""
    groups = quantization_config.get("config_groups") or {}
    entries = [g for g in groups.values() if isinstance(g, Mapping)] if isinstance(groups, Mapping) else []
    layout = quantization_config.get("format")
    if len(entries) > 1:
        parts = []
        for group in entries:
            fields = group.get("weights") or {}
            size = f" group {fields['group_size']}" if fields.get("group_size") else ""
            parts.append(f"{group.get('format') or layout} {fields.get('type', '')} {fields.get('num_bits')}-bit{size}")
        return f"{layout}: {'; '.join(parts)}", None, None
    fields = (entries[0].get("weights") or {}) if entries else {}
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


def dequantize_scaled(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = None) -> torch.Tensor:
    """weight x scale, per tensor, per channel, per group, or per `block` (rows, columns)."""
    import torch

    values = weight.to(torch.float32)
    scale = scale.to(torch.float32)
    rows, columns = values.shape[-2:] if values.ndim >= 2 else (1, values.shape[-1])
    if scale.ndim == 2 and block is not None and scale.shape != (rows, columns):
        scale = scale.repeat_interleave(block[0], dim=0)[:rows].repeat_interleave(block[1], dim=1)[:, :columns]
    elif scale.ndim == 2 and scale.shape[1] not in (1, columns):
        group = columns // scale.shape[1]
        scale = scale.repeat_interleave(group, dim=1)
    return values * scale


def block_structure(quantization_config: Mapping[str, Any], module: str | None = None) -> tuple[int, int] | None:
    """The weight block (rows, columns) of the config group that targets `module` (the first group
    when none is named or none targets it), when its strategy is `block`."""
    groups = quantization_config.get("config_groups") or {}
    candidates = [g for g in groups.values() if isinstance(g, Mapping)] if isinstance(groups, Mapping) else []
    chosen: Any = next(iter(candidates), {})
    if module is not None:
        chosen = next((g for g in candidates if targeted(module, g.get("targets") or ["Linear"])), chosen)
    weights = (chosen.get("weights") or {}) if isinstance(chosen, Mapping) else {}
    structure = weights.get("block_structure") if weights.get("strategy") == "block" else None
    if isinstance(structure, list) and len(structure) == 2:
        return int(structure[0]), int(structure[1])
    return None


def dequantize(
    prefix: str, tensors: Mapping[str, torch.Tensor], quantization_config: Mapping[str, Any]
) -> torch.Tensor | None:
    for layout in _LAYOUTS_UNDER_THIS_NAME:  # AngelSlim's W4A8 and NVFP4 call themselves compressed-tensors
        restored: torch.Tensor | None = layout.dequantize(prefix, tensors)
        if restored is not None:
            return restored
    packed = tensors.get(f"{prefix}.weight_packed")
    if packed is not None:
        return dequantize_packed(packed, tensors[f"{prefix}.weight_scale"], tensors.get(f"{prefix}.weight_shape"))
    weight = tensors.get(f"{prefix}.weight")
    if weight is None:
        return None
    scale = tensors.get(f"{prefix}.weight_scale")
    block = block_structure(quantization_config, prefix)
    return dequantize_scaled(weight, scale if scale is not None else weight.new_ones(1), block)


def dequantize_packed(packed: torch.Tensor, scale: torch.Tensor, shape: torch.Tensor | None) -> torch.Tensor:
    """Symmetric INT4 `pack-quantized`: nibble i of word k is column 8k + i, stored as value + 8."""
    import torch

    from .packing import unpack_columns

    values = unpack_columns(packed).to(torch.int16) - 8
    if shape is not None:
        values = values[:, : int(shape[-1])]
    return dequantize_scaled(values, scale)
