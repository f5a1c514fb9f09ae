"""Built-in PTQ math: reconstruction error bounds on known tensors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from parquant.quant.builders import build
from parquant.quant.checkpoint_config import config_block
from parquant.quant.formats.compressed_tensors import dequantize_scaled
from parquant.quant.methods import get_method
from parquant.quant.ptq import (
    ChannelMethod,
    QuantizedWeight,
    quantize_fp8_per_channel,
    quantize_int8_per_channel,
    quantize_rows,
)

CHANNEL_METHODS = ("int8-weight", "int8-dynamic", "fp8-dynamic")


def dequantize(quantized: QuantizedWeight) -> torch.Tensor:
    return dequantize_scaled(quantized.weight, quantized.weight_scale)


def channel_method(name: str) -> ChannelMethod:
    recipe = get_method(name).recipe("ptq")
    method = build(recipe.single, recipe)
    assert isinstance(method, ChannelMethod)
    return method


def config_of(name: str, ignore: list[str]) -> dict[str, Any]:
    """The config.json block the built-in PTQ writes for a method (from its preset recipe)."""
    return config_block(get_method(name).recipe("ptq"), ignore)


@pytest.fixture
def weight() -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.linspace(0.01, 3.0, 64).unsqueeze(1)  # rows of very different ranges
    w[5] = 0.0  # an all-zero row
    w[7, 3] = 40.0  # an outlier
    return w.to(torch.bfloat16)


def test_int8_per_channel_error_is_at_most_half_a_step(weight: torch.Tensor) -> None:
    q = quantize_int8_per_channel(weight)
    assert q.weight.dtype == torch.int8 and q.weight_scale.shape == (64, 1) and q.weight_scale.dtype == torch.bfloat16
    error = (dequantize(q) - weight.float()).abs()
    step = q.weight_scale.float()
    assert bool((error <= step / 2 + 1e-6).all())
    assert bool((dequantize(q)[5] == 0).all())
    assert int(q.weight.abs().max()) <= 127


def test_fp8_per_channel_relative_error(weight: torch.Tensor) -> None:
    q = quantize_fp8_per_channel(weight)
    assert q.weight.dtype == torch.float8_e4m3fn
    restored, original = dequantize(q), weight.float()
    big = original.abs() > original.abs().amax(dim=1, keepdim=True) / 64  # normal range of E4M3 per row
    relative = ((restored - original).abs() / original.abs().clamp(min=1e-12))[big]
    assert float(relative.max()) <= 2**-4 + 1e-3  # 3 mantissa bits: half a step is 1/16
    cosine = torch.nn.functional.cosine_similarity(restored.flatten(), original.flatten(), dim=0)
    assert float(cosine) > 0.999


def test_blockwise_quantization_is_bit_identical(weight: torch.Tensor) -> None:
    for method in map(channel_method, CHANNEL_METHODS):
        whole = method.quantize(weight)
        blocks = quantize_rows(method, weight, block_bytes=256 * 4 * 5)  # 5 rows a block
        assert torch.equal(whole.weight.view(torch.uint8), blocks.weight.view(torch.uint8))
        assert torch.equal(whole.weight_scale, blocks.weight_scale)


def test_quantization_configs_describe_the_methods() -> None:
    dynamic = config_of("int8-dynamic", ["lm_head"])
    group = dynamic["config_groups"]["group_0"]
    assert dynamic["format"] == "int-quantized" and group["input_activations"]["dynamic"] is True
    weight_only = config_of("int8-weight", [])
    assert weight_only["config_groups"]["group_0"]["input_activations"] is None
    assert config_of("fp8-dynamic", [])["format"] == "float-quantized"


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_rtn_round_trips_through_the_gptq_dequantizer(weight: torch.Tensor, symmetric: bool) -> None:
    from parquant.quant.formats.gptq import dequantize_packed as dequantize_gptq
    from parquant.quant.rtn import RTNInt4, quantize_groups

    method = RTNInt4("int4-rtn" if symmetric else "int4-rtn-asym", symmetric, group_size=64)
    tensors = method.quantize_tensors(weight)
    restored = dequantize_gptq(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"], 64)
    values, scales, zeros = quantize_groups(weight, 64, symmetric)
    expected = (values.float() - zeros.float().repeat_interleave(64, 1)) * scales.float().repeat_interleave(64, 1)
    assert torch.equal(restored, expected)
    step = scales.float().repeat_interleave(64, 1)
    error = (restored - weight.float()).abs()
    # symmetric: never clipped, at most half a step; asymmetric: GPTQ v1 cannot store a zero point of 0, so a
    # group whose minimum is >= 0 (rare in trained weights) may lose up to one step at its top
    bound = step / 2 if symmetric else step
    assert bool((error <= bound * 1.01 + 1e-6).all())
    assert float((error / step.clamp(min=1e-12))[step > 0].mean()) < 0.3
    assert config_of(method.name, ["lm_head"])["sym"] is symmetric


def test_config_blocks_keep_the_bytes_outputs_always_had() -> None:
    """Built with the compressed-tensors library now, the block is the one parquant always wrote
    (hand-written before): config.json of every output stays byte for byte the same."""
    import json

    activations = {
        "num_bits": 8,
        "type": "int",
        "symmetric": True,
        "strategy": "token",
        "dynamic": True,
        "group_size": None,
        "observer": None,
    }
    expected = {
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "quantization_status": "compressed",
        "ignore": ["lm_head", "model.embed"],
        "kv_cache_scheme": None,
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": 8,
                    "type": "int",
                    "symmetric": True,
                    "strategy": "channel",
                    "dynamic": False,
                    "group_size": None,
                    "observer": "minmax",
                },
                "format": "int-quantized",
                "input_activations": activations,
                "output_activations": None,
            }
        },
    }
    block = config_of("int8-dynamic", ["model.embed", "lm_head"])
    assert json.dumps(block, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_found_by_the_row_maxima(weight: torch.Tensor, bad: float) -> None:
    from parquant.quant.ptq import NonFiniteWeightError

    spoiled = weight.clone()
    spoiled[7, 3] = bad
    for method in map(channel_method, CHANNEL_METHODS):
        with pytest.raises(NonFiniteWeightError):
            quantize_rows(method, spoiled, block_bytes=256 * 4 * 5)
