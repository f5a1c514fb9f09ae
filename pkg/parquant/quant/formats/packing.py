"""4-bit values packed into wider words: int32 words (GPTQ v1, AWQ GEMM, compressed-tensors
pack-quantized) and byte pairs (AngelSlim's W4A8 INT4, NVFP4's FP4 codes). One place for it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def _to_int32(packed: torch.Tensor) -> torch.Tensor:
    """int64 words holding 32 bits -> int32 with the same bits (two's complement)."""
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] of 0..15 -> [rows/8, cols] int32; row 8k+i goes to nibble i of word k."""
    packed = torch.zeros(values.shape[0] // 8, values.shape[1], dtype=torch.int64)
    for nibble in range(8):
        packed |= values[nibble::8].to(torch.int64) << (4 * nibble)
    return _to_int32(packed)


def pack_columns(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] of 0..15 -> [rows, cols/8] int32; column 8k+i goes to nibble i of word k."""
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
    for nibble in range(8):
        packed |= values[:, nibble::8].to(torch.int64) << (4 * nibble)
    return _to_int32(packed)


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """[rows/8, cols] int32 -> [rows, cols] values 0..15 (word k holds rows 8k..8k+7, low nibble first)."""
    nibbles = (packed.unsqueeze(1) >> _SHIFTS.view(1, 8, 1)) & 0xF
    return nibbles.reshape(packed.shape[0] * 8, packed.shape[1])


def unpack_columns(packed: torch.Tensor, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """[rows, cols/8] int32 -> [rows, cols] values 0..15; `order` maps nibble i to column order[i]."""
    nibbles = (packed.unsqueeze(-1) >> _SHIFTS.view(1, 1, 8)) & 0xF  # [rows, cols/8, nibble]
    if order is not None:
        columns = torch.empty_like(nibbles)
        columns[..., list(order)] = nibbles
        nibbles = columns
    return nibbles.reshape(packed.shape[0], packed.shape[1] * 8)


def unpack_byte_pairs(packed: torch.Tensor) -> torch.Tensor:
    """[rows, cols/2] bytes (int8 or uint8) -> [rows, cols] codes 0..15; column 2k is the low nibble."""
    codes = packed.to(torch.int16) & 0xFF
    return torch.stack((codes & 0xF, codes >> 4), dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def packed_layer(
    prefix: str, tensors: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(qweight, qzeros, scales) of a layer stored packed (GPTQ, AWQ), or None if it is not."""
    if f"{prefix}.qweight" not in tensors:
        return None
    return tensors[f"{prefix}.qweight"], tensors[f"{prefix}.qzeros"], tensors[f"{prefix}.scales"]
