"""NVFP4 (the ModelOpt layout AngelSlim writes): FP4 E2M1 weights in blocks of 16 along the input.

`weight` [out, in/2] uint8 holds two E2M1 codes per byte (column 2k in the low nibble; bit 3 is
the sign, bits 0-2 index 0, 0.5, 1, 1.5, 2, 3, 4, 6); `weight_scale` [out, in/16] FP8 E4M3 is each
block's scale and `weight_scale_2` [] the FP32 global scale they are relative to; `input_scale`
the static activation scale. Its config.json says compressed-tensors (`naive-quantized`), so the
compressed-tensors module hands such a layer over here, recognised by `weight_scale_2`. FP4 needs
Blackwell tensor cores: on CPU, validate and benchmark use this dequantizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MARKER = "weight_scale_2"
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """[out, in/2] uint8 -> [out, in] float32 E2M1 values (low nibble first)."""
    import torch

    from .packing import unpack_byte_pairs

    return torch.tensor(E2M1, dtype=torch.float32)[unpack_byte_pairs(packed).long()]


def dequantize(prefix: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    import torch

    global_scale = tensors.get(f"{prefix}.{MARKER}")
    if global_scale is None:
        return None
    values = unpack_e2m1(tensors[f"{prefix}.weight"])
    block_scales = tensors[f"{prefix}.weight_scale"].to(torch.float32)
    block = values.shape[1] // block_scales.shape[1]
    scales = block_scales.repeat_interleave(block, dim=1) * global_scale.to(torch.float32).reshape(-1)[0]
    return values * scales
