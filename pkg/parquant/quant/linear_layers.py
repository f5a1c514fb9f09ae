"""Which tensors of a checkpoint are weights a method quantizes, and which of those to skip.

Name heuristics break on real models (GPT-2 uses Conv1D, some models tie or fuse layers), so the
model is instantiated from its config on the meta device (no memory, no weights) and its modules
are asked directly. trust_remote_code stays off: an architecture transformers does not ship is
refused.

Mixture-of-experts models need one more step. transformers 5 holds a layer's experts fused (one
3-D parameter such as `mlp.experts.gate_up_proj`, no `nn.Linear`), but writes checkpoints in the
original per-expert layout (`mlp.experts.0.gate_proj.weight`, or Mixtral's
`block_sparse_moe.experts.0.w1.weight`). transformers' own reverse conversion, run on the meta
parameters, gives the names a checkpoint stores: the experts are found by what transformers does,
not by a table of names that the next architecture breaks.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from ..errors import UnavailableError
from ..moe import routers

LINEAR = "linear"
EXPERT = "expert"
ROUTER = "router"
FUSED_EXPERT = "fused_expert"  # a 3-D experts tensor stored as such (names without `.weight`)
ROLES = (LINEAR, EXPERT, ROUTER, FUSED_EXPERT)


@dataclass(frozen=True)
class ModelLayers:
    """The modules whose `.weight` a method may quantize, by role (checkpoint names), and the fused
    3-D expert tensors a checkpoint may hold instead of per-expert weights."""

    linear: frozenset[str]
    experts: frozenset[str]
    routers: frozenset[str]
    fused_experts: frozenset[str]  # full tensor names, e.g. model.layers.0.mlp.experts.gate_up_proj

    @property
    def candidates(self) -> frozenset[str]:
        return self.linear | self.experts | self.routers

    @classmethod
    def from_answer(cls, answer: dict[str, list[str]]) -> ModelLayers:
        return cls(*(frozenset(answer.get(role, ())) for role in ROLES))


def plain_config(config: dict[str, Any]) -> Any:
    """A transformers config of the architecture alone (no quantization_config): the float model."""
    from transformers import AutoConfig

    settings = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
    return AutoConfig.for_model(str(config.get("model_type")), **settings)


def meta_model(config: dict[str, Any]) -> Any:
    """The causal LM of `config` on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = str(config.get("model_type"))
    if model_type not in CONFIG_MAPPING:
        raise UnavailableError(
            f"unsupported architecture {model_type!r}: transformers does not ship it and parquant does not run "
            "remote code"
        )
    hf_config = plain_config(config)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise UnavailableError(f"unsupported architecture {model_type!r} for causal LM quantization ({exc})") from None


def _is_experts(module: Any) -> bool:
    """A fused experts module: transformers 5 names these classes `...Experts` and gives them 3-D weights."""
    return type(module).__name__.endswith("Experts") and any(p.ndim == 3 for p in module.parameters(recurse=False))


def layer_roles(config: dict[str, Any]) -> dict[str, list[str]]:
    """{role: sorted checkpoint module names} (see ModelLayers); JSON, as the isolated child answers."""
    import torch

    model = meta_model(config)
    roles: dict[str, set[str]] = {role: set() for role in ROLES}
    in_memory: dict[str, tuple[str, Any]] = {}
    for name, module in model.named_modules():
        if _is_experts(module):
            for pname, param in module.named_parameters(recurse=False):
                if param.ndim == 3:
                    in_memory[f"{name}.{pname}"] = (EXPERT, param)
                    roles[FUSED_EXPERT].add(f"{name}.{pname}")
        for cname, child in routers(module):
            weight = getattr(child, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim == 2:
                in_memory[f"{name}.{cname}.weight" if name else f"{cname}.weight"] = (ROUTER, weight)
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" not in in_memory:
            in_memory[f"{name}.weight"] = (LINEAR, module.weight)
    for key, (role, tensor) in in_memory.items():
        if role in (LINEAR, ROUTER):
            roles[role].add(key.removesuffix(".weight"))  # the in-memory name, for checkpoints saved that way
        for saved, value in _saved_names(model, key, tensor).items():
            if saved.endswith(".weight") and value.ndim == 2:
                roles[role].add(saved.removesuffix(".weight"))
    return {role: sorted(names) for role, names in roles.items()}


def _saved_names(model: Any, key: str, tensor: Any) -> dict[str, Any]:
    """The tensors a checkpoint stores for the in-memory parameter `key` (transformers' reverse
    conversion; meta tensors, so no memory is touched)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without weight conversions stores parameters as they are
        return {key: tensor}
    try:
        return dict(revert_weight_conversion(model, {key: tensor}))
    except Exception:  # a conversion that needs its sibling tensors: the in-memory name is all we know
        return {key: tensor}


def model_layers(config: dict[str, Any]) -> ModelLayers:
    """`layer_roles` answered by a short-lived child process, once per architecture config.

    Importing transformers costs ~120 MB of resident memory that a streaming stage never gives
    back; asking a child keeps the quantizing process at torch's footprint (peak RSS budget).
    """
    from .isolated import isolated_call

    return ModelLayers.from_answer(
        isolated_call("parquant.quant.linear_layers.layer_roles", [config], ("transformers",))
    )


def is_ignored(module: str, patterns: list[str]) -> bool:
    """A pattern matches a module by glob (`*.down_proj`), exact name, or trailing name (`lm_head`)."""
    return any(
        fnmatch.fnmatchcase(module, pattern) or module == pattern or module.endswith("." + pattern)
        for pattern in patterns
    )
