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


def upstream_step_error(steps: torch.Tensor, original: torch.Tensor) -> float:
    """How AngelSlim stored a module's group steps: the ratio of each group's weight absmax to its
    step, averaged. Its INT4 codes are round(w / (absmax / 7)) (7: INT4's largest positive value),
    so the right step is absmax / 7; AngelSlim 0.5.0 stores absmax / 8 (its QDQModule), which
    makes every restored weight 7/8 of its size (12.5% too small). Returns ~8.0 for that
    bug, ~7.0 for a correct step."""

    groups = steps.shape[1]
    absmax = original.float().reshape(original.shape[0], groups, -1).abs().amax(dim=-1)
    usable = steps.float() > 0
    return float((absmax[usable] / steps.float()[usable]).mean()) if bool(usable.any()) else 7.0


def corrected_steps(steps: torch.Tensor) -> torch.Tensor:
    """absmax / 7 from a stored absmax / 8, bit for bit what the codes were made with: x8 is exact
    in binary floating point, then the division rounds once, in the step's own dtype, as
    AngelSlim's own `scales.div_(7)` did."""
    return (steps * 8) / 7
