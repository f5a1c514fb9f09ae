"""Round-to-nearest INT4 with groups, stored as GPTQ v1: the reference that GPTQ and AWQ must beat.

Pure tensor math. Symmetric: scale = absmax / 7 per group, zero point 8. Asymmetric:
scale = (max - min) / 15, zero point = round(-min / scale). Written in the GPTQ v1 layout
(`qweight` [in/8, out], `qzeros` [groups, out/8] holding zero - 1, `scales` [groups, out],
`g_idx` [in]) so the same dequantizer and the same tools read RTN, GPTQ and AWQ results alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..store.schema import TensorSpec


def _to_int32(packed: torch.Tensor) -> torch.Tensor:
    """int64 words holding 32 bits -> int32 with the same bits (two's complement)."""
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] of 0..15 -> [rows/8, cols] int32; row 8k+i goes to nibble i of word k."""
    packed = torch.zeros(values.shape[0] // 8, values.shape[1], dtype=torch.int64)
    for nibble in range(8):
        packed |= values[nibble::8].to(torch.int64) << (4 * nibble)
    return _to_int32(packed)


def pack_columns(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] of 0..15 -> [rows, cols/8] int32; column 8k+i goes to nibble i of word k."""
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
    for nibble in range(8):
        packed |= values[:, nibble::8].to(torch.int64) << (4 * nibble)
    return _to_int32(packed)


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

    def quantization_config(self, ignore: list[str]) -> dict[str, Any]:
        return {
            "quant_method": "gptq",
            "checkpoint_format": "gptq",
            "bits": 4,
            "group_size": self.group_size,
            "desc_act": False,
            "sym": self.symmetric,
            "true_sequential": False,
            "modules_to_not_convert": sorted(ignore),
            "parquant_method": self.name,
        }
