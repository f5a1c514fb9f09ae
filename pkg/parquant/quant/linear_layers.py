"""Which tensors of a checkpoint are weights of `nn.Linear` layers, and which of those to skip.

Name heuristics break on real models (GPT-2 uses Conv1D, some models tie or fuse layers), so the
model is instantiated from its config on the meta device (no memory, no weights) and its modules
are asked directly. trust_remote_code stays off: an architecture transformers does not ship is
refused.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from ..errors import UnavailableError


def plain_config(config: dict[str, Any]) -> Any:
    """A transformers config of the architecture alone (no quantization_config): the float model."""
    from transformers import AutoConfig

    settings = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
    return AutoConfig.for_model(str(config.get("model_type")), **settings)


def linear_modules(config: dict[str, Any]) -> set[str]:
    """Names of the model's nn.Linear modules (e.g. `model.layers.0.mlp.down_proj`, `lm_head`)."""
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
            model = AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise UnavailableError(f"unsupported architecture {model_type!r} for causal LM quantization ({exc})") from None
    return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def linear_module_list(config: dict[str, Any]) -> list[str]:
    """`linear_modules`, sorted, as JSON can carry it (what the isolated child answers)."""
    return sorted(linear_modules(config))


def linear_modules_isolated(config: dict[str, Any]) -> set[str]:
    """`linear_modules` answered by a short-lived child process, once per architecture config.

    Importing transformers costs ~120 MB of resident memory that a streaming stage never gives
    back; asking a child keeps the quantizing process at torch's footprint (peak RSS budget).
    """
    from .isolated import isolated_call

    answer = isolated_call("parquant.quant.linear_layers.linear_module_list", [config], ("transformers",))
    return set(answer)


def is_ignored(module: str, patterns: list[str]) -> bool:
    """A pattern matches a module by glob (`*.down_proj`), exact name, or trailing name (`lm_head`)."""
    return any(
        fnmatch.fnmatchcase(module, pattern) or module == pattern or module.endswith("." + pattern)
        for pattern in patterns
    )
