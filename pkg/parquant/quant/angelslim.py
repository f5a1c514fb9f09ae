"""The AngelSlim backend: Parquet -> HF folder (cached) -> AngelSlim Engine -> HF folder.

The stage imports the result back to Parquet. AngelSlim is called through its public API the way
its own `tools/run.py` does (SlimConfigParser, Engine.prepare_model / prepare_data /
prepare_compressor / run / convert / save), so the output is bit-identical to running AngelSlim
directly on the same folder; angelslim_compat.py explains the CPU adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import cache_dir
from ..errors import UnavailableError
from ..hf_folders import cached_hf_folder
from ..logs import third_party_output
from ..moe import TOP_K_KEYS, config_value
from ..store.reader import ModelReader
from .angelslim_compat import host_as_cuda, load_angelslim
from .calibration import CalibrationSet, prepare_calibration
from .config import QuantizationConfig
from .coverage import ExpertCoverage, count_routing, repair_scales
from .linear_layers import is_ignored, model_layers
from .recipe import Recipe, Scheme

log = logging.getLogger("parquant")

# model_type -> AngelSlim's model class name (SlimModelFactory); others are not supported by 0.5.0.
MODEL_NAMES = {"llama": "Llama", "mistral": "Llama", "qwen2": "Qwen", "qwen3": "Qwen", "qwen3_moe": "Qwen"}


@dataclass(frozen=True)
class AngelSlimRun:
    output: Path  # the HF folder AngelSlim saved
    calibration: CalibrationSet | None
    device: str
    export_seconds: float  # Parquet -> HF folder (0 when the cache had it)
    engine_seconds: float  # AngelSlim itself, calibration data preparation included
    coverage: ExpertCoverage | None = None  # MoE models: calibration tokens per expert


def quantization_section(
    config: QuantizationConfig, recipe: Recipe, modules: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """AngelSlim's `compression.quantization` section: the recipe in AngelSlim's words, the layers
    to leave alone (globs resolved against the model's `modules`), and the user's pass-through
    options (`angelslim:` in the config) on top."""
    section = recipe_section(recipe)
    section.update({"ignore_layers": angelslim_ignore([*config.ignore, *recipe.ignore], modules)})
    overrides = dict(config.angelslim)
    if "quant_method" in overrides:
        section["quant_method"] = {**section["quant_method"], **overrides.pop("quant_method")}
    section.update(overrides)
    return section


_STRATEGY = {"tensor": "per-tensor", "channel": "per-channel", "token": "per-token", "tensor_group": "per-block"}


def recipe_section(recipe: Recipe) -> dict[str, Any]:
    """A one-group recipe as AngelSlim 0.5.0's section (`bits`, `quant_method`, `name`, helpers);
    UnavailableError for a recipe AngelSlim has no method for (per-layer mixes, other schemes)."""
    if len(recipe.groups) != 1:
        raise UnavailableError(f"recipe {recipe.name} mixes {len(recipe.groups)} schemes: AngelSlim runs one per model")
    scheme = recipe.single
    acts = scheme.input_activations or {}
    name = _angelslim_name(recipe, scheme)
    method: dict[str, Any] = {}
    if scheme.strategy == "group":
        method.update({"weight": "per-group", "group_size": scheme.group_size})
    else:
        method["weight"] = _STRATEGY[scheme.strategy]
    if acts:
        method["activation"] = _STRATEGY[str(acts.get("strategy"))]
    if scheme.strategy == "tensor_group":
        method["group_size"] = scheme.group_size
    if not scheme.symmetric:
        method["zero_point"] = True
    if recipe.algorithm == "awq":
        method["mse_range"] = False
    section: dict[str, Any] = {"bits": 8 if name == "w4a8_fp8" else scheme.bits, "quant_method": method, "name": name}
    if recipe.algorithm == "smoothquant":
        section["quant_helpers"] = ["smooth"]
    return section


def _angelslim_name(recipe: Recipe, scheme: Scheme) -> str:
    """AngelSlim's name for a (algorithm, scheme): the quantizer class it picks."""
    acts = scheme.input_activations or {}
    group4 = scheme.bits == 4 and scheme.weight_type == "int" and scheme.strategy == "group"
    if recipe.algorithm in ("gptq", "gptaq", "awq") and group4:
        return f"int4_{recipe.algorithm}"
    if recipe.algorithm == "smoothquant" and scheme.bits == 8 and scheme.weight_type == "int":
        return "int8_dynamic"
    if recipe.algorithm == "rtn" and acts and not acts.get("dynamic"):
        raise UnavailableError(f"recipe {recipe.name}: static activation scales need algorithm minmax (calibration)")
    if recipe.algorithm in ("rtn", "minmax"):
        if scheme.weight_type == "float" and scheme.bits == 4 and scheme.strategy == "tensor_group":
            return "nvfp4"
        if group4 and acts.get("type") == "float":
            return "w4a8_fp8"
        if scheme.weight_type == "float" and scheme.bits == 8 and scheme.strategy == "tensor" and acts:
            return "fp8_dynamic" if acts.get("dynamic") else "fp8_static"
        if scheme.weight_type == "int" and scheme.bits == 8 and scheme.strategy == "channel" and acts.get("dynamic"):
            return "int8_dynamic"
    raise UnavailableError(
        f"AngelSlim 0.5.0 has no method for {recipe.algorithm} with weights {scheme.describe_weights()} and "
        f"activations {scheme.describe_activations()}: use a preset --method or --backend ptq"
    )


def angelslim_ignore(patterns: list[str], modules: frozenset[str]) -> list[str]:
    """The ignore list as AngelSlim reads it: it skips a layer whose name *contains* an entry, and
    some of its passes (GPTQ) see names relative to the decoder layer (`mlp.gate`). So a glob is
    passed on as the names of the model's modules it matches, full and relative, a relative one
    only where it names no module the glob leaves alone (an MoE router's `mlp.gate` is in no
    expert's name, but would be in a dense layer's `mlp.gate_proj`). Names pass unchanged."""
    literal = [p for p in patterns if not any(ch in p for ch in "*?[")]
    globs = [p for p in patterns if p not in literal]
    if not globs:
        return literal
    matched = {m for m in modules if is_ignored(m, globs)}
    others = modules - matched
    relative = {_LAYER_PREFIX.sub("", m) for m in matched}
    safe = {r for r in relative if r not in matched and not any(r in other for other in others)}
    return literal + sorted((matched | safe) - set(literal))


_LAYER_PREFIX = re.compile(r"^.*?\blayers\.\d+\.")


def _modules(model_dir: Path) -> frozenset[str]:
    """The quantizable modules of the model in `model_dir` (in-memory and checkpoint names)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return frozenset()
    return model_layers(config).candidates


def angelslim_config(
    config: QuantizationConfig,
    recipe: Recipe,
    model_dir: Path,
    calibration: Path | None,
    save_dir: Path,
    model_type: str,
    device: str,
) -> dict[str, Any]:
    """The whole dict AngelSlim's SlimConfigParser takes (what a YAML recipe would hold)."""
    model_name = MODEL_NAMES.get(model_type)
    if model_name is None:
        raise UnavailableError(
            f"architecture {model_type!r} is not supported by AngelSlim 0.5.0 (supported: {', '.join(MODEL_NAMES)}); "
            "use --backend ptq"
        )
    result: dict[str, Any] = {
        "global": {"save_path": str(save_dir)},
        "model": {
            "name": model_name,
            "model_path": str(model_dir),
            "trust_remote_code": False,
            "torch_dtype": "auto",
            "device_map": "cpu" if device == "cpu" else "auto",
            "low_cpu_mem_usage": True,
            "use_cache": False,
        },
        "compression": {"name": "PTQ", "quantization": quantization_section(config, recipe, _modules(model_dir))},
    }
    if calibration is not None:
        result["dataset"] = {
            "name": "TextDataset",
            "data_path": str(calibration),
            "max_seq_length": config.calibration.seq_len,
            "num_samples": config.calibration.num_samples,
            "batch_size": 1,
            "shuffle": False,
        }
    return result


def run_engine(slim_config: dict[str, Any], device: str) -> ExpertCoverage | None:
    """Exactly AngelSlim's own sequence of Engine calls; its console output goes to debug logs.

    For a mixture-of-experts model with calibration data, the float model also reads the
    calibration batches once before AngelSlim starts, with the routers counted (coverage.py):
    the expert coverage returned. None otherwise."""
    engine_module = load_angelslim()
    from angelslim.utils.config_parser import SlimConfigParser

    parsed = SlimConfigParser()._get_configs(slim_config)
    model, dataset, compression = parsed.model_config, parsed.dataset_config, parsed.compression_config
    with third_party_output("angelslim"), _offline():
        engine = engine_module.Engine()
        engine.prepare_model(
            model_name=model.name,
            model_path=model.model_path,
            torch_dtype=model.torch_dtype,
            device_map=model.device_map,
            trust_remote_code=model.trust_remote_code,
            low_cpu_mem_usage=model.low_cpu_mem_usage,
            use_cache=model.use_cache,
        )
        if compression.need_dataset:
            _ensure_pad_token(engine.slim_model.tokenizer)
            engine.prepare_data(
                data_path=dataset.data_path,
                data_type=dataset.name,
                max_length=dataset.max_seq_length,
                batch_size=dataset.batch_size,
                num_samples=dataset.num_samples,
                shuffle=dataset.shuffle,
                model_name=model.name,
                quantization_config=compression.quantization,
                dtype=engine.slim_model.model.dtype,
            )
        coverage = _expert_coverage(engine) if compression.need_dataset else None
        engine.prepare_compressor(
            compress_name=compression.name, compress_config=compression, global_config=parsed.global_config
        )
        with host_as_cuda() if device == "cpu" else contextlib.nullcontext():
            engine.run()
            engine.convert()
        engine.save(parsed.global_config.save_path, parsed)
    return coverage


def _expert_coverage(engine: Any) -> ExpertCoverage | None:
    model = engine.slim_model.model
    top_k = config_value(model.config.to_dict(), TOP_K_KEYS)
    if top_k is None or engine.dataloader is None:
        return None
    coverage = count_routing(model, engine.dataloader, top_k)
    return coverage if coverage.tokens else None


def _ensure_pad_token(tokenizer: Any) -> None:
    """AngelSlim's calibration pads batches; many tokenizers (e.g. from GGUF) have no pad token.

    Measured on an H200: SmolLM2's tokenizer made by transformers 5.17 from its GGUF has none, and
    fp8-static, int4-gptq and int4-awq then fail in prepare_data. Padding with the end-of-sequence
    token is the usual choice; the saved tokenizer records it.
    """
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        log.info(
            "the tokenizer has no pad token: using its end-of-sequence token %r for calibration", tokenizer.eos_token
        )
        tokenizer.pad_token = tokenizer.eos_token


@contextlib.contextmanager
def _offline() -> Any:
    """AngelSlim reaches for the hub when a path is not local: everything here is local."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def scrub_host_paths(folder: Path, replacements: dict[str, str]) -> list[str]:
    """Replace this host's paths in the JSON files AngelSlim saved (its `angelslim_config.json`
    records `absolute_model_path`, our cache folder): an output must not tell where it was made;
    the manifest's provenance keeps the source URL and fingerprints. Returns the files changed."""
    ordered = sorted(replacements.items(), key=lambda item: -len(item[0]))

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for path, replacement in ordered:
                if value == path or value.startswith(path.rstrip("/") + "/"):
                    return replacement + value[len(path) :]
            return value
        if isinstance(value, list):
            return [scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        return value

    changed = []
    for path in sorted(folder.glob("*.json")):
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        cleaned = scrub(loaded)
        if cleaned != loaded:
            path.write_text(json.dumps(cleaned, indent=4))
            changed.append(path.name)
    return changed


def correct_w4a8_steps(folder: Path, reader: ModelReader) -> int:
    """Detect AngelSlim 0.5.0's W4A8 group steps stored as absmax/8 while its codes were made with
    absmax/7 (formats/w4a8_fp8.py), from the first module against the original weight, and where
    found rewrite every step exactly (the safetensors files of `folder`, before parquant imports
    them). Returns how many step tensors were corrected (0: the steps were right)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .dtypes import torch_dtype
    from .formats.w4a8_fp8 import MARKER, corrected_steps, upstream_step_error

    files = sorted(folder.glob("*.safetensors"))
    probe = None
    for path in files:
        with safe_open(str(path), "pt") as handle:
            probe = next((name for name in handle.keys() if name.endswith("." + MARKER)), None)  # noqa: SIM118
            if probe is not None:
                steps = handle.get_tensor(probe)
                break
    original_name = probe.removesuffix("." + MARKER) + ".weight" if probe else ""
    if probe is None or original_name not in reader.tensor_names():
        return 0
    spec = reader.tensor_spec(original_name)
    import torch

    original = torch.frombuffer(bytearray(reader.read_tensor(original_name)), dtype=torch_dtype(spec.dtype))
    ratio = upstream_step_error(steps, original.reshape(spec.shape))
    if abs(ratio - 8.0) > 0.25:
        return 0
    corrected = 0
    for path in files:
        with safe_open(str(path), "pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata()
        names = [name for name in tensors if name.endswith("." + MARKER)]
        for name in names:
            tensors[name] = corrected_steps(tensors[name])
        if names:
            save_file(tensors, str(path), metadata=metadata)
            corrected += len(names)
    log.warning(
        "AngelSlim 0.5.0 stored its W4A8 group steps as absmax/8 while it made the INT4 codes with absmax/7 "
        "(every weight 12.5%% too small): corrected %d step tensors exactly (x8/7); the method stays experimental",
        corrected,
    )
    return corrected


def quantize_with_angelslim(
    model_url: str,
    reader: ModelReader,
    config: QuantizationConfig,
    recipe: Recipe,
    device: str,
    workdir: Path,
    storage_options: Mapping[str, str] | None,
) -> AngelSlimRun:
    model_type = str(reader.config().get("model_type"))
    started = time.monotonic()
    model_dir = cached_hf_folder(reader)
    exported = time.monotonic()
    calibration = None
    if recipe.calibrated:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer_id = (
            hashlib.sha256((model_dir / "tokenizer.json").read_bytes()).hexdigest()
            if (model_dir / "tokenizer.json").exists()
            else model_dir.name
        )
        calibration = prepare_calibration(config.calibration, tokenizer, tokenizer_id, storage_options)
    save_dir = workdir / "angelslim-output"
    slim_config = angelslim_config(
        config, recipe, model_dir, calibration.path if calibration else None, save_dir, model_type, device
    )
    log.info("running AngelSlim %s on %s (%s)", slim_config["compression"]["quantization"]["name"], device, model_type)
    coverage = run_engine(slim_config, device)
    if coverage is not None:
        for layer, expert in coverage.uncovered:
            log.warning(
                "expert %s.experts.%d received no calibration token: add calibration data that reaches it "
                "(more --num-samples, or data of its domain); its activation scales are set from its siblings",
                layer,
                expert,
            )
        repair_scales(save_dir, coverage)
    if slim_config["compression"]["quantization"]["name"] == "w4a8_fp8":
        correct_w4a8_steps(save_dir, reader)
    replacements = {str(model_dir): model_url, str(workdir): ".", str(cache_dir()): "parquant cache"}
    if calibration is not None:
        replacements[str(calibration.path)] = config.calibration.data or "calibration data"
    scrub_host_paths(save_dir, replacements)
    return AngelSlimRun(save_dir, calibration, device, exported - started, time.monotonic() - exported, coverage)
