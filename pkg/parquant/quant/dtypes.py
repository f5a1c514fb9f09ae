"""safetensors dtype names -> torch dtypes (torch imported only when asked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnavailableError

if TYPE_CHECKING:
    import torch


def torch_dtype(name: str) -> torch.dtype:
    import torch

    table = {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "I32": torch.int32,
        "I64": torch.int64,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "F64": torch.float64,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        "U16": torch.uint16,
        "U32": torch.uint32,
        "U64": torch.uint64,
    }
    if name not in table:
        raise UnavailableError(f"dtype {name} has no torch equivalent in this torch build")
    return table[name]
