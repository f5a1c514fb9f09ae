"""Mixture-of-experts models (Qwen3-MoE, Mixtral, DeepSeek-V3, tiny and random, made here):
conversion is exact in every expert layout, the built-in PTQ quantizes the experts and keeps the
routers, inspect shows the experts, and the quantized model validates."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from parquant.quant.config import load_config
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.hf_import import import_checkpoint
from parquant.stages.inspect import format_summary, inspect_model
from parquant.stages.quantize import quantize
from parquant.store.writer import WriteOptions
from parquant.weights import WeightLoader

from ..conftest import CliResult, make_checkpoint
from ..helpers import assert_same_checkpoint, logits

MOE = ["qwen3_moe", "mixtral", "deepseek_v3"]
# per architecture: MoE layers, experts in each, the checkpoint name of layer 1's router and of an expert weight
LAYOUT = {
    "qwen3_moe": (2, "model.layers.1.mlp.gate", "model.layers.1.mlp.experts.3.down_proj"),
    "mixtral": (2, "model.layers.1.block_sparse_moe.gate", "model.layers.1.block_sparse_moe.experts.3.w2"),
    "deepseek_v3": (1, "model.layers.1.mlp.gate", "model.layers.1.mlp.experts.3.down_proj"),
}


@pytest.mark.parametrize("layout", ["per-expert", "sharded", "fused"])
@pytest.mark.parametrize("arch", MOE)
def test_moe_round_trip_is_exact_in_every_expert_layout(tmp_path: Path, arch: str, layout: str) -> None:
    source = make_checkpoint(
        tmp_path / "hf", arch, shard_size="400KB" if layout == "sharded" else None, fused=layout == "fused"
    )
    assert (len(list(source.glob("*.safetensors"))) > 1) == (layout == "sharded")
    write = WriteOptions(chunk_bytes=16 * 1024, shard_bytes=300 * 1024)
    import_checkpoint(str(source), str(tmp_path / "pq"), write=write)
    export_checkpoint(str(tmp_path / "pq"), str(tmp_path / "back"))
    assert_same_checkpoint(source, tmp_path / "back")
    assert torch.equal(logits(source), logits(tmp_path / "back"))


@pytest.fixture(scope="module", params=MOE)
def moe_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp(request.param)
    import_checkpoint(str(make_checkpoint(root / "hf", request.param)), str(root / "pq"))
    return request.param, root


def test_inspect_shows_experts_and_active_parameters(moe_model: tuple[str, Path]) -> None:
    arch, root = moe_model
    layers, _, _ = LAYOUT[arch]
    summary = inspect_model(str(root / "pq"))
    assert summary.experts is not None
    assert (
        set(summary.experts["experts_per_layer"].values()) == {4}
        and len(summary.experts["experts_per_layer"]) == layers
    )
    # 2 of 4 experts per token: half of the experts' parameters are inactive
    with WeightLoader(str(root / "pq")) as loader:
        expert_parameters = sum(loader.spec(n).numel for n in loader.names() if ".experts." in n)
    assert summary.experts["total_parameters"] - summary.experts["active_parameters"] == expert_parameters // 2
    text = format_summary(summary)
    assert f"4 per layer in {layers} MoE layer(s), 2 per token" in text and "active" in text


def test_ptq_quantizes_experts_and_keeps_routers(moe_model: tuple[str, Path]) -> None:
    arch, root = moe_model
    layers, router, expert = LAYOUT[arch]
    out = root / "int8"
    result = quantize(
        str(root / "pq"), str(out), load_config(flags={"method": "int8-weight", "backend": "ptq"}, environ={})
    )
    assert result.details["quantized_experts"] == layers * 4 * 3  # gate, up and down of every expert
    with WeightLoader(str(out)) as loader:
        assert loader.spec(f"{expert}.weight").dtype == "I8" and f"{expert}.weight_scale" in loader.names()
        assert loader.spec(f"{router}.weight").dtype == "F32" and f"{router}.weight_scale" not in loader.names()
        ignore = loader.config()["quantization_config"]["ignore"]
        model = loader.build_model()  # quantized experts: dequantized by parquant (transformers holds them fused)
    assert router in ignore and "lm_head" in ignore
    with WeightLoader(str(root / "pq")) as loader:
        reference = loader.build_model()
    ids = torch.arange(1, 65).unsqueeze(0)
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert bool(torch.isfinite(got).all())
    assert float(torch.nn.functional.cosine_similarity(got, want, dim=-1).mean()) > 0.999


def test_routers_are_quantized_when_the_ignore_list_drops_them(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    import_checkpoint(str(make_checkpoint(tmp_path / "hf", "qwen3_moe")), str(tmp_path / "pq"))
    result = cli("quantize", tmp_path / "pq", "-o", tmp_path / "q", "--backend", "ptq", "--ignore", "lm_head")
    assert result.code == 0, result.err
    with WeightLoader(str(tmp_path / "q")) as loader:
        assert loader.spec("model.layers.1.mlp.gate.weight").dtype == "I8"
        assert loader.config()["quantization_config"]["ignore"] == ["lm_head"]


def test_fused_experts_are_named_when_kept_unquantized(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    import_checkpoint(str(make_checkpoint(tmp_path / "hf", "qwen3_moe", fused=True)), str(tmp_path / "pq"))
    result = cli("quantize", tmp_path / "pq", "-o", tmp_path / "q", "--backend", "ptq")
    assert result.code == 0, result.err
    assert "model.layers.1.mlp.experts.gate_up_proj holds fused experts (3-D) and is copied unquantized" in result.err
    details = json.loads(result.out.strip().splitlines()[-1])["details"]
    assert details["quantized_experts"] == 0 and details["quantized_layers"] == 8


def test_validate_benchmark_and_report_run_on_an_moe_candidate(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    from ..conftest import EXAMPLE_MODEL

    root = tmp_path
    import_checkpoint(str(make_checkpoint(root / "hf", "qwen3_moe")), str(root / "pq"))
    out = root / "eval"
    assert cli("quantize", root / "pq", "-o", out / "fp8-block", "--method", "fp8-block").code == 0
    eval_text = EXAMPLE_MODEL.parent / "data" / "eval.txt"
    validated = cli(
        "validate", root / "pq", out / "fp8-block", "--eval-text", eval_text, "--max-tokens", "512",
        "--seq-len", "128", "--min-cosine", "0.99", "-o", out / "validate.json",
    )  # fmt: skip
    assert validated.code == 0, validated.err
    result = json.loads((out / "validate.json").read_text())
    assert result["logits_cosine_mean"] > 0.999 and result["method"] == "fp8-block"
    benchmarked = cli(
        "benchmark", out / "fp8-block", "--batch-sizes", "1", "--seq-lens", "32", "--new-tokens", "4",
        "--repeats", "1", "-o", out / "benchmark.json",
    )  # fmt: skip
    assert benchmarked.code == 0, benchmarked.err
    assert cli("report", out / "validate.json", out / "benchmark.json", "-o", out / "report").code == 0
    assert "fp8-block" in (out / "report" / "report.md").read_text()


def test_experts_an_int4_method_cannot_take_are_named_counted_and_can_fail_the_run(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """Was: int4-packed left every expert down_proj (input width 32, groups of 64) in bf16 with exit 0
    and `warnings: []`."""
    import_checkpoint(str(make_checkpoint(tmp_path / "hf", "qwen3_moe")), str(tmp_path / "m"))
    flags = ("--method", "int4-packed", "--group-size", "64")
    result = cli("quantize", tmp_path / "m", "-o", tmp_path / "q", *flags)
    assert result.code == 0, result.err
    warnings = json.loads(result.out.strip().splitlines()[-1])["warnings"]
    assert len(warnings) == 1 and "left 8 module(s)" in warnings[0], warnings
    assert "model.layers.0.mlp.experts.0.down_proj [64, 32]" in warnings[0]
    share = json.loads((tmp_path / "q" / "parquant.json").read_text())["created_by"]["config"]["quantized_share"]
    experts = share["roles"]["experts"]
    assert experts["left"] == 8 * 64 * 32 and experts["quantized"] == 16 * 32 * 64 and experts["ignored"] == 0
    assert share["roles"]["routers"]["ignored"] == share["roles"]["routers"]["total"] > 0
    assert share["roles"]["attention"]["left"] == 0 and 0.5 < share["fraction"] < 1
    shown = cli("inspect", tmp_path / "q")
    assert "experts 67% (16.4K left in full precision)" in shown.out, shown.out
    refused = cli("quantize", tmp_path / "m", "-o", tmp_path / "refused", *flags, "--min-quantized-fraction", "0.99")
    assert refused.code == 69 and "--min-quantized-fraction 0.99" in refused.err
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_export_says_which_runtimes_load_it_and_a_real_load_agrees(
    tmp_path: Path, cli: Callable[..., CliResult], arch: str
) -> None:
    """Was: an int8-weight Qwen3-MoE export failed in from_pretrained with no word at export."""
    from transformers import AutoModelForCausalLM

    import_checkpoint(str(make_checkpoint(tmp_path / "hf", arch)), str(tmp_path / "m"))
    assert cli("quantize", tmp_path / "m", "-o", tmp_path / "q", "--method", "int8-weight").code == 0
    exported = cli("export", tmp_path / "q", "-o", tmp_path / "hf-out")
    assert exported.code == 0, exported.err
    said = json.loads(exported.out.strip().splitlines()[-1])
    loads = said["details"]["loads_in"]["transformers_cpu"]
    try:
        AutoModelForCausalLM.from_pretrained(tmp_path / "hf-out")
        loaded = True
    except Exception:  # whatever transformers raises: the point is that it does not load
        loaded = False
    assert loaded == (loads == "yes"), (arch, loads)
    if arch == "qwen3_moe":
        assert loads.startswith("no: its MoE experts are quantized")
        assert said["warnings"] and "transformers cannot load" in exported.err
        assert "loads in     transformers on CPU: no" in cli("inspect", tmp_path / "q").out
    else:
        assert said["warnings"] == []
