"""Block FP8: one scale per 128 x 128 block of a weight, E4M3 values (DeepSeek-V3's layout).

Pure tensor math. vLLM and SGLang serve this layout with their block-FP8 kernels; it is written
as compressed-tensors (`float-quantized`, strategy `block`), with the activations quantized at run
time per group of 128. A band of 128 rows is quantized at a time, so memory stays at one band in
float32 whatever the weight's size, and edge blocks (a dimension not a multiple of 128) get a
scale of their own over the values they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..store.schema import TensorSpec
from .formats.compressed_tensors import BLOCK
from .ptq import FP8_MAX, NonFiniteWeightError


def quantize_fp8_blocks(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (E4M3 values [out, in], scales [ceil(out/block), ceil(in/block)] in the
    weight's dtype). Each scale is its block's absmax / 448, rounded to its dtype before dividing,
    so values x stored scale is what the rounding aimed at."""
    rows, columns = weight.shape
    row_blocks, column_blocks = -(-rows // block), -(-columns // block)
    values = torch.empty((rows, columns), dtype=torch.float8_e4m3fn)
    scales = torch.empty((row_blocks, column_blocks), dtype=weight.dtype)
    padded = column_blocks * block
    band = torch.zeros((block, padded), dtype=torch.float32)
    for index in range(row_blocks):
        start = index * block
        count = min(block, rows - start)
        part = band[:count]
        part[:, :columns].copy_(weight[start : start + count])
        blocks = part.view(count, column_blocks, block)
        absmax = blocks.abs().amax(dim=(0, 2))  # [column_blocks]; NaN propagates
        if not bool(torch.isfinite(absmax).all()):
            raise NonFiniteWeightError("the weight contains NaN/Inf values")
        stored = (absmax / FP8_MAX).to(weight.dtype)
        scales[index] = stored
        divisor = stored.float()
        divisor = torch.where(divisor > 0, divisor, torch.ones_like(divisor))  # all-zero blocks stay zero
        blocks.div_(divisor.view(1, column_blocks, 1)).clamp_(-FP8_MAX, FP8_MAX)
        values[start : start + count] = part[:, :columns]
    return values, scales


@dataclass(frozen=True)
class FP8Block:
    """Built-in `fp8-block`: the streaming stage's method object (see ptq.Method)."""

    name: str = "fp8-block"
    block: int = BLOCK

    def outputs(self, spec: TensorSpec, module: str) -> list[TensorSpec]:
        rows, columns = spec.shape
        return [
            TensorSpec(f"{module}.weight", "F8_E4M3", (rows, columns)),
            TensorSpec(f"{module}.weight_scale", spec.dtype, (-(-rows // self.block), -(-columns // self.block))),
        ]

    def supports(self, spec: TensorSpec) -> bool:
        return True

    def quantize_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        values, scales = quantize_fp8_blocks(weight, self.block)
        return {"weight": values, "weight_scale": scales}
