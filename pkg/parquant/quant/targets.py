"""Which modules a compressed-tensors `targets` entry names: the rule the loaders apply to config.json.

`Linear` (every linear layer parquant quantizes), `re:` + a pattern `re.match`ed against the module
name, or the exact name: what compressed-tensors' `match_name` does, so a recipe, the written
config and vLLM or transformers agree on each module's scheme.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ALL_LINEAR = "Linear"


def target_matches(module: str, target: str) -> bool:
    if target == ALL_LINEAR:
        return True
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return module == target


def targeted(module: str, targets: Iterable[str]) -> bool:
    return any(target_matches(module, target) for target in targets)


def selected(modules: Iterable[str], targets: Iterable[str]) -> list[str]:
    """The modules any of `targets` names, in their order."""
    wanted = list(targets)
    return [module for module in modules if targeted(module, wanted)]
