"""Built-in post-training quantization: pure tensor math, no I/O (the streaming stage is ptq_stage.py).

Each method turns one float weight [out, in] into the tensors a compressed-tensors checkpoint
stores for it, so the result loads in transformers (with compressed-tensors), vLLM and SGLang:

- int8-weight:  W8A16, int8 weight + per-output-channel scale (symmetric, absmax / 127).
- int8-dynamic: W8A8, same weights; activations quantized per token at run time.
- fp8-dynamic:  FP8 E4M3 weight + per-output-channel scale (absmax / 448); activations dynamic.
- int4-rtn, int4-rtn-asym: round-to-nearest INT4 in groups (rtn.py), the reference GPTQ/AWQ beat.

The registry (methods.py) says which method is which; this module only does the math.

Scales are rounded to their storage dtype *before* the weights are divided by them, so
dequantization (q x stored scale) reproduces exactly the values the rounding aimed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..store.schema import TensorSpec

INT8_MAX = 127.0
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


@dataclass(frozen=True)
class QuantizedWeight:
    weight: torch.Tensor  # int8 or float8_e4m3fn, [out, in]
    weight_scale: torch.Tensor  # [out, 1]


@dataclass(frozen=True)
class ChannelMethod:
    """A per-output-channel 8-bit method (int8 or FP8 E4M3 weights), written as compressed-tensors."""

    name: str
    weight_type: str  # "int" or "float"
    activations_dynamic: bool

    def quantize(self, weight: torch.Tensor) -> QuantizedWeight:
        if self.weight_type == "int":
            return quantize_int8_per_channel(weight)
        return quantize_fp8_per_channel(weight)

    def outputs(self, spec: TensorSpec, module: str) -> list[TensorSpec]:
        out_features, in_features = spec.shape
        stored = "I8" if self.weight_type == "int" else "F8_E4M3"
        return [
            TensorSpec(f"{module}.weight", stored, (out_features, in_features)),
            TensorSpec(f"{module}.weight_scale", spec.dtype, (out_features, 1)),
        ]

    def supports(self, spec: TensorSpec) -> bool:
        return True

    def quantize_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        quantized = quantize_rows(self, weight)
        return {"weight": quantized.weight, "weight_scale": quantized.weight_scale}


class Method(Protocol):
    """What the streaming stage needs from a built-in quantizer (quant/builders.py makes one per
    recipe scheme; the config.json block comes from the recipe, quant/checkpoint_config.py)."""

    @property
    def name(self) -> str: ...

    def outputs(self, spec: TensorSpec, module: str) -> list[TensorSpec]: ...

    def supports(self, spec: TensorSpec) -> bool: ...

    def quantize_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]: ...


def _channel_scale(weight: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale in the weight's dtype [out, 1], the same scale as float32 to divide by)."""
    stored = (weight.float().abs().amax(dim=1, keepdim=True) / qmax).to(weight.dtype)
    divisor = stored.float()
    return stored, torch.where(divisor > 0, divisor, torch.ones_like(divisor))  # all-zero rows stay zero


def quantize_int8_per_channel(weight: torch.Tensor) -> QuantizedWeight:
    stored, scale = _channel_scale(weight, INT8_MAX)
    values = torch.round(weight.float() / scale).clamp(-INT8_MAX - 1, INT8_MAX).to(torch.int8)
    return QuantizedWeight(values, stored)


def quantize_fp8_per_channel(weight: torch.Tensor) -> QuantizedWeight:
    stored, scale = _channel_scale(weight, FP8_MAX)
    values = (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return QuantizedWeight(values, stored)


class NonFiniteWeightError(ValueError):
    """The weight holds NaN or Inf: there is no scale that represents it."""


def quantize_rows(method: ChannelMethod, weight: torch.Tensor, block_bytes: int = 8 * 2**20) -> QuantizedWeight:
    """`method.quantize` in blocks of rows, bit-identical to quantizing the whole tensor at once
    (per-channel quantization treats each output row alone), and much cheaper: one float32 block
    buffer is reused in place, the outputs are written where they end up, and the NaN/Inf check
    comes free from each row's max and min (both propagate NaN) instead of a pass of its own.
    Measured on the 1 GB benchmark model: see bench/quantize_bench.py.
    """
    rows, columns = weight.shape
    rows_per_block = max(1, min(rows, block_bytes // max(1, columns * 4)))
    if type(method).quantize is not ChannelMethod.quantize:  # a subclass with its own math: call it per block
        if not bool(torch.isfinite(weight).all()):
            raise NonFiniteWeightError("the weight contains NaN/Inf values")
        parts = [method.quantize(weight[start : start + rows_per_block]) for start in range(0, rows, rows_per_block)]
        return QuantizedWeight(torch.cat([p.weight for p in parts]), torch.cat([p.weight_scale for p in parts]))
    integer = method.weight_type == "int"
    qmax = INT8_MAX if integer else FP8_MAX
    values = torch.empty((rows, columns), dtype=torch.int8 if integer else torch.float8_e4m3fn)
    stored = torch.empty((rows, 1), dtype=weight.dtype)
    buffer = torch.empty((rows_per_block, columns), dtype=torch.float32)
    for start in range(0, rows, rows_per_block):
        count = min(rows_per_block, rows - start)
        block = buffer[:count]
        block.copy_(weight[start : start + count])
        absmax = torch.maximum(block.amax(dim=1, keepdim=True), block.amin(dim=1, keepdim=True).neg_())
        if not bool(torch.isfinite(absmax).all()):
            raise NonFiniteWeightError("the weight contains NaN/Inf values")
        scale = (absmax / qmax).to(weight.dtype)
        stored[start : start + count] = scale
        divisor = scale.float()
        block.div_(torch.where(divisor > 0, divisor, torch.ones_like(divisor)))  # all-zero rows stay zero
        if integer:
            block.round_().clamp_(-INT8_MAX - 1, INT8_MAX)
        else:
            block.clamp_(-FP8_MAX, FP8_MAX)
        values[start : start + count] = block  # the cast to int8 / float8 happens in the copy
    return QuantizedWeight(values, stored)
