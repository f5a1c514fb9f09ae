"""Round-to-nearest INT4 with groups, stored as GPTQ v1: the reference that GPTQ and AWQ must beat.

Pure tensor math. Symmetric: scale = absmax / 7 per group, zero point 8. Asymmetric:
scale = (max - min) / 15, zero point = round(-min / scale). Written in the GPTQ v1 layout
(`qweight` [in/8, out], `qzeros` [groups, out/8] holding zero - 1, `scales` [groups, out],
`g_idx` [in]) so the same dequantizer and the same tools read RTN, GPTQ and AWQ results alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..store.schema import TensorSpec
from .formats.packing import pack_columns, pack_rows


def quantize_groups(weight: torch.Tensor, group_size: int, symmetric: bool) -> tuple[torch.Tensor, ...]:
    """[out, in] float -> (values 0..15 [out, in], scales [out, groups], zeros [out, groups])."""
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // group_size, group_size)
    if symmetric:
        scale = (groups.abs().amax(-1) / 7).to(weight.dtype).float()
        zero = torch.full_like(scale, 8)
    else:
        low, high = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
        scale = ((high - low) / 15).to(weight.dtype).float()
        # GPTQ v1 stores zero - 1 in 4 bits, so a zero point of 0 cannot be written: keep it >= 1.
        zero = torch.round(-low / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(1, 15)
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = torch.round(groups / divisor.unsqueeze(-1) + zero.unsqueeze(-1)).clamp(0, 15)
    return values.reshape(out_features, in_features).to(torch.uint8), scale.to(weight.dtype), zero.to(torch.uint8)


@dataclass(frozen=True)
class RTNInt4:
    name: str
    symmetric: bool
    group_size: int = 128

    def outputs(self, spec: TensorSpec, module: str) -> list[TensorSpec]:
        out_features, in_features = spec.shape
        groups = in_features // self.group_size
        return [
            TensorSpec(f"{module}.g_idx", "I32", (in_features,)),
            TensorSpec(f"{module}.qweight", "I32", (in_features // 8, out_features)),
            TensorSpec(f"{module}.qzeros", "I32", (groups, out_features // 8)),
            TensorSpec(f"{module}.scales", spec.dtype, (groups, out_features)),
        ]

    def supports(self, spec: TensorSpec) -> bool:
        out_features, in_features = spec.shape
        return in_features % self.group_size == 0 and in_features % 8 == 0 and out_features % 8 == 0

    def quantize_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        values, scales, zeros = quantize_groups(weight, self.group_size, self.symmetric)
        in_features = weight.shape[1]
        return {
            "g_idx": (torch.arange(in_features) // self.group_size).to(torch.int32),
            "qweight": pack_rows(values.t().contiguous()),
            "qzeros": pack_columns((zeros.to(torch.int16) - 1).t().contiguous()),
            "scales": scales.t().contiguous(),
        }


@dataclass(frozen=True)
class PackedInt4:
    """Symmetric INT4 round-to-nearest in groups, written as compressed-tensors `pack-quantized`
    (W4A16): `weight_packed` [out, in/8] holds value + 8 in eight nibbles per int32 along the input
    dimension, `weight_scale` [out, groups], `weight_shape` [2]. The same values as `int4-rtn`; a
    layout transformers (with compressed-tensors), vLLM and SGLang load without GPTQ kernels."""

    name: str
    group_size: int = 128

    def outputs(self, spec: TensorSpec, module: str) -> list[TensorSpec]:
        out_features, in_features = spec.shape
        return [
            TensorSpec(f"{module}.weight_packed", "I32", (out_features, in_features // 8)),
            TensorSpec(f"{module}.weight_scale", spec.dtype, (out_features, in_features // self.group_size)),
            TensorSpec(f"{module}.weight_shape", "I64", (2,)),
        ]

    def supports(self, spec: TensorSpec) -> bool:
        return spec.shape[1] % self.group_size == 0 and spec.shape[1] % 8 == 0

    def quantize_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        values, scales, _ = quantize_groups(weight, self.group_size, symmetric=True)  # values = signed + 8
        return {
            "weight_packed": pack_columns(values),
            "weight_scale": scales,
            "weight_shape": torch.tensor(weight.shape, dtype=torch.int64),
        }
