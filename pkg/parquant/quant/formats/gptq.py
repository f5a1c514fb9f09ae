"""GPTQ v1: `qweight` I32 [in/8, out] (8 input rows per word, low nibble first), `qzeros` I32
[groups, out/8] storing zero - 1, `scales` [groups, out], `g_idx` [in] (group of each input row).

AngelSlim's int4-gptq and the built-in int4-rtn methods write it; transformers needs gptqmodel
(GPU kernels) to load it, so parquant dequantizes it itself for validation and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


NAME = "gptq"
LOADS_IN_TRANSFORMERS_ON_CPU = False


def matches(quantization_config: Mapping[str, Any]) -> bool:
    return quantization_config.get("quant_method") == NAME


def config_block(bits: int, group_size: int, symmetric: bool, ignore: list[str], method: str) -> dict[str, Any]:
    """The `quantization_config` a GPTQ v1 checkpoint written by parquant carries."""
    return {
        "quant_method": NAME,
        "checkpoint_format": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": False,
        "sym": symmetric,
        "true_sequential": False,
        "modules_to_not_convert": sorted(ignore),
        "parquant_method": method,
    }


def group_size(quantization_config: Mapping[str, Any]) -> int:
    return int(str(quantization_config.get("group_size", 128) or 128))


def dequantize_packed(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None, group: int
) -> torch.Tensor:
    """GPTQ v1 -> float32 [out, in] (transposed to the nn.Linear layout)."""
    import torch

    from .packing import unpack_columns, unpack_rows

    values = unpack_rows(qweight).to(torch.float32)  # [in, out]
    zeros = unpack_columns(qzeros).to(torch.float32) + 1  # v1 stores zero - 1
    rows = values.shape[0]
    groups = g_idx.long() if g_idx is not None else torch.arange(rows) // group
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
    return dequantize_packed(qweight, qzeros, scales, tensors.get(f"{prefix}.g_idx"), group_size(quantization_config))
