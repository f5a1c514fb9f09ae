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

from . import nvfp4, w4a8_fp8

NAME = "compressed-tensors"
_LAYOUTS_UNDER_THIS_NAME = (w4a8_fp8, nvfp4)
LOADS_IN_TRANSFORMERS_ON_CPU = True
# Fields the library adds that today's outputs do not carry: dropped, so config.json keeps its bytes.
_UNWRITTEN = {"global_compression_ratio", "moe_sparsity_config"}


def matches(quantization_config: Mapping[str, Any]) -> bool:
    return quantization_config.get("quant_method") == NAME


BLOCK = 128  # block FP8: 128 x 128 weight blocks, the layout of DeepSeek-V3 checkpoints and vLLM's kernels
FLOAT_BLOCK = "float-block"
INT4_PACKED = "int4-packed"


def config_block(scheme: str, ignore: list[str], group_size: int = 128) -> dict[str, Any]:
    """The `quantization_config` of a built-in scheme: per-channel 8-bit (`int-weight-only`,
    `int-dynamic`, `float-weight-only`, `float-dynamic`), block FP8 (`float-block`) or
    pack-quantized INT4 (`int4-packed`, groups of `group_size`).

    Built by the library in a child process once per library version (importing it costs a
    streaming stage 3.5 s and its memory: see quant/isolated.py); the ignore list is filled in here."""
    from ..isolated import isolated_call

    blocks = isolated_call(
        "parquant.quant.formats.compressed_tensors.library_blocks", [group_size], ("compressed-tensors",)
    )
    block: dict[str, Any] = blocks[scheme]
    block["ignore"] = sorted(ignore)
    return block


def needs_own_dequantizer(tensor_names: Iterable[str]) -> bool:
    """Whether the checkpoint holds one of the layouts AngelSlim writes under this format's name
    (W4A8, NVFP4: no CPU kernel in transformers), recognised by their marker tensor."""
    markers = tuple(f".{layout.MARKER}" for layout in _LAYOUTS_UNDER_THIS_NAME)
    return any(name.endswith(markers) for name in tensor_names)


def channel_scheme(weight_type: str, activations_dynamic: bool) -> str:
    return f"{weight_type}-{'dynamic' if activations_dynamic else 'weight-only'}"


def library_blocks(group_size: int) -> dict[str, dict[str, Any]]:
    """Every block parquant writes, built by the compressed-tensors library (no ignore list)."""
    blocks = {
        channel_scheme(weight_type, dynamic): library_block(weight_type, dynamic)
        for weight_type in ("int", "float")
        for dynamic in (False, True)
    }
    blocks[FLOAT_BLOCK] = _preset_block("FP8_BLOCK", "float-quantized")
    blocks[INT4_PACKED] = _int4_packed_block(group_size)
    return blocks


def _preset_block(preset: str, layout: str) -> dict[str, Any]:
    """A config of one of the library's preset schemes (the ones llm-compressor and vLLM name)."""
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme(preset, ["Linear"])
    scheme.format = layout
    return _dumped(layout, scheme)


def _dumped(layout: str, scheme: Any) -> dict[str, Any]:
    """The config block of one scheme (group_0), as the library writes it, without an ignore list."""
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig(
        quant_method=NAME,
        format=layout,
        quantization_status="compressed",
        ignore=[],
        kv_cache_scheme=None,
        config_groups={"group_0": scheme},
    )
    block: dict[str, Any] = config.model_dump(mode="json", exclude=_UNWRITTEN)
    return block


def _int4_packed_block(group_size: int) -> dict[str, Any]:
    """W4A16, symmetric, groups along the input dimension (the library's W4A16 preset, our group size)."""
    block = _preset_block("W4A16", "pack-quantized")
    block["config_groups"]["group_0"]["weights"]["group_size"] = group_size
    return block


def library_block(weight_type: str, activations_dynamic: bool) -> dict[str, Any]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

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
    # The per-group format matters: without it, weight-only int8 is read as packed int4-style.
    scheme = QuantizationScheme(
        targets=["Linear"], weights=weights, input_activations=activations, output_activations=None, format=layout
    )
    block = _dumped(layout, scheme)
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


def block_structure(quantization_config: Mapping[str, Any]) -> tuple[int, int] | None:
    """The first config group's weight block (rows, columns), when its strategy is `block`."""
    groups = quantization_config.get("config_groups") or {}
    first: Any = next(iter(groups.values()), {}) if isinstance(groups, Mapping) else {}
    weights = (first.get("weights") or {}) if isinstance(first, Mapping) else {}
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
    block = block_structure(quantization_config)
    return dequantize_scaled(weight, scale if scale is not None else weight.new_ones(1), block)


def dequantize_packed(packed: torch.Tensor, scale: torch.Tensor, shape: torch.Tensor | None) -> torch.Tensor:
    """Symmetric INT4 `pack-quantized`: nibble i of word k is column 8k + i, stored as value + 8."""
    import torch

    from .packing import unpack_columns

    values = unpack_columns(packed).to(torch.int16) - 8
    if shape is not None:
        values = values[:, : int(shape[-1])]
    return dequantize_scaled(values, scale)
