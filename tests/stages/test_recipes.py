"""A per-layer mixed recipe end to end: quantize, export, load in transformers on CPU, validate, report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from parquant.quant.dequant import dequantize_module
from parquant.weights import WeightLoader

from ..conftest import REPO, CliResult, embedded_model_in

MIXED = REPO / "examples" / "recipes" / "attention-fp8-mlp-int4.yaml"
EVAL = REPO / "examples" / "data" / "eval.txt"
Cli = Callable[..., CliResult]
# INT8 weights per channel (compressed-tensors' own W8A16 preset is per group of 128)
INT8_CHANNEL = "{weights: {num_bits: 8, type: int, strategy: channel}}"


def test_a_mixed_recipe_runs_end_to_end_and_loads_in_transformers(tmp_path: Path, cli: Cli) -> None:
    from transformers import AutoModelForCausalLM

    with embedded_model_in(tmp_path, "model") as model:
        done = cli("quantize", model, "-o", tmp_path / "mixed", "--recipe", MIXED)
        assert done.code == 0, done.err
        result = json.loads(done.out.strip().splitlines()[-1])
        assert result["details"]["method"] == "attention-fp8-mlp-int4" and result["details"]["backend"] == "ptq"
        assert result["details"]["quantized_layers"] == 14  # layers 1 and 2: 4 attention + 3 MLP each
        assert result["details"]["quantized_share"]["fraction"] == 1.0  # layers 0 and 3 were ignored, not left
        again = cli("quantize", model, "-o", tmp_path / "mixed", "--recipe", MIXED)
        assert again.code == 0 and json.loads(again.out.strip().splitlines()[-1])["skipped"] is True
        exported = cli("export", tmp_path / "mixed", "-o", tmp_path / "hf")
        assert exported.code == 0, exported.err
        checked = cli("validate", model, tmp_path / "mixed", "--eval-text", EVAL, "-o", tmp_path / "v.json")
        assert checked.code == 0, checked.err
        reported = cli("report", tmp_path / "v.json", "-o", tmp_path / "report")
        assert reported.code == 0, reported.err
        inspected = cli("inspect", tmp_path / "mixed")
        assert "mixed-precision: float-quantized float 8-bit; pack-quantized int 4-bit group 64" in inspected.out
        with WeightLoader(str(tmp_path / "mixed")) as loader:
            block = loader.config()["quantization_config"]
            stored = {n: loader.load(n) for n in loader.names()}

    groups = block["config_groups"]
    assert block["format"] == "mixed-precision" and len(groups) == 2  # one group per scheme
    assert groups["group_0"]["format"] == "float-quantized" and groups["group_1"]["format"] == "pack-quantized"
    assert stored["model.layers.1.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert "model.layers.1.mlp.down_proj.weight_packed" in stored
    assert stored["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16  # first layer kept
    assert "model.layers.3.self_attn.q_proj.weight_scale" not in stored  # last layer kept

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    state = {name: tensor.detach() for name, tensor in loaded.state_dict().items()}
    modules = dict(loaded.named_modules())
    for layer in range(4):
        for module, bits in ((f"model.layers.{layer}.self_attn.q_proj", 8), (f"model.layers.{layer}.mlp.down_proj", 4)):
            scheme = getattr(modules[module], "quantization_scheme", None)
            if layer in (0, 3):
                assert scheme is None, module  # ignored: a plain layer in transformers too
                continue
            assert scheme is not None and scheme.weights.num_bits == bits, module  # each module got its group
            ours, theirs = dequantize_module(module, stored, block), dequantize_module(module, state, block)
            assert ours is not None and theirs is not None and torch.equal(ours, theirs), module

    validation = json.loads((tmp_path / "v.json").read_text())
    assert validation["passed"] and validation["logits_cosine_mean"] > 0.99
    assert "attention-fp8-mlp-int4" in (tmp_path / "report" / "report.md").read_text()


def test_a_recipe_that_does_not_fit_the_model_is_refused_before_anything_is_written(tmp_path: Path, cli: Cli) -> None:
    overlapping = tmp_path / "overlap.yaml"
    overlapping.write_text(
        f"groups:\n  - {{targets: [Linear], scheme: {INT8_CHANNEL}}}\n"
        "  - {targets: ['re:.*mlp'], scheme: FP8_DYNAMIC}\n"
    )
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text("groups:\n  - {targets: ['re:.*experts'], scheme: FP8_DYNAMIC}\n")
    int3 = tmp_path / "int3.yaml"
    int3.write_text("groups:\n  - {targets: [Linear], scheme: {weights: {num_bits: 3}, format: pack-quantized}}\n")
    with embedded_model_in(tmp_path, "model") as model:
        clash = cli("quantize", model, "-o", tmp_path / "a", "--recipe", overlapping)
        missing = cli("quantize", model, "-o", tmp_path / "b", "--recipe", nothing, "--dry-run")
        unsupported = cli("quantize", model, "-o", tmp_path / "c", "--recipe", int3)
        both = cli("quantize", model, "-o", tmp_path / "d", "--recipe", nothing, "--method", "int8-weight")
    assert clash.code == 78 and "is matched by groups 0 and 1" in clash.err
    assert missing.code == 78 and "group 0 (targets re:.*experts) matches no linear layer" in missing.err
    assert unsupported.code == 69 and "no backend can run recipe file" in unsupported.err
    assert "no built-in quantizer for INT3" in unsupported.err
    assert both.code == 64 and "give one of them" in both.err
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_editing_the_recipe_is_other_work_not_a_skip(tmp_path: Path, cli: Cli) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"groups:\n  - {{targets: [Linear], scheme: {INT8_CHANNEL}}}\n")
    with embedded_model_in(tmp_path, "model") as model:
        assert cli("quantize", model, "-o", tmp_path / "q", "--recipe", recipe).code == 0
        recipe.write_text("groups:\n  - {targets: [Linear], scheme: FP8_DYNAMIC}\n")
        edited = cli("quantize", model, "-o", tmp_path / "q", "--recipe", recipe)
    assert edited.code == 73 and "--force" in edited.err  # the output holds the first recipe's model


def test_a_recipe_only_angelslim_can_run_goes_to_angelslim(tmp_path: Path, cli: Cli) -> None:
    """FP8 per tensor with calibrated static activation scales: the built-in PTQ has no calibration,
    so `auto` finds AngelSlim the one eligible backend, and the section it runs is derived from the
    recipe (its fp8_static)."""
    from ..helpers import SMALL_CALIBRATION

    recipe = tmp_path / "fp8-static.yaml"
    fp8 = "{num_bits: 8, type: float, strategy: tensor, dynamic: false}"
    recipe.write_text(
        f"algorithm: minmax\ngroups:\n  - targets: [Linear]\n    scheme: {{weights: {fp8}, input_activations: {fp8}}}\n"
    )
    calibration = ("--calibration-data", SMALL_CALIBRATION["calibration.data"], "--num-samples", "8", "--seq-len", "64")
    with embedded_model_in(tmp_path, "model") as model:
        planned = cli("quantize", model, "-o", tmp_path / "q", "--recipe", recipe, *calibration, "--dry-run")
        assert planned.code == 0, planned.err
        plan = json.loads(planned.out.strip().splitlines()[-1])["details"]["plan"]
        assert plan["backend"] == "angelslim" and any(
            "not ptq: the built-in PTQ rounds to nearest" in r for r in plan["reasons"]
        )
        done = cli("quantize", model, "-o", tmp_path / "q", "--recipe", recipe, *calibration)
        assert done.code == 0, done.err
        assert "running AngelSlim fp8_static" in done.err
        with WeightLoader(str(tmp_path / "q")) as loader:
            assert loader.load("model.layers.1.self_attn.q_proj.input_scale").numel() == 1
