"""Expert coverage: how many calibration tokens each expert of an MoE model received.

A calibrated method (FP8-static, GPTQ, AWQ...) learns each expert's activation statistics from the
tokens the router sends it. An expert the calibration set never reaches gets no statistics: an
activation scale of zero (or NaN), which a serving engine divides by. parquant counts the routing
with forward hooks on the routers while the float model reads the calibration batches (the same
batches, same forward call as AngelSlim's own calibration pass), reports every expert that got no
token, and repairs what such an expert would otherwise carry (see `repair_scales`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..moe import routers

log = logging.getLogger("parquant")


@dataclass
class ExpertCoverage:
    """Per MoE layer (the module holding router and experts, e.g. `model.layers.1.mlp`): the
    calibration tokens each expert received."""

    tokens: dict[str, list[int]] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)  # scale tensors replaced (see repair_scales)

    @property
    def uncovered(self) -> list[tuple[str, int]]:
        """(layer, expert) pairs that received no calibration token."""
        return [(layer, e) for layer, counts in self.tokens.items() for e, n in enumerate(counts) if n == 0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "uncovered": [f"{layer}.experts.{e}" for layer, e in self.uncovered],
            "repaired": self.repaired,
        }


def _routers(model: Any) -> dict[str, tuple[Any, int]]:
    """{MoE layer name: (its router, number of experts)} (the router as moe.routers finds it)."""
    found: dict[str, tuple[Any, int]] = {}
    for name, module in model.named_modules():
        for _, router in routers(module):
            weight = getattr(router, "weight", None)
            found[name] = (router, int(weight.shape[0]) if weight is not None else 0)
    return found


def _selected(output: Any, top_k: int) -> Any:
    """The expert indices a router chose, from what its forward returned: transformers 5's routers
    return (logits, scores, indices); older ones return the logits only (top-k of them)."""
    import torch

    if isinstance(output, tuple):
        indices = output[-1]
        if isinstance(indices, torch.Tensor) and not indices.is_floating_point():
            return indices
        output = output[0]
    return torch.topk(output, top_k, dim=-1).indices


def count_routing(model: Any, batches: Iterable[Mapping[str, Any]], top_k: int) -> ExpertCoverage:
    """Run `model` on each batch (`input_ids`, `attention_mask`) and count, per router, the real
    (unpadded) tokens routed to each expert."""
    import torch

    routers = _routers(model)
    coverage = ExpertCoverage({name: [0] * experts for name, (_, experts) in routers.items()})
    keep: list[Any] = [None]  # the current batch's real-token mask, flattened

    def hook(name: str) -> Any:
        def count(_module: Any, _inputs: Any, output: Any) -> None:
            chosen = _selected(output, top_k).reshape(-1, top_k if top_k else 1)
            if keep[0] is not None and chosen.shape[0] == keep[0].shape[0]:
                chosen = chosen[keep[0]]
            counts = torch.bincount(chosen.reshape(-1).cpu(), minlength=len(coverage.tokens[name]))
            coverage.tokens[name] = [a + int(b) for a, b in zip(coverage.tokens[name], counts.tolist(), strict=False)]

        return count

    handles = [module.register_forward_hook(hook(name)) for name, (module, _) in routers.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                ids = batch["input_ids"]
                mask = batch.get("attention_mask")
                keep[0] = mask.reshape(-1).bool().cpu() if mask is not None else None
                model(ids.to(model.device))
    finally:
        for handle in handles:
            handle.remove()
    return coverage


def repair_scales(folder: Path, coverage: ExpertCoverage) -> list[str]:
    """Give each expert scale tensor that is zero, NaN or Inf, and each activation scale of an
    expert no real calibration token reached (it saw padding at most), the largest value the same
    projection has in the layer's other experts, in the safetensors files of `folder` (rewritten
    in place, before parquant imports them). A scale that large keeps every value such an expert
    may see in range: it trades a little precision on a rarely used expert for no overflow and no
    division by zero. Returns the tensors repaired."""
    import re

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    pattern = re.compile(r"^(?P<layer>.+)\.experts\.(?P<index>\d+)\.(?P<proj>[^.]+)\.(?P<kind>\w*scale\w*)$")
    repaired: list[str] = []
    uncovered: dict[str, set[int]] = {}
    for layer, expert in coverage.uncovered:
        uncovered.setdefault(layer, set()).add(expert)
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata()
        groups: dict[tuple[str, str, str], list[str]] = {}
        for name in tensors:
            match = pattern.match(name)
            if match and tensors[name].is_floating_point():
                groups.setdefault((match["layer"], match["proj"], match["kind"]), []).append(name)
        changed = False
        for (layer, _proj, kind), names in groups.items():
            unreached = uncovered.get(layer, set()) if kind.startswith("input") else set()
            bad = [n for n in names if _unusable(tensors[n]) or _index(n) in unreached]
            good = [tensors[n].float() for n in names if n not in bad]
            if not bad or not good:
                continue
            stand_in = torch.stack([g.reshape(-1).max() for g in good]).max()
            for name in bad:
                tensors[name] = torch.full_like(tensors[name], float(stand_in))
                repaired.append(name)
                changed = True
        if changed:
            save_file(tensors, str(path), metadata=metadata)
    coverage.repaired = sorted(repaired)
    for name in coverage.repaired:
        log.warning("%s was zero/NaN/Inf (no calibration token reached the expert): set from its siblings", name)
    return coverage.repaired


def _index(name: str) -> int:
    return int(name.split(".experts.", 1)[1].split(".", 1)[0])


def _unusable(tensor: Any) -> bool:
    import torch

    values = tensor.float()
    return bool((~torch.isfinite(values)).any() or (values == 0).all())
