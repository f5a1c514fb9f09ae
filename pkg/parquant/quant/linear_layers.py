"""Which tensors of a checkpoint are weights of `nn.Linear` layers, and which of those to skip.

Name heuristics break on real models (GPT-2 uses Conv1D, some models tie or fuse layers), so the
model is instantiated from its config on the meta device (no memory, no weights) and its modules
are asked directly. trust_remote_code stays off: an architecture transformers does not ship is
refused.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import InternalError, UnavailableError


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


_CHILD = """
import json, sys
from parquant.errors import ParquantError
from parquant.quant.linear_layers import linear_modules
try:
    print(json.dumps({"modules": sorted(linear_modules(json.load(sys.stdin)))}))
except ParquantError as exc:
    print(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
"""


@functools.lru_cache(maxsize=32)
def _isolated(config_json: str) -> frozenset[str]:
    """Asks a child once per architecture config; the answer is cached on disk (it never changes)."""
    from ..cache import cache_dir

    cached = cache_dir() / "layouts" / f"{hashlib.sha256(config_json.encode()).hexdigest()[:32]}.json"
    if cached.exists():
        return frozenset(json.loads(cached.read_text()))
    modules = _ask_child(config_json)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".part")
    partial.write_text(json.dumps(sorted(modules)))
    partial.replace(cached)
    return modules


def _ask_child(config_json: str) -> frozenset[str]:
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _CHILD], input=config_json, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise InternalError(f"inspecting the architecture failed: {done.stderr.strip()[-300:]}")
    answer = json.loads(lines[-1])
    if "error" in answer:
        raise UnavailableError(answer["error"])
    return frozenset(answer["modules"])


def linear_modules_isolated(config: dict[str, Any]) -> set[str]:
    """`linear_modules` in a short-lived child process.

    Importing transformers costs ~120 MB of resident memory that a streaming stage never gives
    back; asking a child keeps the quantizing process at torch's footprint (peak RSS budget).
    """
    return set(_isolated(json.dumps(config, sort_keys=True)))


def is_ignored(module: str, patterns: list[str]) -> bool:
    """A pattern matches a module by glob (`*.down_proj`), exact name, or trailing name (`lm_head`)."""
    return any(
        fnmatch.fnmatchcase(module, pattern) or module == pattern or module.endswith("." + pattern)
        for pattern in patterns
    )
