"""Dequantize any layer parquant produces or imports, on CPU, with torch only.

Validation, the weight loader and tests compare quantized weights with the originals without any
GPU kernel library (gptqmodel, autoawq, vLLM). The layouts themselves live in `quant.formats`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .formats import compressed_tensors, format_for

_QUANT_SUFFIXES = (
    ".qweight",
    ".qzeros",
    ".scales",
    ".g_idx",
    ".weight_scale",
    ".input_scale",
    ".weight_zero_point",
    ".weight_packed",
    ".weight_shape",
    ".weight_scale_int4",
    ".weight_scale_2",
)


def dequantize_module(
    prefix: str, tensors: Mapping[str, torch.Tensor], quantization_config: Mapping[str, Any] | None
) -> torch.Tensor | None:
    """The float weight of the linear layer `prefix` in the layout the config names; a layer the
    method left alone (ignored) is read as a plain or scaled weight. None if it has no weight."""
    config = quantization_config or {}
    restored = format_for(config).dequantize(prefix, tensors, config)
    return restored if restored is not None else compressed_tensors.dequantize(prefix, tensors, config)


def dequantized_state_dict(
    tensors: Mapping[str, torch.Tensor], quantization_config: Mapping[str, Any] | None, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """A plain float state dict (`<module>.weight` for every layer) from any supported layout."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith((".qweight", ".weight_packed")) or (name.endswith(".weight") and f"{name}_scale" in tensors):
            prefix = name.rsplit(".", 1)[0]
            weight = dequantize_module(prefix, tensors, quantization_config)
            assert weight is not None
            state[f"{prefix}.weight"] = weight.to(dtype)
        elif not name.endswith(_QUANT_SUFFIXES):
            state[name] = tensor
    return state
