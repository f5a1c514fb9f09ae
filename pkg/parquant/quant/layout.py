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


def linear_modules(config: dict[str, Any]) -> set[str]:
    """Names of the model's nn.Linear modules (e.g. `model.layers.0.mlp.down_proj`, `lm_head`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = str(config.get("model_type"))
    if model_type not in CONFIG_MAPPING:
        raise UnavailableError(
            f"unsupported architecture {model_type!r}: transformers does not ship it and parquant does not run "
            "remote code"
        )
    settings = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
    hf_config = AutoConfig.for_model(model_type, **settings)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise UnavailableError(f"unsupported architecture {model_type!r} for causal LM quantization ({exc})") from None
    return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def is_ignored(module: str, patterns: list[str]) -> bool:
    """A pattern matches a module by glob (`*.down_proj`), exact name, or trailing name (`lm_head`)."""
    return any(
        fnmatch.fnmatchcase(module, pattern) or module == pattern or module.endswith("." + pattern)
        for pattern in patterns
    )
