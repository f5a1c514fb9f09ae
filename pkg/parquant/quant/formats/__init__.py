"""Checkpoint formats: how a quantized layer is stored, described in config.json, and read back.

One module per format (compressed-tensors, GPTQ v1, AWQ GEMM), each with `describe` (what
`quantization_config` says), `dequantize` (a layer's float weight, torch only) and, where
parquant writes the format, the config block it writes. `format_for(quantization_config)` picks
the module; detect, dequantize, validate and the weight loader all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

from . import awq, compressed_tensors, gptq


class CheckpointFormat(Protocol):
    NAME: str
    LOADS_IN_TRANSFORMERS_ON_CPU: bool

    def matches(self, quantization_config: Mapping[str, Any]) -> bool: ...

    def dequantize(
        self, prefix: str, tensors: Mapping[str, torch.Tensor], quantization_config: Mapping[str, Any]
    ) -> torch.Tensor | None: ...


FORMATS: tuple[CheckpointFormat, ...] = (compressed_tensors, gptq, awq)


def format_for(quantization_config: Mapping[str, Any] | None) -> CheckpointFormat:
    """The format a `quantization_config` block describes; compressed-tensors' scaled layout (which
    also reads plain float weights) when there is none or it names no format parquant knows."""
    config = quantization_config or {}
    for candidate in FORMATS:
        if candidate.matches(config):
            return candidate
    return compressed_tensors
