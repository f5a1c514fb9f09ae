"""The AngelSlim methods added for the second wave (GPTAQ, W4A8-FP8, SmoothQuant INT8, NVFP4) and
AngelSlim on a mixture-of-experts model: each is bit-identical to AngelSlim's Engine run directly,
dequantized by parquant into a model that keeps the original's logits, and refused with a clear
message where AngelSlim 0.5.0 cannot run it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parquant.fs import resolve
from parquant.hf_folders import cached_hf_folder
from parquant.quant.config import load_config
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.hf_import import import_checkpoint
from parquant.stages.inspect import inspect_model
from parquant.stages.quantize import quantize
from parquant.store.reader import ModelReader
from parquant.weights import WeightLoader

from ..conftest import CliResult, embedded_model_in, make_checkpoint
from ..helpers import SMALL_CALIBRATION
from .test_quantize import direct_angelslim_run

# method, architecture, the tensors one quantized layer stores, and the logits cosine it keeps
CASES = [
    ("int4-gptaq", "llama", {"qweight", "qzeros", "scales", "g_idx"}, 0.99),
    ("w4a8-fp8", "llama", {"qweight", "weight_scale", "weight_scale_int4", "input_scale"}, 0.98),
    ("int8-smooth", "qwen3", {"weight", "weight_scale"}, 0.999),
    ("nvfp4", "qwen3", {"weight", "weight_scale", "weight_scale_2", "input_scale"}, 0.99),
    ("fp8-static", "qwen3_moe", {"weight", "weight_scale", "input_scale"}, 0.999),
    ("int4-gptq", "qwen3_moe", {"qweight", "qzeros", "scales", "g_idx"}, 0.99),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("angelslim-models")
    made = {}
    with embedded_model_in(root, "llama") as embedded:  # 256 wide: AngelSlim's W4A8 needs groups of 128
        made["llama"] = str(embedded)
    for arch in ("qwen3", "qwen3_moe"):
        source = make_checkpoint(root / f"{arch}-hf", arch, vocab_size=4096, dtype="bfloat16")
        import_checkpoint(str(source), str(root / arch))
        made[arch] = str(root / arch)
    return made


def layer_tensors(url: str, prefix: str) -> set[str]:
    with WeightLoader(url) as loader:
        return {n.removeprefix(prefix + ".") for n in loader.names() if n.startswith(prefix + ".")}


@pytest.mark.parametrize(("method", "arch", "stored", "floor"), CASES, ids=[f"{m}-{a}" for m, a, _, _ in CASES])
def test_method_matches_angelslim_run_directly_and_validates(
    models: dict[str, str], tmp_path: Path, method: str, arch: str, stored: set[str], floor: float
) -> None:
    flags = {"method": method, "backend": "angelslim", **SMALL_CALIBRATION}
    config = load_config(flags=flags, environ={})
    torch.manual_seed(0)
    result = quantize(models[arch], str(tmp_path / "pq"), config)
    assert result.details["backend"] == "angelslim" and result.details["fallbacks"] == []
    layer = "model.layers.1.mlp.experts.2.down_proj" if arch == "qwen3_moe" else "model.layers.1.mlp.down_proj"
    assert layer_tensors(str(tmp_path / "pq"), layer) == stored
    # packed INT4 / FP4 count as the weights they stand for
    assert inspect_model(str(tmp_path / "pq")).parameters == inspect_model(models[arch]).parameters
    export_checkpoint(str(tmp_path / "pq"), str(tmp_path / "ours"))
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    with ModelReader(resolve(models[arch])) as reader:
        model_dir = cached_hf_folder(reader)
    torch.manual_seed(0)
    theirs_dir = direct_angelslim_run(config, model_dir, tmp_path / "direct", arch)
    theirs: dict[str, torch.Tensor] = {}
    for path in theirs_dir.glob("*.safetensors"):
        theirs.update(load_file(str(path)))
    assert ours.keys() == theirs.keys()
    if method == "w4a8-fp8":  # AngelSlim 0.5.0 stores absmax/8 for codes made with absmax/7: corrected exactly
        for name in [n for n in theirs if n.endswith(".weight_scale_int4")]:
            assert torch.equal(ours[name], (theirs[name] * 8) / 7), name
            theirs[name] = ours[name]
        with WeightLoader(models[arch]) as loader:  # the step is the group's absmax / 7 (INT4's largest code)
            weight = loader.load(f"{layer}.weight").float()
        absmax = weight.reshape(weight.shape[0], ours[f"{layer}.weight_scale_int4"].shape[1], -1).abs().amax(-1)
        assert torch.allclose(ours[f"{layer}.weight_scale_int4"].float(), absmax / 7, rtol=1e-2)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    ids = torch.arange(7, 135).unsqueeze(0)
    with WeightLoader(str(tmp_path / "pq")) as loader:
        candidate = loader.build_model()  # transformers where it can, parquant's dequantizer elsewhere
    with WeightLoader(models[arch]) as loader:
        reference = loader.build_model()
    with torch.no_grad():
        got, want = candidate(ids).logits.float(), reference(ids).logits.float()
    assert bool(torch.isfinite(got).all())
    similarity = float(torch.nn.functional.cosine_similarity(got, want, dim=-1).mean())
    print(f"{method} on {arch}: logits cosine {similarity:.5f}")
    assert similarity >= floor


def test_methods_angelslim_runs_on_qwen_only_are_refused_or_fall_back(
    models: dict[str, str], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    calibration = ("--calibration-data", str(SMALL_CALIBRATION["calibration.data"]), "--num-samples", "8")
    refused = cli(
        "quantize",
        models["llama"],
        "-o",
        tmp_path / "a",
        "--method",
        "int8-smooth",
        "--backend",
        "angelslim",
        *calibration,
    )
    assert refused.code == 69
    assert "AngelSlim 0.5.0 runs int8-smooth only on qwen2, qwen3, qwen3_moe models, not 'llama'" in refused.err
    fell = cli("quantize", models["llama"], "-o", tmp_path / "b", "--method", "nvfp4", *calibration)
    assert fell.code == 0, fell.err
    with WeightLoader(str(tmp_path / "b")) as loader:
        made = loader.reader.manifest.created_by
    assert made.backend == "ptq" and made.config["effective_method"] == "int4-packed"  # still 4-bit weights
    assert any("runs nvfp4 only on" in note for note in made.fallbacks)


def skipping_moe(folder: Path) -> Path:
    """A Qwen3-MoE whose layer-1 router can never pick expert 4 of 5: the layer's input is cut to
    one dimension x (its norm passes only dimension 0), and the router's logits are
    [10x, 9x, -10x, -9x, 0], so the top two are experts 0, 1 (x > 0) or 2, 3 (x < 0)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    from ..conftest import EXAMPLE_MODEL, TOKENIZER_FILES

    config = Qwen3MoeConfig(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, head_dim=16, moe_intermediate_size=32,
        num_experts=5, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (EXAMPLE_MODEL / name).exists():
            (folder / name).write_bytes((EXAMPLE_MODEL / name).read_bytes())
    tensors = load_file(str(folder / "model.safetensors"))
    norm = torch.zeros(64, dtype=torch.bfloat16)
    norm[0] = 1.0
    tensors["model.layers.1.post_attention_layernorm.weight"] = norm
    router = torch.zeros(5, 64, dtype=torch.bfloat16)
    router[:, 0] = torch.tensor([10.0, 9.0, -10.0, -9.0, 0.0])
    tensors["model.layers.1.mlp.gate.weight"] = router
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_an_expert_calibration_never_reaches_is_reported_and_gets_usable_scales(tmp_path: Path) -> None:
    import_checkpoint(str(skipping_moe(tmp_path / "hf")), str(tmp_path / "pq"))
    config = load_config(flags={"method": "fp8-static", "backend": "angelslim", **SMALL_CALIBRATION}, environ={})
    result = quantize(str(tmp_path / "pq"), str(tmp_path / "q"), config)
    coverage = result.details["expert_coverage"]
    assert coverage["uncovered"] == ["model.layers.1.mlp.experts.4"]
    assert coverage["tokens"]["model.layers.1.mlp"][4] == 0 and min(coverage["tokens"]["model.layers.0.mlp"]) > 0
    # every token picks two experts: the counts add up to twice the real calibration tokens
    assert sum(coverage["tokens"]["model.layers.1.mlp"]) == sum(coverage["tokens"]["model.layers.0.mlp"])
    assert any("model.layers.1.mlp.experts.4 received no calibration token" in w for w in result.warnings)
    expert = "model.layers.1.mlp.experts.4"
    assert f"{expert}.down_proj.input_scale" in coverage["repaired"]
    with WeightLoader(str(tmp_path / "q")) as loader:
        assert loader.reader.manifest.created_by.config["expert_coverage"]["uncovered"] == [expert]
        for name in loader.names():
            if name.endswith("scale") and ".experts." in name:
                value = loader.load(name).float()
                assert bool(torch.isfinite(value).all()) and bool((value > 0).all()), name
        siblings = [loader.load(f"model.layers.1.mlp.experts.{e}.down_proj.input_scale").float() for e in range(4)]
        assert float(loader.load(f"{expert}.down_proj.input_scale").float()) == float(torch.stack(siblings).max())
    note = loader.reader.manifest.created_by.note
    assert "calibration reached 9 of 10 experts; no token for model.layers.1.mlp.experts.4" in note


def test_auto_picks_angelslim_for_qwen3_moe_and_explains_what_it_cannot_run() -> None:
    from parquant.backends import ModelFacts
    from parquant.stages.quantize import choose

    def plan(method: str, model_type: str) -> tuple[str, str]:
        config = load_config(flags={"method": method, **SMALL_CALIBRATION}, environ={})
        chosen = choose(config, ModelFacts(model_type, 0, 0, {}), cuda=False)
        return chosen.backend.name, chosen.method

    assert plan("fp8-dynamic", "qwen3_moe") == ("angelslim", "fp8-dynamic")  # was: unsupported architecture
    assert plan("int8-smooth", "qwen3_moe") == ("angelslim", "int8-smooth")
    assert plan("fp8-dynamic", "mixtral") == ("ptq", "fp8-dynamic")  # no AngelSlim class for Mixtral
    assert plan("nvfp4", "mistral") == ("ptq", "int4-packed")  # the same 4-bit weights
