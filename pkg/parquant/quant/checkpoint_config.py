"""config.json's `quantization_config`, derived from the recipe a run carried out.

compressed-tensors recipes get one `config_groups` entry per distinct scheme (groups that share a
scheme share an entry, their targets joined), built by the library itself; the GPTQ-format
presets (int4-rtn, int4-rtn-asym) get the GPTQ v1 block their layout needs.
"""

from __future__ import annotations

from typing import Any

from .formats import compressed_tensors, gptq
from .recipe import Recipe


def config_block(recipe: Recipe, ignore: list[str]) -> dict[str, Any]:
    """The block for a recipe's output; `ignore` names every linear layer left in full precision."""
    if recipe.checkpoint_format == gptq.NAME:
        scheme = recipe.single
        return gptq.config_block(scheme.bits, scheme.group_size or 128, scheme.symmetric, ignore, recipe.name)
    if recipe.checkpoint_format != compressed_tensors.NAME:
        raise ValueError(f"parquant writes no {recipe.checkpoint_format} config block")
    groups: list[tuple[list[str], dict[str, Any]]] = []
    for scheme in recipe.schemes:
        targets = [t for group in recipe.groups if group.scheme == scheme for t in group.targets]
        groups.append((list(dict.fromkeys(targets)), scheme.fields()))
    return compressed_tensors.config_block(groups, ignore)
