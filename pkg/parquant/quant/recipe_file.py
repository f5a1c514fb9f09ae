"""A recipe written by a user: YAML read within bounds, every key and scheme checked before any work.

    name: attention-fp8-mlp-int4          # optional: the file's stem
    algorithm: rtn                        # optional: rtn (data-free, the default) or a calibrated one
    ignore: [model.layers.0.*, model.layers.3.*]
    groups:
      - targets: ["re:.*self_attn\\.(q|k|v|o)_proj$"]
        scheme: FP8_DYNAMIC               # a compressed-tensors preset name ...
      - targets: ["re:.*mlp\\.(gate|up|down)_proj$"]
        scheme:                           # ... or a QuantizationScheme's fields
          weights: {num_bits: 4, type: int, symmetric: true, strategy: group, group_size: 64}
          format: pack-quantized

Schemes are checked by the compressed-tensors library itself (in a child process, cached: see
quant/isolated.py). Whether the groups fit the model (a group matching nothing, a module matched
twice) is checked when the model is open, still before anything is written (Recipe.assign).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..yamlfile import read_yaml_file
from .isolated import isolated_call
from .recipe import ALGORITHMS, CHECKPOINT_FORMATS, Recipe, RecipeGroup, Scheme

KEYS = ("name", "algorithm", "format", "ignore", "groups")
GROUP_KEYS = ("targets", "scheme")
# The format a group is written in when its scheme names none (what the library's loaders expect).
_DEFAULT_FORMATS = {("int", 4): "pack-quantized", ("int", 8): "int-quantized", ("float", 8): "float-quantized"}


def read_recipe(path: str) -> Recipe:
    """The recipe in `path`; 66 when missing, 78 naming the key or group at fault."""
    raw = read_yaml_file(path, "recipe file")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"recipe file {path} must hold a mapping (groups:, ignore:, ...), not {type(raw).__name__}")
    _known(raw, KEYS, f"recipe file {path}")
    algorithm = str(raw.get("algorithm", "rtn"))
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"recipe file {path}: algorithm {algorithm!r} is unknown: choose one of {', '.join(ALGORITHMS)}"
        )
    layout = str(raw.get("format", "compressed-tensors"))
    if layout not in CHECKPOINT_FORMATS:
        raise ConfigError(
            f"recipe file {path}: format {layout!r} is unknown: choose one of {', '.join(CHECKPOINT_FORMATS)}"
        )
    groups_raw = raw.get("groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        raise ConfigError(f"recipe file {path} needs `groups:`, a list of {{targets, scheme}} entries")
    targets: list[tuple[str, ...]] = []
    schemes: list[Any] = []
    for index, group in enumerate(groups_raw):
        where = f"recipe file {path}, group {index}"
        if not isinstance(group, Mapping):
            raise ConfigError(f"{where} must be a mapping with targets: and scheme:")
        _known(group, GROUP_KEYS, where)
        targets.append(_strings(group.get("targets"), f"{where}: targets"))
        scheme = group.get("scheme")
        if not isinstance(scheme, str | Mapping):
            raise ConfigError(f"{where}: scheme must be a compressed-tensors preset name (e.g. W8A16) or its fields")
        schemes.append(scheme if isinstance(scheme, str) else dict(scheme))
    answers = isolated_call(
        "parquant.quant.formats.compressed_tensors.validated_schemes", [schemes], ("compressed-tensors",)
    )
    groups = []
    for index, (group_targets, answer) in enumerate(zip(targets, answers, strict=True)):
        if "error" in answer:
            raise ConfigError(
                f"recipe file {path}, group {index}: compressed-tensors refuses the scheme: {answer['error']}"
            )
        fields = answer["fields"]
        weights = fields.get("weights")
        if not weights:
            raise ConfigError(f"recipe file {path}, group {index}: the scheme quantizes no weights")
        scheme_format = fields.get("format") or _DEFAULT_FORMATS.get((weights.get("type"), weights.get("num_bits")))
        if layout == "compressed-tensors" and scheme_format is None:
            raise ConfigError(f"recipe file {path}, group {index}: say the scheme's `format:` (e.g. pack-quantized)")
        groups.append(RecipeGroup(group_targets, Scheme(weights, fields.get("input_activations"), scheme_format)))
    if layout != "compressed-tensors" and len(groups) > 1:
        raise ConfigError(
            f"recipe file {path}: the {layout} format has one scheme per model: mix schemes in compressed-tensors"
        )
    ignore = _strings(raw.get("ignore", []), f"recipe file {path}: ignore", empty=True)
    name = str(raw.get("name") or Path(path).stem)
    return Recipe(name, tuple(groups), ignore, algorithm, layout, source=f"recipe file {path}")


def recipe_digest(recipe: Recipe) -> str:
    """What the recipe says, hashed: a run's fingerprint changes when the file's meaning does."""
    data = {
        "name": recipe.name,
        "algorithm": recipe.algorithm,
        "format": recipe.checkpoint_format,
        "ignore": list(recipe.ignore),
        "groups": [[list(g.targets), g.scheme.fields()] for g in recipe.groups],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _known(raw: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}: known keys are {', '.join(keys)}")


def _strings(value: Any, where: str, empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (not value and not empty):
        raise ConfigError(f"{where} must be a list of module names, `re:` patterns or Linear")
    for entry in value:
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as exc:
                raise ConfigError(f"{where}: {entry!r} is not a valid regular expression ({exc})") from None
    return tuple(value)
