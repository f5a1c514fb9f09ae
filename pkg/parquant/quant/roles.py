"""How much of each part of a model a quantization covered, in parameters.

A method can leave modules in full precision for three reasons: the user ignored them (`--ignore`,
routers and lm_head by default), the method cannot take their shape (INT4 groups need an input
width that is a multiple of the group size: an MoE expert's down_proj often is not), or the
backend skipped them. The last two used to pass silently; this table names them by role so that
the manifest, `inspect` and the report say what share of the model is really quantized, and
`--min-quantized-fraction` can refuse a run that covers too little.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..store.schema import TensorSpec
from .linear_layers import ModelLayers, is_ignored

ROLE_NAMES = ("attention", "dense_mlp", "experts", "routers", "other")
# suffixes a quantized module's tensors carry in any layout parquant writes or reads
_QUANTIZED_SUFFIXES = (".weight_scale", ".scales", ".qweight", ".weight_packed")


def module_role(module: str, layers: ModelLayers) -> str:
    if module in layers.experts:
        return "experts"
    if module in layers.routers:
        return "routers"
    leaf = module.lower()
    if "attn" in leaf or "attention" in leaf:
        return "attention"
    if "mlp" in leaf or "feed_forward" in leaf or "ffn" in leaf:
        return "dense_mlp"
    return "other"


def quantized_modules(output_names: Iterable[str]) -> set[str]:
    """Modules a quantized checkpoint holds in quantized form, from its tensor names alone."""
    found = set()
    for name in output_names:
        for suffix in _QUANTIZED_SUFFIXES:
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
    return found


def role_coverage(
    layers: ModelLayers, specs: Mapping[str, TensorSpec], quantized: set[str], ignore: list[str]
) -> dict[str, Any]:
    """{"roles": {role: {"total", "quantized", "ignored", "left"}}, "fraction", "left"}, in
    parameters; `fraction` is quantized over what was asked for (everything not ignored), and
    `left` names the modules asked for but left in full precision."""
    roles = {role: {"total": 0, "quantized": 0, "ignored": 0, "left": 0} for role in ROLE_NAMES}
    left: list[str] = []
    for module in sorted(layers.candidates):
        spec = specs.get(f"{module}.weight")
        if spec is None or len(spec.shape) != 2:
            continue
        params = math.prod(spec.shape)
        counts = roles[module_role(module, layers)]
        counts["total"] += params
        if module in quantized:
            counts["quantized"] += params
        elif is_ignored(module, ignore):
            counts["ignored"] += params
        else:
            counts["left"] += params
            left.append(module)
    asked = sum(c["total"] - c["ignored"] for c in roles.values())
    done = sum(c["quantized"] for c in roles.values())
    return {
        "roles": {role: counts for role, counts in roles.items() if counts["total"]},
        "fraction": round(done / asked, 6) if asked else 1.0,
        "left": left,
    }


def describe(coverage: Mapping[str, Any]) -> str:
    """One line: the share quantized per role, e.g. 'attention 100%, experts 67% (1.2M left)'."""
    parts = []
    for role, counts in coverage.get("roles", {}).items():
        share = counts["quantized"] / counts["total"] if counts["total"] else 0.0
        extra = []
        if counts["left"]:
            extra.append(f"{_short(counts['left'])} left in full precision")
        if counts["ignored"]:
            extra.append(f"{_short(counts['ignored'])} ignored")
        parts.append(f"{role} {share:.0%}" + (f" ({', '.join(extra)})" if extra else ""))
    return "; ".join(parts)


def _short(params: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if params >= size:
            return f"{params / size:.1f}{unit}"
    return str(params)
