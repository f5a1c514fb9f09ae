"""The method registry: one record makes a method work everywhere; an unknown name fails everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parquant.errors import ConfigError, UsageError
from parquant.pipeline import StageSpec
from parquant.quant import methods
from parquant.quant.checkpoint_config import config_block
from parquant.quant.config import load_config
from parquant.quant.recipe import Recipe, RecipeGroup, Scheme
from parquant.weights import WeightLoader

from ..conftest import REPO, embedded_model_in
from ..helpers import validate_and_report

# A method made of data alone: FP8 weights per channel with 16-bit activations (W8A16 in FP8), a
# scheme no shipped preset has. Registering it is the whole change: the built-in PTQ derives its
# quantizer and its config.json block from the recipe.
TOY = methods.QuantMethod(
    "toy-fp8-weight",
    "FP8 weights per channel, 16-bit activations (test only)",
    (
        methods.Implementation(
            methods.PTQ,
            lambda group_size: Recipe(
                "toy-fp8-weight",
                (RecipeGroup(("Linear",), Scheme(FP8_CHANNEL, None, "float-quantized")),),
            ),
            "compressed-tensors `float-quantized`",
        ),
    ),
)
FP8_CHANNEL = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": "channel"}


def test_a_method_registered_in_a_test_runs_through_quantize_validate_and_report(tmp_path: Path) -> None:
    from parquant.stages.quantize import quantize

    with embedded_model_in(tmp_path, "model") as model, methods.registered(TOY):
        flags = {"method": "toy-fp8-weight"}
        result = quantize(str(model), str(tmp_path / "toy"), load_config(flags=flags, environ={}))
        assert result.details["backend"] == "ptq" and result.details["method"] == "toy-fp8-weight"
        checked, written = validate_and_report(model, tmp_path / "toy", tmp_path)
        with WeightLoader(str(tmp_path / "toy")) as loader:
            stored = loader.load("model.layers.0.mlp.down_proj.weight")
            config = loader.config()
    assert stored.dtype == torch.float8_e4m3fn  # the scheme's math ran
    block = config["quantization_config"]
    assert block["format"] == "float-quantized" and block["config_groups"]["group_0"]["input_activations"] is None
    assert 0.99 < min(t.cosine for t in checked.tensors) < 1.0
    assert checked.logits_cosine_mean > 0.99 and checked.passed
    assert written and "toy-fp8-weight" in (tmp_path / "report" / "report.md").read_text()


def test_an_unknown_method_is_an_error_everywhere() -> None:
    with pytest.raises(UsageError, match=r"unknown: (did you mean \S+ )?choose one of .*int8-weight"):
        load_config(flags={"method": "int3-magic"}, environ={})
    with pytest.raises(ConfigError, match="int3-magic"):
        from parquant.k8s.jobs import cpu_replacement

        cpu_replacement(StageSpec("q", "quantize", {"method": "int3-magic"}, gpu=True), "ptq", "no GPU")
    with pytest.raises(KeyError, match="int3-magic"):
        methods.get_method("int3-magic")


def test_registration_refuses_duplicates_and_half_described_methods() -> None:
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.get_method("int8-weight"))
    with pytest.raises(ValueError, match="one implementation per backend"):
        twice = methods.Implementation(methods.PTQ, TOY.implementations[0].recipe, "")
        methods.register(methods.QuantMethod("half", "two of one backend", (twice, twice)))
    assert "half" not in methods.method_names()


def test_the_docs_table_is_the_registry() -> None:
    text = (REPO / "docs" / "quantize.md").read_text()
    assert methods.docs_table() in text, (
        "docs/quantize.md's method table differs from quant/methods.py: paste docs_table()"
    )


def test_cli_help_and_readme_name_every_method() -> None:
    from parquant.stages.options import QuantizeOptions

    help_text = QuantizeOptions.__dataclass_fields__["method"].metadata["help"]
    readme = (REPO / "README.md").read_text()
    for name in methods.method_names():
        assert name in help_text
        assert f"`{name}`" in readme, f"README.md does not mention {name}"


def test_fallbacks_are_built_in_methods() -> None:
    for method in methods.all_methods():
        assert methods.get_method(method.fallback).offered_by(methods.PTQ), method.name
        assert method.backends, method.name


# The weight bit width of each method that can fall back, from the methods' definitions (not the code).
_WEIGHT_BITS = {
    "fp8-static": 8,
    "int8-dynamic": 8,
    "fp8-dynamic": 8,
    "int4-gptq": 4,
    "int4-awq": 4,
    "int4-gptaq": 4,
    "w4a8-fp8": 4,
    "int8-smooth": 8,
    "nvfp4": 4,
}


@pytest.mark.parametrize("name", sorted(_WEIGHT_BITS))
def test_a_fallback_keeps_the_weight_bit_width(name: str) -> None:
    """`--backend auto` never turns a 4-bit request into an 8-bit model (int4-gptq used to become int8-weight)."""
    fallback = methods.get_method(methods.get_method(name).fallback)
    assert fallback.offered_by(methods.PTQ)
    config = config_block(fallback.recipe(methods.PTQ), [])
    groups = config.get("config_groups", {}).values()
    bits = {group["weights"]["num_bits"] for group in groups} or {config["bits"]}  # compressed-tensors or GPTQ
    assert bits == {_WEIGHT_BITS[name]}, (name, fallback.name, bits)
