"""AWQ GEMM: `qweight` I32 [in, out/8], `qzeros` I32 [groups, out/8], nibbles in the interleaved
order [0, 2, 4, 6, 1, 3, 5, 7], `scales` [groups, out].

AngelSlim's int4-awq writes it; loading it in transformers needs a GPU AWQ kernel, so parquant
dequantizes it itself for validation and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .gptq import group_size

NAME = "awq"
LOADS_IN_TRANSFORMERS_ON_CPU = False
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column AWQ_ORDER[i] of its 8


def matches(quantization_config: Mapping[str, Any]) -> bool:
    return quantization_config.get("quant_method") == NAME


def dequantize_packed(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """AWQ GEMM -> float32 [out, in]."""
    import torch

    from .packing import unpack_columns

    values = unpack_columns(qweight, AWQ_ORDER).to(torch.float32)  # [in, out]
    zeros = unpack_columns(qzeros, AWQ_ORDER).to(torch.float32)
    groups = torch.arange(values.shape[0]) // group
    weight = (values - zeros[groups]) * scales.to(torch.float32)[groups]
    return weight.t().contiguous()


def dequantize(
    prefix: str, tensors: Mapping[str, torch.Tensor], quantization_config: Mapping[str, Any]
) -> torch.Tensor | None:
    from .packing import packed_layer

    packed = packed_layer(prefix, tensors)
    if packed is None:
        return None
    qweight, qzeros, scales = packed
    return dequantize_packed(qweight, qzeros, scales, group_size(quantization_config))
