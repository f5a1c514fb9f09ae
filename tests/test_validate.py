"""PrecisionValidator on real runs of the embedded model, and its refusals."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from parquant.quant.config import load_config
from parquant.quant.dequant import dequantize_module
from parquant.results import Thresholds
from parquant.stages.hf_import import import_checkpoint
from parquant.stages.quantize import quantize
from parquant.validate import PrecisionValidator
from parquant.weights import WeightLoader

from .conftest import EXAMPLE_MODEL, CliResult, embedded_model_in, make_checkpoint
from .helpers import SMALL_CALIBRATION

Cli = Callable[..., CliResult]
EVAL = EXAMPLE_MODEL.parent / "data" / "eval.txt"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("validate")
    with embedded_model_in(root, "ref") as reference:
        paths = {"ref": str(reference)}
        for method, backend in (("int8-weight", "ptq"), ("fp8-static", "angelslim"), ("int4-gptq", "angelslim")):
            flags = {
                "method": method,
                "backend": backend,
                **SMALL_CALIBRATION,
            }
            quantize(paths["ref"], str(root / method), load_config(flags=flags, environ={}))
            paths[method] = str(root / method)
        yield paths


def test_int8_weight_only_is_nearly_lossless(models: dict[str, str]) -> None:
    result = PrecisionValidator(models["ref"], models["int8-weight"], str(EVAL), max_tokens=1024).run()
    assert result.passed and result.failures == []
    assert result.logits_cosine_mean > 0.9999 and result.perplexity_ratio <= 1.01
    assert result.tokens_evaluated == 1024 and len(result.worst_tokens) == 5
    assert len(result.tensors) == 29  # 28 linear layers and the (unquantized) embedding
    assert min(t.cosine for t in result.tensors) > 0.9999
    embedding = next(t for t in result.tensors if t.name == "model.embed_tokens.weight")
    assert embedding.cosine == 1.0 and embedding.max_abs_error == 0.0
    assert 50 < result.perplexity_reference < 200  # the embedded model's held-out perplexity (~115-135)


def test_gptq_through_our_dequantizer_and_gate(models: dict[str, str], cli: Cli, tmp_path: Path) -> None:
    result = PrecisionValidator(models["ref"], models["int4-gptq"], str(EVAL), max_tokens=1024).run()
    assert 0.95 < result.logits_cosine_mean < 0.99999 and result.perplexity_ratio > 1.0
    strict = cli(
        "validate",
        models["ref"],
        models["int4-gptq"],
        "--eval-text",
        EVAL,
        "--max-tokens",
        "512",
        "--min-cosine",
        "0.99999",
        "-o",
        tmp_path / "v.json",
    )
    assert strict.code == 79 and "precision gate failed" in strict.err and "--min-cosine" in strict.err
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["kind"] == "validation" and saved["passed"] is False


def test_dequantizer_agrees_with_transformers_on_fp8(models: dict[str, str]) -> None:
    """transformers (compressed-tensors) keeps FP8 weight + scale and applies them in its forward pass."""
    with WeightLoader(models["fp8-static"]) as loader:
        model = loader.build_model()
        layer = model.model.layers[1].mlp.down_proj
        assert layer.weight.dtype == torch.float8_e4m3fn
        decompressed = (layer.weight.float() * layer.weight_scale.float()).detach()
        tensors = {n: loader.load(n) for n in loader.names() if n.startswith("model.layers.1.mlp.down_proj.")}
    ours = dequantize_module("model.layers.1.mlp.down_proj", tensors, {"quant_method": "compressed-tensors"})
    assert ours is not None
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(), decompressed.flatten(), dim=0)
    assert float(cosine) > 1 - 1e-3
    assert float((ours - decompressed).abs().max()) <= float(decompressed.abs().max()) * 1e-2


def test_weight_only_logits_agree_with_transformers(models: dict[str, str]) -> None:
    """Int8 weight-only: transformers' forward and the validator's metrics see the same model."""
    result = PrecisionValidator(models["ref"], models["int8-weight"], str(EVAL), max_tokens=512).run()
    with WeightLoader(models["int8-weight"]) as loader:
        weights = {n: loader.load(n) for n in loader.names()}
    with WeightLoader(models["ref"]) as ref:
        original = ref.load("model.layers.0.self_attn.q_proj.weight").float()
    ours = dequantize_module("model.layers.0.self_attn.q_proj", weights, {"quant_method": "compressed-tensors"})
    assert ours is not None
    reported = next(t for t in result.tensors if t.name == "model.layers.0.self_attn.q_proj.weight")
    recomputed = torch.nn.functional.cosine_similarity(ours.flatten(), original.flatten(), dim=0)
    assert abs(float(recomputed) - reported.cosine) < 1e-3


def test_bad_inputs(models: dict[str, str], tmp_path: Path, cli: Cli) -> None:
    other = make_checkpoint(tmp_path / "hf", "qwen3")
    import_checkpoint(str(other), str(tmp_path / "other"))
    mismatch = cli("validate", models["ref"], tmp_path / "other", "--eval-text", EVAL)
    assert mismatch.code == 65 and "mismatched architectures" in mismatch.err
    (tmp_path / "empty.txt").write_text("  \n")
    empty = cli("validate", models["ref"], models["int8-weight"], "--eval-text", tmp_path / "empty.txt")
    assert empty.code == 65 and "is empty" in empty.err
    (tmp_path / "short.txt").write_text("A short text.")
    short = cli("validate", models["ref"], models["int8-weight"], "--eval-text", tmp_path / "short.txt")
    assert short.code == 65 and "fewer than one sequence" in short.err
    missing_eval = cli("validate", models["ref"], models["int8-weight"], "--eval-text", tmp_path / "none.txt")
    assert missing_eval.code == 66


def test_candidate_missing_a_tensor(models: dict[str, str], tmp_path: Path) -> None:
    from parquant.errors import InvalidInputError
    from parquant.fs import resolve
    from parquant.outputs import OutputFolder
    from parquant.store.items import ModelItem
    from parquant.store.manifest import Provenance
    from parquant.store.reader import ModelReader
    from parquant.store.writer import ModelDescription, WriteOptions, write_model

    with ModelReader(resolve(models["int8-weight"])) as reader:
        items = []
        for name in reader.tensor_names():
            if name.startswith("model.layers.2.mlp.up_proj."):
                continue
            data = reader.read_tensor(name)
            items.append(ModelItem("tensor", name, len(data), lambda n, d=data: iter([d]), reader.tensor_spec(name)))
        for name in reader.file_names():
            data = reader.read_file(name)
            items.append(ModelItem("file", name, len(data), lambda n, d=data: iter([d])))
    folder = OutputFolder(resolve(str(tmp_path / "broken")), force=False, marker="parquant.json")
    write_model(folder, items, WriteOptions(), ModelDescription({"fingerprint": "x"}, Provenance("t", "0")), "x")
    with pytest.raises(InvalidInputError, match=r"lacks tensor model\.layers\.2\.mlp\.up_proj\.weight"):
        PrecisionValidator(models["ref"], str(tmp_path / "broken"), str(EVAL)).run()


def test_non_finite_logits_are_refused(models: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from parquant.errors import InvalidInputError

    original = WeightLoader.build_model

    def broken(self: WeightLoader, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        model = original(self, *args, **kwargs)
        if self.url == models["int8-weight"]:
            with torch.no_grad():
                model.model.norm.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(WeightLoader, "build_model", broken)
    with pytest.raises(InvalidInputError, match="non-finite logits"):
        PrecisionValidator(
            models["ref"], models["int8-weight"], str(EVAL), max_tokens=512, thresholds=Thresholds()
        ).run()
