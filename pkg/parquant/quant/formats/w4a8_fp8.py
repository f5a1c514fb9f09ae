"""AngelSlim's W4A8 layout: INT4 weights in groups under a per-tensor FP8 scale, FP8 activations.

`qweight` [out, in/2] int8 holds two signed INT4 values per byte (column 2k in the low nibble,
2k+1 in the high one); `weight_scale_int4` [out, in/group] is each group's step; `weight_scale`
[1] the per-tensor FP8 scale the kernel re-quantizes the restored weight with; `input_scale` [1]
the static FP8 activation scale. Its config.json says compressed-tensors (`naive-quantized`), so
the compressed-tensors module hands such a layer over here, recognised by `weight_scale_int4`.
No CPU kernel exists for it in transformers: validate and benchmark use this dequantizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MARKER = "weight_scale_int4"
FP8_MAX = 448.0


def unpack_int4_pairs(packed: torch.Tensor) -> torch.Tensor:
    """[out, in/2] int8 -> [out, in] signed INT4 values (low nibble first)."""
    from .packing import unpack_byte_pairs

    pairs = unpack_byte_pairs(packed)
    return pairs - ((pairs & 0x8) << 1)  # sign-extend 4 bits


def dequantize(prefix: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The weight the kernel multiplies with: INT4 x group step, rounded to FP8 under the tensor scale."""
    import torch

    steps = tensors.get(f"{prefix}.{MARKER}")
    if steps is None:
        return None
    values = unpack_int4_pairs(tensors[f"{prefix}.qweight"]).to(torch.float32)
    group = values.shape[1] // steps.shape[1]
    restored = values * steps.to(torch.float32).repeat_interleave(group, dim=1)
    scale = tensors.get(f"{prefix}.weight_scale")
    if scale is None:
        return restored
    tensor_scale = scale.to(torch.float32).reshape(-1)[0]
    if float(tensor_scale) <= 0:
        return restored
    fp8 = (restored / tensor_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return fp8.to(torch.float32) * tensor_scale
