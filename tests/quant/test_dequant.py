"""Dequantizers against layouts packed independently here (GPTQ v1 and AWQ GEMM)."""

from __future__ import annotations

import torch

from parquant.quant.formats.awq import AWQ_ORDER
from parquant.quant.formats.awq import dequantize_packed as dequantize_awq
from parquant.quant.formats.compressed_tensors import dequantize_scaled
from parquant.quant.formats.gptq import dequantize_packed as dequantize_gptq


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] 0..15 -> [rows/8, cols] int32, row 8k+i in nibble i (GPTQ qweight layout)."""
    rows, cols = values.shape
    packed = torch.zeros(rows // 8, cols, dtype=torch.int64)
    for i in range(8):
        packed |= values[i::8].to(torch.int64) << (4 * i)
    return packed.to(torch.int32) if packed.max() < 2**31 else (packed - 2**32 * (packed >= 2**31)).to(torch.int32)


def pack_columns(values: torch.Tensor, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    rows, cols = values.shape
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for i in range(8):
        packed |= values[:, order[i] :: 8].to(torch.int64) << (4 * i)
    return (packed - 2**32 * (packed >= 2**31)).to(torch.int32)


def test_gptq_v1_round_trip() -> None:
    torch.manual_seed(0)
    in_features, out_features, group = 256, 64, 128
    q = torch.randint(0, 16, (in_features, out_features))
    zeros = torch.randint(1, 16, (in_features // group, out_features))
    scales = torch.rand(in_features // group, out_features) + 0.1
    g_idx = torch.arange(in_features) // group
    expected = ((q - zeros[g_idx]) * scales[g_idx]).t()
    got = dequantize_gptq(pack_rows(q), pack_columns(zeros - 1), scales, g_idx.to(torch.int32), group)
    assert torch.allclose(got, expected)


def test_awq_gemm_round_trip() -> None:
    torch.manual_seed(1)
    in_features, out_features, group = 256, 64, 64
    q = torch.randint(0, 16, (in_features, out_features))
    zeros = torch.randint(0, 16, (in_features // group, out_features))
    scales = torch.rand(in_features // group, out_features).half()
    groups = torch.arange(in_features) // group
    expected = ((q - zeros[groups]) * scales.float()[groups]).t()
    got = dequantize_awq(pack_columns(q, AWQ_ORDER), pack_columns(zeros, AWQ_ORDER), scales, group)
    assert torch.allclose(got, expected)


def test_scaled_layouts() -> None:
    weight = torch.tensor([[1, -2, 3, 4], [5, 6, -7, 8]], dtype=torch.int8)
    assert torch.equal(dequantize_scaled(weight, torch.tensor([0.5])), weight.float() * 0.5)
    per_channel = dequantize_scaled(weight, torch.tensor([[1.0], [2.0]]))
    assert torch.equal(per_channel[1], weight[1].float() * 2)
    per_group = dequantize_scaled(weight, torch.tensor([[1.0, 10.0], [1.0, 10.0]]))
    assert torch.equal(per_group[0], torch.tensor([1.0, -2.0, 30.0, 40.0]))
