"""QuantizationConfig: what to quantize and how, from YAML, PARQUANT_* variables and CLI flags.

Precedence, lowest to highest: defaults < YAML file (`--config`) < environment (`PARQUANT_*`) <
flags given on the command line. Every value remembers where it came from, so an error names the
key *and* its source; unknown keys are refused rather than silently ignored (a typo in a batch
job's config would otherwise quantize with defaults).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError, UsageError
from ..yamlfile import read_yaml_file
from . import methods
from .recipe import Recipe
from .recipe_file import read_recipe, recipe_digest

DEVICES = ("auto", "cuda", "cpu")
# AngelSlim QuantizationConfig fields a user may pass through (`angelslim:` in YAML).
ANGELSLIM_PASSTHROUGH = (
    "quant_method",
    "zero_point",
    "mse_range",
    "smooth_alpha",
    "quant_helpers",
    "low_memory",
    "modules_to_quantize",
    "cpu_convert",
)

# Kept in full precision unless the config says otherwise: the output head, and the routers of
# mixture-of-experts layers (`mlp.gate`, Mixtral's `block_sparse_moe.gate`, `router`), which pick
# experts from a few logits and which no serving engine loads quantized.
DEFAULT_IGNORE = ("lm_head", "*.gate", "*.router")

ENVIRONMENT = {
    "PARQUANT_BACKEND": "backend",
    "PARQUANT_METHOD": "method",
    "PARQUANT_GROUP_SIZE": "group_size",
    "PARQUANT_IGNORE": "ignore",
    "PARQUANT_CALIBRATION_DATA": "calibration.data",
    "PARQUANT_NUM_SAMPLES": "calibration.num_samples",
    "PARQUANT_SEQ_LEN": "calibration.seq_len",
    "PARQUANT_SEED": "calibration.seed",
    "PARQUANT_DEVICE": "device",
    "PARQUANT_FALLBACK": "fallback",
    "PARQUANT_RECIPE": "recipe",
}


@dataclass
class CalibrationConfig:
    data: str | None = None
    num_samples: int = 128
    seq_len: int = 512
    seed: int = 0


@dataclass
class QuantizationConfig:
    method: str = field(default_factory=methods.default_method)
    backend: str = "auto"
    group_size: int = 128
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE))
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    device: str = "auto"
    fallback: bool = True
    angelslim: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None  # a recipe file (quant/recipe_file.py) instead of a --method
    custom_recipe: Recipe | None = field(default=None, repr=False, compare=False)  # that file, read and checked

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded (manifest, fingerprint); a recipe file by its path and what it
        says (its digest), and nothing about recipes when there is none, so that runs without one
        keep the fingerprints they always had."""
        data = asdict(self)
        data.pop("custom_recipe")
        if self.custom_recipe is None:
            data.pop("recipe")
        else:
            data["recipe"] = {"file": self.recipe, "name": self.custom_recipe.name}
            data["recipe_digest"] = recipe_digest(self.custom_recipe)
        return data

    @property
    def method_name(self) -> str:
        """The method a run reports: the preset's name, or the recipe file's."""
        return self.custom_recipe.name if self.custom_recipe is not None else self.method

    @property
    def needs_calibration(self) -> bool:
        if self.custom_recipe is not None:
            return self.custom_recipe.calibrated
        return methods.get_method(self.method).calibrated


def load_config(
    path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> QuantizationConfig:
    """Merge the three sources (see module docstring) and validate; raises 78 (file) or 64 (flags/env)."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path:
        _merge(values, origin, _read_yaml(path), path)
    env = os.environ if environ is None else environ
    for variable, key in ENVIRONMENT.items():
        if variable in env:
            _merge(values, origin, {key: _from_env(key, env[variable], variable)}, variable)
    for key, value in (flags or {}).items():
        if value is not None:
            _merge(values, origin, {key: value}, f"--{key.split('.')[-1].replace('_', '-')}")
    return _build(values, origin)


def _read_yaml(path: str) -> dict[str, Any]:
    loaded = read_yaml_file(path, "config file")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (method:, backend:, ...), not {type(loaded).__name__}")
    section = loaded.get("quantization", loaded) if set(loaded) <= {"quantization"} else loaded
    return _flatten(section, path)


def _flatten(raw: Mapping[str, Any], path: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "calibration" and isinstance(value, Mapping):
            flat.update({f"calibration.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def _from_env(key: str, text: str, variable: str) -> Any:
    if key == "ignore":
        return [part.strip() for part in text.split(",") if part.strip()]
    if key == "fallback":
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise UsageError(f"{variable}={text!r} must be true or false")
        return text.lower() in ("1", "true", "yes")
    return text


def _merge(values: dict[str, Any], origin: dict[str, str], new: Mapping[str, Any], source: str) -> None:
    for key, value in new.items():
        values[key] = value
        origin[key] = source


def _build(values: dict[str, Any], origin: dict[str, str]) -> QuantizationConfig:
    top = {f.name: f for f in fields(QuantizationConfig)} | {
        f"calibration.{f.name}": f for f in fields(CalibrationConfig)
    }
    config = QuantizationConfig()
    for key, value in values.items():
        if key not in top or key in ("calibration", "custom_recipe"):
            known = ", ".join(k for k in top if k not in ("calibration", "custom_recipe"))
            raise _error(origin[key], f"unknown key {key!r} in {origin[key]}: known keys are {known}")
        target, name = (config.calibration, key.split(".")[1]) if key.startswith("calibration.") else (config, key)
        setattr(target, name, _coerce(key, value, getattr(target, name), origin[key]))
    _validate(config, origin)
    return config


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            return int(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        return value if value is None else str(value)
    except (TypeError, ValueError):
        raise _error(source, f"{key} has an invalid value {value!r} (from {source})") from None


def _validate(config: QuantizationConfig, origin: dict[str, str]) -> None:
    def where(key: str) -> str:
        return origin.get(key, "the default")

    if config.backend not in methods.backend_names():
        raise _error(
            where("backend"),
            f"backend {config.backend!r} is unknown: choose one of {', '.join(methods.backend_names())}",
        )
    if config.device not in DEVICES:
        raise _error(where("device"), f"device {config.device!r} is unknown: choose one of {', '.join(DEVICES)}")
    if config.recipe is not None:
        if "method" in origin:
            raise _error(
                where("method"),
                f"both a method ({where('method')}) and a recipe file ({where('recipe')}) were given: a recipe "
                "says everything a method does; give one of them",
            )
        config.custom_recipe = read_recipe(config.recipe)
    else:
        _validate_method(config, where)
    if config.needs_calibration and not config.calibration.data:
        raise _error(
            where("recipe" if config.recipe else "method"),
            f"{'recipe' if config.recipe else 'method'} {config.method_name} needs calibration data: pass "
            "--calibration-data URL (jsonl, txt or parquet)",
        )
    if config.group_size not in (32, 64, 128, 256, -1):
        raise _error(where("group_size"), f"group_size {config.group_size} must be 32, 64, 128, 256 or -1")
    if config.calibration.num_samples <= 0 or config.calibration.seq_len <= 0:
        raise _error(where("calibration.num_samples"), "num_samples and seq_len must be positive")
    unknown = sorted(set(config.angelslim) - set(ANGELSLIM_PASSTHROUGH))
    if unknown:
        raise _error(
            where("angelslim"),
            f"angelslim option(s) {', '.join(unknown)} are not passed through: "
            f"allowed are {', '.join(ANGELSLIM_PASSTHROUGH)}",
        )


def _validate_method(config: QuantizationConfig, where: Callable[[str], str]) -> None:
    known = methods.method_names()
    if config.method not in known:
        raise _error(
            where("method"),
            f"method {config.method!r} (from {where('method')}) is unknown: {methods.did_you_mean(config.method)}"
            f"choose one of {', '.join(known)}",
        )
    method = methods.get_method(config.method)
    if config.backend != "auto" and not method.offered_by(config.backend):
        others = ", ".join(b for b in method.backends)
        offered = ", ".join(methods.method_names(config.backend))
        raise _error(
            where("method"),
            f"method {config.method} is not offered by the {config.backend} backend (it offers {offered}): "
            f"use --backend {others} or auto",
        )


def _error(source: str, message: str) -> UsageError | ConfigError:
    """A bad value from a config file is a configuration error (78); from flags or env, usage (64)."""
    if source.startswith(("--", "PARQUANT_", "the default")):
        return UsageError(message)
    return ConfigError(message)
