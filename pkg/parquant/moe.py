"""What a mixture-of-experts checkpoint holds, read from its tensor names and its config alone,
and the one rule that says which module of a model is an MoE layer's router.

`inspect` answers "how many experts, and how many parameters does a token actually use" without
importing transformers or reading a weight. Per-expert tensors (`...experts.<i>.<proj>.weight`, as
transformers writes checkpoints) and fused ones (`...experts.gate_up_proj`, 3-D, experts first)
are both recognised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_PER_EXPERT = re.compile(r"^(?P<layer>.+?)\.experts\.(?P<index>\d+)\.")
_FUSED = re.compile(r"^(?P<layer>.+?)\.experts\.[^.]+$")

# config keys transformers' MoE configs use for "experts per token"
TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k", "num_experts_per_token")


@dataclass(frozen=True)
class ExpertLayer:
    layer: str  # e.g. model.layers.1.mlp
    experts: int
    parameters: int  # all experts of the layer together


@dataclass(frozen=True)
class MoESummary:
    layers: list[ExpertLayer]
    experts_per_token: int | None
    total_parameters: int
    active_parameters: int  # what one token uses: everything but the experts it is not routed to

    def to_dict(self) -> dict[str, Any]:
        return {
            "experts_per_layer": {e.layer: e.experts for e in self.layers},
            "experts_per_token": self.experts_per_token,
            "total_parameters": self.total_parameters,
            "active_parameters": self.active_parameters,
        }


def routers(module: Any) -> list[tuple[str, Any]]:
    """(name, child) of an MoE layer's router(s): the `gate` / `router` (or `...Router`) child of a
    module that also has an `experts` child. One rule for finding the layers to keep in full
    precision (quant/linear_layers.py) and the routers whose choices are counted (quant/coverage.py)."""
    children = dict(module.named_children())
    if "experts" not in children:
        return []
    return [(n, c) for n, c in children.items() if n in ("gate", "router") or "Router" in type(c).__name__]


def config_value(config: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else None
    for source in (config, text or {}):
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def summarize_experts(
    config: Mapping[str, Any], parameters: Mapping[str, tuple[int, tuple[int, ...]]]
) -> MoESummary | None:
    """`parameters`: tensor name -> (logical parameters, shape). None for a model without experts."""
    counts: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    total = 0
    for name, (count, shape) in parameters.items():
        total += count
        per_expert, fused = _PER_EXPERT.match(name), _FUSED.match(name)
        if per_expert:
            layer = per_expert["layer"]
            counts.setdefault(layer, set()).add(int(per_expert["index"]))
        elif fused and len(shape) == 3:
            layer = fused["layer"]
            counts.setdefault(layer, set()).update(range(shape[0]))
        else:
            continue
        sizes[layer] = sizes.get(layer, 0) + count
    if not counts:
        return None
    top_k = config_value(config, TOP_K_KEYS)
    layers = [ExpertLayer(layer, len(counts[layer]), sizes[layer]) for layer in sorted(counts, key=_natural)]
    inactive = sum(e.parameters - e.parameters * min(top_k, e.experts) // e.experts for e in layers) if top_k else 0
    return MoESummary(layers, top_k, total, total - inactive)


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
