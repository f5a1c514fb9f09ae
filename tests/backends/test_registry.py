"""A backend is a registered handler: a toy one, registered in this test alone, runs through quantize,
validate and report without any other file knowing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from parquant.backends import (
    BackendJob,
    BackendOutput,
    BackendReport,
    Hardware,
    ModelFacts,
    all_backends,
    get_backend,
    register,
    registered,
)
from parquant.errors import UnavailableError, UsageError
from parquant.quant import methods
from parquant.quant.checkpoint_config import config_block
from parquant.quant.config import QuantizationConfig, load_config
from parquant.quant.dtypes import torch_dtype
from parquant.quant.estimate import Estimate
from parquant.quant.linear_layers import model_layers
from parquant.quant.recipe import Recipe
from parquant.store.items import ModelItem, sliced
from parquant.store.schema import KIND_FILE, KIND_TENSOR, TensorSpec
from parquant.weights import WeightLoader

from ..conftest import REPO, embedded_model_in
from ..helpers import validate_and_report

SEVEN_BIT = """
name: int7-everywhere
groups:
  - targets: [Linear]
    scheme:
      weights: {num_bits: 8, type: int, symmetric: true, strategy: channel}
"""


class Int7Backend:
    """Stores INT8 per-channel weights that use only 7 bits (absmax / 63): its own math, so a test
    can tell it ran. Eligible for data-free recipes whose every scheme is INT8 per channel."""

    name = "toy-int7"
    title = "the toy INT7 backend"
    fans_out = False

    def recipe_for(self, method: str, group_size: int) -> Recipe | None:
        return None  # no registry method: it runs recipe files

    def eligible(self, model: ModelFacts, recipe: Recipe, device: str) -> str | None:
        if recipe.algorithm != "rtn" or any(
            s.bits != 8 or s.weight_type != "int" or s.strategy != "channel" for s in recipe.schemes
        ):
            return "it stores INT8 per channel only"
        return None

    def describe(self, recipe: Recipe, device: str) -> str:
        return f"{recipe.name} in 7 bits"

    def estimate(self, model: ModelFacts, recipe: Recipe, config: QuantizationConfig, hardware: Hardware) -> Estimate:
        return Estimate(model.model_bytes / 1e9, model.parameters, 0, 0.1, model.model_bytes / 1e9, 0.01, "toy")

    def run(self, job: BackendJob) -> BackendOutput:
        reader = job.reader
        recipe = job.recipe.with_ignore(job.config.ignore)
        layers = model_layers(reader.config())
        names = set(reader.tensor_names())
        targets = set(recipe.assign({m for m in layers.candidates if f"{m}.weight" in names}))
        items = []
        for name in reader.tensor_names():
            spec = reader.tensor_spec(name)
            module = name.removesuffix(".weight")
            if module not in targets:
                data = reader.read_tensor(name)
                items.append(
                    ModelItem(KIND_TENSOR, name, spec.nbytes, lambda size, data=data: sliced(data, size), spec)
                )
                continue
            raw = bytearray(reader.read_tensor(name))
            weight = torch.frombuffer(raw, dtype=torch_dtype(spec.dtype)).reshape(spec.shape).float()
            scale = (weight.abs().amax(dim=1, keepdim=True) / 63).to(torch.bfloat16)
            values = torch.round(weight / scale.float().clamp(min=1e-12)).clamp(-63, 63).to(torch.int8)
            for suffix, tensor, dtype in (("weight", values, "I8"), ("weight_scale", scale, spec.dtype)):
                out = TensorSpec(f"{module}.{suffix}", dtype, tuple(tensor.shape))
                items.append(ModelItem(KIND_TENSOR, out.name, out.nbytes, _bytes_of(tensor), out))
        skipped = sorted(layers.candidates - targets)
        config = json.loads(reader.read_file("config.json"))
        config["quantization_config"] = config_block(recipe, skipped)
        text = json.dumps(config, indent=2, sort_keys=True).encode()
        items.append(ModelItem(KIND_FILE, "config.json", len(text), lambda size: sliced(text, size)))
        for file in reader.file_names():
            if file not in ("config.json", "model.safetensors.index.json"):
                data = reader.read_file(file)
                items.append(ModelItem(KIND_FILE, file, len(data), lambda size, data=data: sliced(data, size)))
        report = BackendReport(quantized_layers=len(targets), skipped_layers=skipped)
        return BackendOutput(items, layers, targets, list(recipe.ignore), report=report)


def _bytes_of(tensor: torch.Tensor):  # type: ignore[no-untyped-def]
    raw = memoryview(tensor.contiguous().view(torch.uint8).reshape(-1).numpy()).tobytes()
    return lambda size: sliced(raw, size)


def test_a_registered_backend_runs_a_recipe_through_quantize_validate_and_report(tmp_path: Path) -> None:
    from parquant.stages.quantize import quantize

    recipe = tmp_path / "int7.yaml"
    recipe.write_text(SEVEN_BIT)
    with embedded_model_in(tmp_path, "model") as model, registered(Int7Backend()):
        assert methods.backend_names() == ("auto", *(b.name for b in all_backends()))
        # auto: every eligible backend is estimated, the cheapest runs (the toy says 0.01 s)
        config = load_config(flags={"recipe": str(recipe)}, environ={})
        result = quantize(str(model), str(tmp_path / "toy"), config)
        assert result.details["backend"] == "toy-int7" and result.details["method"] == "int7-everywhere"
        assert result.quantized_layers == 28 and result.skipped_layers == ["lm_head"]
        checked, written = validate_and_report(model, tmp_path / "toy", tmp_path)
        with WeightLoader(str(tmp_path / "toy")) as loader:
            stored = loader.load("model.layers.0.mlp.down_proj.weight")
            manifest = loader.reader.manifest
    assert stored.dtype == torch.int8 and int(stored.abs().max()) == 63  # the toy's own math ran
    assert manifest.created_by.backend == "toy-int7"
    assert checked.logits_cosine_mean > 0.99 and checked.passed
    assert written and "int7-everywhere" in (tmp_path / "report" / "report.md").read_text()
    assert "toy-int7" not in methods.backend_names()  # unregistered with its block


def test_the_backend_asked_for_must_be_eligible_and_registered(tmp_path: Path) -> None:
    from parquant.stages.quantize import quantize

    mixed = str(REPO / "examples" / "recipes" / "attention-fp8-mlp-int4.yaml")
    with embedded_model_in(tmp_path, "model") as model, registered(Int7Backend()):
        config = load_config(flags={"recipe": mixed, "backend": "toy-int7"}, environ={})
        with pytest.raises(UnavailableError, match=r"no backend can run recipe file .*\(toy-int7: it stores INT8"):
            quantize(str(model), str(tmp_path / "out"), config)
        assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="backend 'toy-int7' is unknown: choose one of auto, angelslim, ptq"):
        load_config(flags={"recipe": mixed, "backend": "toy-int7"}, environ={})
    with pytest.raises(KeyError, match="toy-int7"):
        get_backend("toy-int7")


def test_registration_refuses_a_name_taken() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_backend("ptq"))
    assert [b.name for b in all_backends()] == ["angelslim", "ptq"]
