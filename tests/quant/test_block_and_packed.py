"""Built-in fp8-block (128x128 scales) and int4-packed (compressed-tensors pack-quantized): error
bounds on known tensors, the layout the compressed-tensors library itself packs, and outputs that
load in transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parquant.quant.builders import build
from parquant.quant.checkpoint_config import config_block
from parquant.quant.config import load_config
from parquant.quant.formats.compressed_tensors import dequantize, dequantize_packed, dequantize_scaled
from parquant.quant.fp8_block import quantize_fp8_blocks
from parquant.quant.methods import get_method
from parquant.quant.ptq import NonFiniteWeightError
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.inspect import inspect_model
from parquant.stages.quantize import quantize
from parquant.weights import WeightLoader

from ..conftest import EXAMPLE_MODEL, embedded_model_in

# E4M3 keeps 3 mantissa bits: rounding to nearest is off by at most 2^-4 of the value, and by half
# of the smallest subnormal step (2^-9 x scale) near zero
E4M3_RELATIVE, E4M3_SUBNORMAL = 2.0**-4, 2.0**-10


@pytest.fixture
def blocky() -> torch.Tensor:
    """200 x 300: edge blocks on both axes; blocks of very different ranges; a zero block."""
    torch.manual_seed(1)
    w = torch.randn(200, 300)
    w[:128, :128] *= 1e3
    w[128:, 128:256] *= 1e-3
    w[:128, 256:] = 0.0
    return w


def test_fp8_block_scales_each_block_alone(blocky: torch.Tensor) -> None:
    values, scales = quantize_fp8_blocks(blocky)
    assert values.dtype == torch.float8_e4m3fn and values.shape == (200, 300) and scales.shape == (2, 3)
    for i, rows in enumerate((slice(0, 128), slice(128, 200))):
        for j, columns in enumerate((slice(0, 128), slice(128, 256), slice(256, 300))):
            assert float(scales[i, j]) == float(blocky[rows, columns].abs().max() / 448)
    restored = dequantize_scaled(values, scales, (128, 128))
    bound = (
        E4M3_RELATIVE * blocky.abs()
        + E4M3_SUBNORMAL * scales.repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)[:, :300]
    )
    assert bool(((restored - blocky).abs() <= bound + 1e-12).all())
    assert bool((restored[:128, 256:] == 0).all())  # the zero block stays zero, its scale is 0 (no NaN)
    # the small block is not crushed by the big one beside it
    small = blocky[128:, 128:256]
    assert float((restored[128:, 128:256] - small).abs().max()) <= E4M3_RELATIVE * float(small.abs().max())


def test_fp8_block_refuses_nan() -> None:
    w = torch.randn(130, 130)
    w[129, 129] = float("nan")
    with pytest.raises(NonFiniteWeightError):
        quantize_fp8_blocks(w)


def test_fp8_block_dequantizes_through_the_config(blocky: torch.Tensor) -> None:
    recipe = get_method("fp8-block").recipe("ptq")
    method = build(recipe.single, recipe)
    tensors = {f"l.{k}": v for k, v in method.quantize_tensors(blocky.to(torch.bfloat16)).items()}
    config = config_block(recipe, [])
    assert config["config_groups"]["group_0"]["weights"]["block_structure"] == [128, 128]
    restored = dequantize("l", tensors, config)
    assert restored is not None and restored.shape == (200, 300)
    assert torch.equal(restored, dequantize_scaled(tensors["l.weight"], tensors["l.weight_scale"], (128, 128)))


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_packed_matches_the_library_packing_and_error_bound(group_size: int) -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    torch.manual_seed(2)
    w = (torch.randn(64, 256) * torch.linspace(0.01, 2, 64).unsqueeze(1)).to(torch.bfloat16)
    w[3] = 0.0
    recipe = get_method("int4-packed").recipe("ptq", group_size)
    out = build(recipe.single, recipe).quantize_tensors(w)
    assert out["weight_packed"].shape == (64, 32) and out["weight_scale"].shape == (64, 256 // group_size)
    assert out["weight_shape"].tolist() == [64, 256]
    signed = unpack_from_int32(out["weight_packed"], 4, torch.Size([64, 256]))
    assert int(signed.min()) >= -8 and int(signed.max()) <= 7
    assert torch.equal(pack_to_int32(signed, 4), out["weight_packed"])  # the library's own layout, bit for bit
    restored = dequantize_packed(out["weight_packed"], out["weight_scale"], out["weight_shape"])
    step = out["weight_scale"].float().repeat_interleave(group_size, dim=1)
    assert bool(((restored - w.float()).abs() <= step / 2 + 1e-6).all())
    assert bool((restored[3] == 0).all())


@pytest.mark.parametrize(("method", "floor"), [("fp8-block", 0.999), ("int4-packed", 0.995)])
def test_block_and_packed_outputs_load_in_transformers(tmp_path: Path, method: str, floor: float) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with embedded_model_in(tmp_path, "tiny") as model:
        config = load_config(flags={"method": method, "backend": "ptq"}, environ={})
        result = quantize(str(model), str(tmp_path / method), config)
    assert result.details["quantized_layers"] == 28
    assert inspect_model(str(tmp_path / method)).parameters == 3_410_176  # packed words count as their weights
    export_checkpoint(str(tmp_path / method), str(tmp_path / "hf"))
    tokenizer = AutoTokenizer.from_pretrained(EXAMPLE_MODEL)
    ids = tokenizer((EXAMPLE_MODEL.parent / "data" / "eval.txt").read_text()[:3000], return_tensors="pt").input_ids
    ids = ids[:, :128]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()  # compressed-tensors decompresses it
    reference = AutoModelForCausalLM.from_pretrained(EXAMPLE_MODEL).eval()
    with torch.no_grad():
        got, want = loaded(ids).logits.float(), reference(ids).logits.float()
        generated = loaded.generate(ids[:, :16], max_new_tokens=4, do_sample=False)
    assert bool(torch.isfinite(got).all()) and generated.shape[1] == 20
    assert float(torch.nn.functional.cosine_similarity(got, want, dim=-1).mean()) >= floor
    with WeightLoader(str(tmp_path / method)) as loader:  # parquant's own dequantizer agrees with the library
        ours = loader.build_model()
    with torch.no_grad():
        assert float(torch.nn.functional.cosine_similarity(ours(ids).logits.float(), got, dim=-1).min()) > 0.9999
