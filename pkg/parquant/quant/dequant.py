"""Dequantize every weight layout parquant produces or imports, on CPU, with torch only.

Pure functions, tensors in and tensors out: validation and tests use them to compare quantized
weights with the originals without any GPU kernel library (gptqmodel, autoawq, vLLM).

Layouts (all as written in HF checkpoints):
- compressed-tensors FP8/INT8: `weight` (F8_E4M3 or I8) x `weight_scale` ([1], [out, 1] or
  [out, groups]).
- GPTQ v1: `qweight` I32 [in/8, out] (8 input rows per word, low nibble first), `qzeros` I32
  [groups, out/8] storing zero-1, `scales` [groups, out], `g_idx` [in] (group of each input row).
- AWQ GEMM: `qweight` I32 [in, out/8], `qzeros` I32 [groups, out/8], nibbles in the interleaved
  order [0, 2, 4, 6, 1, 3, 5, 7], `scales` [groups, out].
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column AWQ_ORDER[i] of its 8
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def unpack_int4_rows(packed: torch.Tensor) -> torch.Tensor:
    """[rows/8, cols] int32 -> [rows, cols] values 0..15 (word k holds rows 8k..8k+7, low nibble first)."""
    nibbles = (packed.unsqueeze(1) >> _SHIFTS.view(1, 8, 1)) & 0xF
    return nibbles.reshape(packed.shape[0] * 8, packed.shape[1])


def unpack_int4_columns(packed: torch.Tensor, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """[rows, cols/8] int32 -> [rows, cols] values 0..15; `order` maps nibble i to column order[i]."""
    nibbles = (packed.unsqueeze(-1) >> _SHIFTS.view(1, 1, 8)) & 0xF  # [rows, cols/8, nibble]
    if order is not None:
        columns = torch.empty_like(nibbles)
        columns[..., list(order)] = nibbles
        nibbles = columns
    return nibbles.reshape(packed.shape[0], packed.shape[1] * 8)


def dequantize_scaled(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP8/INT8 compressed-tensors: weight x scale, per tensor, per channel or per group."""
    values = weight.to(torch.float32)
    scale = scale.to(torch.float32)
    if scale.ndim == 2 and scale.shape[1] not in (1, values.shape[1]):
        group = values.shape[1] // scale.shape[1]
        scale = scale.repeat_interleave(group, dim=1)
    return values * scale


def dequantize_gptq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None, group_size: int
) -> torch.Tensor:
    """GPTQ v1 -> float32 [out, in] (transposed to the nn.Linear layout)."""
    values = unpack_int4_rows(qweight).to(torch.float32)  # [in, out]
    zeros = unpack_int4_columns(qzeros).to(torch.float32) + 1  # v1 stores zero - 1
    rows = values.shape[0]
    groups = g_idx.long() if g_idx is not None else torch.arange(rows) // group_size
    weight = (values - zeros[groups]) * scales.to(torch.float32)[groups]
    return weight.t().contiguous()


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """AWQ GEMM -> float32 [out, in]."""
    values = unpack_int4_columns(qweight, AWQ_ORDER).to(torch.float32)  # [in, out]
    zeros = unpack_int4_columns(qzeros, AWQ_ORDER).to(torch.float32)
    groups = torch.arange(values.shape[0]) // group_size
    weight = (values - zeros[groups]) * scales.to(torch.float32)[groups]
    return weight.t().contiguous()


def dequantize_module(
    prefix: str, tensors: Mapping[str, torch.Tensor], method: str, group_size: int = 128
) -> torch.Tensor | None:
    """The float weight of the linear layer `prefix`, whatever its layout; None if it has no weight."""
    if f"{prefix}.qweight" in tensors:
        qweight, qzeros, scales = (tensors[f"{prefix}.{n}"] for n in ("qweight", "qzeros", "scales"))
        if method == "awq":
            return dequantize_awq(qweight, qzeros, scales, group_size)
        return dequantize_gptq(qweight, qzeros, scales, tensors.get(f"{prefix}.g_idx"), group_size)
    weight = tensors.get(f"{prefix}.weight")
    if weight is None:
        return None
    scale = tensors.get(f"{prefix}.weight_scale")
    return dequantize_scaled(weight, scale) if scale is not None else weight.to(torch.float32)


_QUANT_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx", ".weight_scale", ".input_scale", ".weight_zero_point")


def dequantized_state_dict(
    tensors: Mapping[str, torch.Tensor], quantization_config: Mapping[str, object] | None, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """A plain float state dict (`<module>.weight` for every layer) from any supported layout."""
    config = dict(quantization_config or {})
    method = str(config.get("quant_method", ""))
    group_size = int(str(config.get("group_size", 128) or 128))
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(".qweight") or (name.endswith(".weight") and f"{name}_scale" in tensors):
            prefix = name.rsplit(".", 1)[0]
            weight = dequantize_module(prefix, tensors, method, group_size)
            assert weight is not None
            state[f"{prefix}.weight"] = weight.to(dtype)
        elif not name.endswith(_QUANT_SUFFIXES):
            state[name] = tensor
    return state
