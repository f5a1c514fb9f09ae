"""The built-in PTQ backend as a streaming stage: Parquet model in, quantized Parquet model out.

Tensors flow one at a time (reading runs ahead on another thread): a linear layer's weight is
loaded, checked for NaN/Inf, quantized in row blocks and written as `weight` + `weight_scale`;
every other tensor is copied through chunk by chunk. The whole model is never in memory, and a
killed run resumes at the first unfinished shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, InvalidInputError, UnavailableError
from ..hf import INDEX_NAME
from ..memory import release_free_memory
from ..numerics import count_nonfinite
from ..store.items import ModelItem, rechunked, sliced
from ..store.reader import ModelReader
from ..store.schema import FLOAT_DTYPES, KIND_FILE, KIND_TENSOR, TensorSpec
from .builders import UnsupportedSchemeError, build
from .checkpoint_config import config_block
from .dtypes import torch_dtype
from .linear_layers import ModelLayers, model_layers
from .ptq import ChannelMethod, Method, NonFiniteWeightError
from .recipe import PRESET, Recipe, RecipeError


@dataclass(frozen=True)
class PTQPlan:
    items: list[ModelItem]
    quantized: list[str]  # module names
    skipped: list[str]  # linear modules left in full precision (ignored, or a shape the method cannot take)
    layers: ModelLayers
    kept_fused: list[str]  # fused 3-D expert tensors in the checkpoint, copied unquantized (named in a warning)
    not_asked: list[str]  # ignore patterns, and modules no recipe group targets: full precision on purpose

    @property
    def quantized_experts(self) -> list[str]:
        return [m for m in self.quantized if m in self.layers.experts]


def plan_ptq(reader: ModelReader, recipe: Recipe, ignore: list[str]) -> PTQPlan:
    """Every output item of `recipe` applied to the model (nothing computed yet): each targeted
    linear layer through its group's quantizer, everything else copied, config.json with the
    recipe's block. A recipe that does not fit the model is refused here, before any work."""
    recipe = recipe.with_ignore(ignore)
    config = reader.config()
    layers = model_layers(config)
    linear = layers.candidates
    names = set(reader.tensor_names())
    candidates = {m for m in linear if f"{m}.weight" in names and _quantizable(reader.tensor_spec(f"{m}.weight"))}
    try:
        assigned = recipe.assign(candidates, every_group_used=recipe.source != PRESET)
    except RecipeError as exc:
        raise ConfigError(str(exc)) from None
    quantizers = _quantizers(recipe)
    specs = {module: reader.tensor_spec(f"{module}.weight") for module in assigned}
    targets = {
        module: quantizers[group] for module, group in assigned.items() if quantizers[group].supports(specs[module])
    }
    outputs = {module: method.outputs(specs[module], module) for module, method in targets.items()}
    if not targets:
        raise UnavailableError(
            f"architecture {config.get('model_type')!r} has no nn.Linear layers to quantize outside --ignore "
            f"{' '.join(recipe.ignore)} (e.g. GPT-2 uses Conv1D): unsupported by the built-in PTQ backend"
        )
    cache = _OneTensorCache(reader)
    items: list[ModelItem] = []
    for name in reader.tensor_names():
        spec = reader.tensor_spec(name)
        module = name.removesuffix(".weight")
        method = targets.get(module) if name.endswith(".weight") else None
        if method is not None:
            items += [
                ModelItem(KIND_TENSOR, out.name, out.nbytes, _output_chunks(cache, method, module, spec, out), out)
                for out in outputs[module]
            ]
        else:
            items.append(ModelItem(KIND_TENSOR, name, spec.nbytes, _checked_copy(reader, spec), spec))
    # every nn.Linear left out is named (as before MoE support, so dense outputs keep their bytes);
    # routers and experts only where the checkpoint has them under that name
    skipped = sorted((layers.linear - set(targets)) | {m for m in linear - set(targets) if f"{m}.weight" in names})
    quantization = config_block(recipe, ignore=skipped)
    for file in reader.file_names():
        if file == INDEX_NAME:
            continue  # the safetensors layout changes; export writes a fresh index
        data = _with_quantization_config(reader.read_file(file), quantization) if file == "config.json" else None
        items.append(_file_item(reader, file, data))
    items.sort(key=lambda item: (item.kind != KIND_FILE, item.name))
    kept_fused = sorted(layers.fused_experts & names)
    untargeted = sorted(m for m in candidates - set(assigned) if recipe.group_of(m) is None)
    return PTQPlan(items, sorted(targets), skipped, layers, kept_fused, [*recipe.ignore, *untargeted])


def _quantizers(recipe: Recipe) -> list[Method]:
    """The built-in quantizer of each group; 69 (or 78 for a recipe file) naming a scheme it lacks."""
    quantizers = []
    for index, group in enumerate(recipe.groups):
        try:
            quantizers.append(build(group.scheme, recipe))
        except UnsupportedSchemeError as exc:
            where = f"{recipe.source}: group {index}" if recipe.source != PRESET else f"method {recipe.name}"
            error = ConfigError if recipe.source != PRESET else UnavailableError
            raise error(f"{where}: {exc} (built-in PTQ backend)") from None
    return quantizers


def _quantizable(spec: TensorSpec) -> bool:
    return spec.dtype in FLOAT_DTYPES and len(spec.shape) == 2


class _OneTensorCache:
    """A module's output tensors come from one quantization and are written back to back."""

    def __init__(self, reader: ModelReader) -> None:
        self.reader = reader
        self.module = ""
        self.result: dict[str, torch.Tensor] = {}

    def get(self, method: Method, module: str, spec: TensorSpec) -> dict[str, torch.Tensor]:
        if module != self.module or not self.result:
            self.result = {}  # free the previous one before loading the next
            release_free_memory()
            with self.reader.mapped_tensor(spec.name) as views:
                weight = self._load(spec, views)
                # ChannelMethod finds NaN/Inf in its row maxima for free; other methods get a pass of their own
                if not isinstance(method, ChannelMethod) and not bool(torch.isfinite(weight).all()):
                    raise InvalidInputError(f"tensor {spec.name} contains NaN/Inf values: refusing to quantize it")
                try:
                    self.result, self.module = method.quantize_tensors(weight), module
                except NonFiniteWeightError:
                    message = f"tensor {spec.name} contains NaN/Inf values: refusing to quantize it"
                    raise InvalidInputError(message) from None
        return self.result

    def _load(self, spec: TensorSpec, views: list[memoryview] | None) -> torch.Tensor:
        """The weight, read once: the mapped shard itself when it is one local chunk (no copy), its
        checked chunks joined into one tensor when several, else read chunk by chunk."""
        dtype = torch_dtype(spec.dtype)
        if views is None:
            weight = torch.empty(spec.shape, dtype=dtype)
            self.reader.read_tensor_into(spec.name, weight.view(-1).view(torch.uint8).numpy().data)
            return weight
        parts = [torch.frombuffer(view, dtype=torch.uint8) for view in views]
        joined = parts[0] if len(parts) == 1 else torch.cat(parts)
        return joined.view(dtype).reshape(spec.shape)


def _output_chunks(
    cache: _OneTensorCache, method: Method, module: str, spec: TensorSpec, output: TensorSpec
) -> Callable[[int], Iterator[bytes | memoryview]]:
    suffix = output.name.rsplit(".", 1)[1]

    def chunks(size: int) -> Iterator[bytes | memoryview]:
        return sliced(_raw(cache.get(method, module, spec)[suffix]), size)

    return chunks


def _raw(tensor: torch.Tensor) -> memoryview:
    array: Any = tensor.contiguous().view(torch.uint8).reshape(-1).numpy()  # zero-copy view of its bytes
    return memoryview(array)


def _checked_copy(reader: ModelReader, spec: TensorSpec) -> Callable[[int], Iterator[bytes | memoryview]]:
    def chunks(size: int) -> Iterator[bytes | memoryview]:
        for piece in rechunked(reader.iter_tensor_chunks(spec.name), size):
            if count_nonfinite(piece, spec.dtype):
                raise InvalidInputError(f"tensor {spec.name} contains NaN/Inf values: refusing to quantize the model")
            yield piece

    return chunks


def _file_item(reader: ModelReader, name: str, replacement: bytes | None) -> ModelItem:
    def chunks(size: int) -> Iterator[bytes | memoryview]:
        return sliced(memoryview(replacement if replacement is not None else reader.read_file(name)), size)

    nbytes = len(replacement) if replacement is not None else reader.manifest.files[name].nbytes
    return ModelItem(KIND_FILE, name, nbytes, chunks)


def _with_quantization_config(config_json: bytes, quantization: dict[str, object]) -> bytes:
    config = json.loads(config_json)
    config["quantization_config"] = quantization
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
