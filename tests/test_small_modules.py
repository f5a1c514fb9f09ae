"""Pure helpers: non-finite counting on raw bytes, path sanitising, quantization detection, fs options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parquant.errors import InvalidInputError, UsageError
from parquant.fs import parse_storage_options
from parquant.names import safe_relative_path
from parquant.numerics import count_nonfinite
from parquant.quant.detect import detect_quantization, logical_parameters


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_count_nonfinite_matches_torch(dtype: torch.dtype) -> None:
    values = torch.tensor([0.0, 1.5, float("nan"), float("inf"), -float("inf"), -2.0, 65504.0], dtype=dtype)
    name = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64"}[dtype]
    raw = values.view(torch.uint8).numpy().tobytes()
    assert count_nonfinite(raw, name) == int((~torch.isfinite(values)).sum())


def test_count_nonfinite_fp8_and_ints() -> None:
    values = torch.tensor([0.0, 448.0, -448.0, 1.0]).to(torch.float8_e4m3fn)
    raw = bytearray(values.view(torch.uint8).numpy().tobytes()) + bytes([0x7F, 0xFF])
    assert count_nonfinite(bytes(raw), "F8_E4M3") == 2
    assert count_nonfinite(np.array([2**31 - 1], np.int32).tobytes(), "I32") == 0


@pytest.mark.parametrize("name", ["config.json", "sub/tokenizer.json", "a b.txt"])
def test_safe_names_pass(name: str) -> None:
    assert safe_relative_path(name, "x") == name


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./x", "a\\b", "C:x", "a\nb"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match="unsafe file name"):
        safe_relative_path(name, "x")


def test_detects_schemes() -> None:
    ct = {
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {"group_0": {"weights": {"type": "float", "num_bits": 8}}},
        }
    }
    scheme = detect_quantization(ct, [])
    assert scheme.quantized and scheme.bits == 8 and "float-quantized" in scheme.describe()
    gptq = detect_quantization({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}, [])
    assert gptq.describe() == "gptq, 4-bit, group 128"
    assert detect_quantization({}, ["l.qweight"]).method == "gptq-or-awq"
    assert detect_quantization({}, ["l.weight_scale"]).method == "unknown"
    assert not detect_quantization({}, ["l.weight"]).quantized
    assert logical_parameters("l.qweight", "I32", 10, 4) == 80
    assert logical_parameters("l.scales", "F16", 10, 4) == 0


def test_storage_options_parse() -> None:
    assert parse_storage_options(["endpoint_url=http://h:1", "region=x=y"]) == {
        "endpoint_url": "http://h:1",
        "region": "x=y",
    }
    with pytest.raises(UsageError):
        parse_storage_options(["=x"])
