"""Recipes: presets are data, everything else is derived from them; a user's file is checked before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parquant.errors import ConfigError, InputNotFoundError, UsageError
from parquant.quant import methods
from parquant.quant.angelslim import recipe_section
from parquant.quant.checkpoint_config import config_block
from parquant.quant.config import load_config
from parquant.quant.formats.compressed_tensors import block_structure
from parquant.quant.recipe import Recipe, RecipeError, RecipeGroup, Scheme
from parquant.quant.recipe_file import read_recipe, recipe_digest
from parquant.quant.targets import targeted

from ..conftest import REPO

MIXED = REPO / "examples" / "recipes" / "attention-fp8-mlp-int4.yaml"

# AngelSlim 0.5.0's sections as parquant wrote them by hand before recipes (group size 64): the
# derivation from the recipe must give these exactly, or AngelSlim would run something else.
ANGELSLIM_SECTIONS = {
    "fp8-static": {
        "bits": 8,
        "quant_method": {"weight": "per-tensor", "activation": "per-tensor"},
        "name": "fp8_static",
    },
    "fp8-dynamic": {
        "bits": 8,
        "quant_method": {"weight": "per-tensor", "activation": "per-tensor"},
        "name": "fp8_dynamic",
    },
    "int8-dynamic": {
        "bits": 8,
        "quant_method": {"weight": "per-channel", "activation": "per-token"},
        "name": "int8_dynamic",
    },
    "int4-gptq": {"bits": 4, "quant_method": {"weight": "per-group", "group_size": 64}, "name": "int4_gptq"},
    "int4-awq": {
        "bits": 4,
        "quant_method": {"weight": "per-group", "group_size": 64, "zero_point": True, "mse_range": False},
        "name": "int4_awq",
    },
    "int4-gptaq": {"bits": 4, "quant_method": {"weight": "per-group", "group_size": 64}, "name": "int4_gptaq"},
    "w4a8-fp8": {
        "bits": 8,
        "quant_method": {"weight": "per-group", "group_size": 64, "activation": "per-tensor"},
        "name": "w4a8_fp8",
    },
    "int8-smooth": {
        "bits": 8,
        "quant_method": {"weight": "per-channel", "activation": "per-token"},
        "name": "int8_dynamic",
        "quant_helpers": ["smooth"],
    },
    "nvfp4": {
        "bits": 4,
        "quant_method": {"weight": "per-block", "activation": "per-block", "group_size": 16},
        "name": "nvfp4",
    },
}


@pytest.mark.parametrize("name", sorted(ANGELSLIM_SECTIONS))
def test_angelslim_sections_are_derived_from_the_presets(name: str) -> None:
    recipe = methods.get_method(name).recipe(methods.ANGELSLIM, 64)
    assert json.dumps(recipe_section(recipe)) == json.dumps(ANGELSLIM_SECTIONS[name])  # key order too


def test_every_built_in_preset_is_a_valid_compressed_tensors_scheme() -> None:
    """The library itself accepts each preset's scheme (it builds the config block from them)."""
    for method in methods.all_methods():
        recipe = method.recipe(method.backends[0])
        if recipe.checkpoint_format == "compressed-tensors" and methods.PTQ in method.backends:
            block = config_block(method.recipe(methods.PTQ), ["lm_head"])
            assert list(block["config_groups"]) == ["group_0"], method.name
            assert block["ignore"] == ["lm_head"]


def _fp8(targets: tuple[str, ...]) -> RecipeGroup:
    channel = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": "channel"}
    token = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}
    return RecipeGroup(targets, Scheme(channel, token, "float-quantized"))


def _int4(targets: tuple[str, ...], group: int = 64) -> RecipeGroup:
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "group_size": group, "strategy": "group"}
    return RecipeGroup(targets, Scheme(weights, None, "pack-quantized"))


MODULES = [f"model.layers.{i}.{part}" for i in range(3) for part in ("self_attn.q_proj", "mlp.down_proj")]


def test_assign_follows_compressed_tensors_targets_and_the_ignore_patterns() -> None:
    recipe = Recipe("mix", (_fp8(("re:.*self_attn",)), _int4(("re:.*mlp",))), ("model.layers.0.*",))
    assigned = recipe.assign(MODULES)
    assert assigned == {
        "model.layers.1.self_attn.q_proj": 0,
        "model.layers.1.mlp.down_proj": 1,
        "model.layers.2.self_attn.q_proj": 0,
        "model.layers.2.mlp.down_proj": 1,
    }
    exact = Recipe("one", (_int4(("model.layers.2.mlp.down_proj",)),))
    assert exact.assign(MODULES) == {"model.layers.2.mlp.down_proj": 0}


def test_overlapping_groups_and_groups_matching_nothing_are_refused() -> None:
    overlap = Recipe("o", (_fp8(("Linear",)), _int4(("re:.*mlp",))), source="recipe file r.yaml")
    with pytest.raises(RecipeError, match=r"r.yaml: module model.layers.0.mlp.down_proj is matched by groups 0 and 1"):
        overlap.assign(MODULES)
    nothing = Recipe("n", (_fp8(("re:.*self_attn",)), _int4(("re:.*experts",))), source="recipe file r.yaml")
    with pytest.raises(RecipeError, match=r"group 1 \(targets re:\.\*experts\) matches no linear layer"):
        nothing.assign(MODULES)
    # a group whose every module is ignored matches nothing either
    ignored = Recipe("i", (_fp8(("re:.*self_attn",)),), ("*.self_attn.*",))
    with pytest.raises(RecipeError, match="outside the ignore list"):
        ignored.assign(MODULES)


def test_the_config_block_has_one_group_per_distinct_scheme() -> None:
    recipe = Recipe("mix", (_fp8(("re:.*q_proj",)), _int4(("re:.*mlp",)), _fp8(("re:.*o_proj",))))
    block = config_block(recipe, ["lm_head"])
    assert block["format"] == "mixed-precision"
    groups = block["config_groups"]
    assert list(groups) == ["group_0", "group_1"]
    assert groups["group_0"]["targets"] == ["re:.*q_proj", "re:.*o_proj"]  # the two FP8 groups share one entry
    assert groups["group_0"]["format"] == "float-quantized" and groups["group_1"]["format"] == "pack-quantized"
    assert groups["group_1"]["weights"]["group_size"] == 64
    # read back: each module finds its own scheme, by the targets rule the dequantizer and the loaders use
    found = [g for g in groups.values() if targeted("model.layers.1.mlp.down_proj", g["targets"])]
    assert len(found) == 1 and found[0]["weights"]["num_bits"] == 4


def test_the_dequantizer_reads_the_block_structure_of_the_module_s_own_group() -> None:
    block_scheme = {
        "weights": {"strategy": "block", "block_structure": [128, 128], "num_bits": 8, "type": "float"},
    }
    config = {
        "config_groups": {
            "group_0": {"targets": ["re:.*mlp"], "weights": {"strategy": "channel", "num_bits": 8}},
            "group_1": {"targets": ["re:.*self_attn"], **block_scheme},
        }
    }
    assert block_structure(config, "model.layers.0.self_attn.q_proj") == (128, 128)
    assert block_structure(config, "model.layers.0.mlp.up_proj") is None


def test_the_shipped_example_recipe_reads() -> None:
    recipe = read_recipe(str(MIXED))
    assert recipe.name == "attention-fp8-mlp-int4" and recipe.algorithm == "rtn"
    assert [g.scheme.format for g in recipe.groups] == ["float-quantized", "pack-quantized"]
    assert recipe.groups[0].scheme.input_activations is not None  # FP8_DYNAMIC: the library's preset
    assert recipe.groups[1].scheme.group_size == 64 and recipe.ignore == ("model.layers.0.*", "model.layers.3.*")


def _write(tmp_path: Path, text: str, name: str = "recipe") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


GOOD_GROUP = "groups:\n  - targets: [Linear]\n    scheme: W8A16\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nmae: x\n" + GOOD_GROUP, r"unknown key\(s\) nmae: known keys are name, algorithm"),
        ("algorithm: gptqq\n" + GOOD_GROUP, "algorithm 'gptqq' is unknown"),
        ("format: marlin\n" + GOOD_GROUP, "format 'marlin' is unknown"),
        ("groups: []\n", "needs `groups:`"),
        ("groups:\n  - targets: [Linear]\n    schema: W8A16\n", r"group 0: unknown key\(s\) schema"),
        ("groups:\n  - targets: [Linear]\n    scheme: W5A9\n", "group 0: compressed-tensors refuses the scheme"),
        (
            "groups:\n  - targets: [Linear]\n    scheme: {weights: {num_bits: 4, strategy: diagonal}}\n",
            "group 0: compressed-tensors refuses the scheme",
        ),
        ("groups:\n  - targets: ['re:(unclosed']\n    scheme: W8A16\n", "not a valid regular expression"),
        ("groups:\n  - targets: []\n    scheme: W8A16\n", "targets must be a list"),
        (
            "format: gptq\ngroups:\n  - {targets: [a], scheme: W4A16}\n  - {targets: [b], scheme: W4A16}\n",
            "the gptq format has one scheme per model",
        ),
        ("- just a list\n", "must hold a mapping"),
    ],
)
def test_a_bad_recipe_file_is_refused_with_78_naming_the_fault(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_recipe(_write(tmp_path, text))


def test_recipe_flags_conflicts_and_missing_files(tmp_path: Path) -> None:
    good = _write(tmp_path, GOOD_GROUP)
    with pytest.raises(UsageError, match=r"both a method .* and a recipe file"):
        load_config(flags={"method": "int8-weight", "recipe": good}, environ={})
    with pytest.raises(InputNotFoundError, match=r"recipe file .*missing.yaml not found"):
        load_config(flags={"recipe": str(tmp_path / "missing.yaml")}, environ={})
    calibrated = _write(tmp_path, "algorithm: gptq\n" + GOOD_GROUP, "gptq")
    with pytest.raises(UsageError, match="recipe gptq needs calibration data"):
        load_config(flags={"recipe": calibrated}, environ={})
    config = load_config(flags={"recipe": good}, environ={"PARQUANT_IGNORE": "lm_head"})
    assert config.method_name == "recipe" and config.custom_recipe is not None


def test_the_recorded_settings_carry_what_the_recipe_says_and_nothing_without_one(tmp_path: Path) -> None:
    plain = load_config(flags={"method": "int8-weight"}, environ={}).to_dict()
    assert "recipe" not in plain and "custom_recipe" not in plain  # fingerprints of method runs unchanged
    first = load_config(flags={"recipe": _write(tmp_path, GOOD_GROUP)}, environ={}).to_dict()
    edited = load_config(flags={"recipe": _write(tmp_path, GOOD_GROUP.replace("W8A16", "W4A16"))}, environ={})
    assert first["recipe"]["file"] == edited.recipe and first["recipe"]["name"] == "recipe"
    assert first["recipe_digest"] != edited.to_dict()["recipe_digest"]
    assert edited.custom_recipe is not None and recipe_digest(edited.custom_recipe) == edited.to_dict()["recipe_digest"]
