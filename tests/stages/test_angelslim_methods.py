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
    assert made.backend == "ptq" and made.config["effective_method"] == "fp8-dynamic"
    assert any("runs nvfp4 only on" in note for note in made.fallbacks)
