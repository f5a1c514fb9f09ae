"""A checkpoint's config.json, parsed within bounds.

It comes from the user's checkpoint, so it is input like any other: a file nested thousands of
levels deep parses (or not) only to exhaust the stack later, in transformers or in a copy of the
dict, where it surfaces as an internal error. Real configs are a few levels deep; anything past
MAX_CONFIG_DEPTH is refused when the model is imported or read (65).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInputError

MAX_CONFIG_DEPTH = 64


def parse_config(data: bytes | str, where: str) -> dict[str, Any]:
    """config.json's object ({} when it holds another JSON value); 65 naming `where` otherwise."""
    try:
        loaded = json.loads(data)
    except RecursionError:
        raise InvalidInputError(
            f"{where} is nested too deeply to be a model config: fix or replace config.json"
        ) from None
    except (UnicodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise InvalidInputError(f"{where} is not valid JSON ({reason}): fix or replace config.json") from None
    if _depth(loaded) > MAX_CONFIG_DEPTH:
        raise InvalidInputError(
            f"{where} is nested more than {MAX_CONFIG_DEPTH} levels deep, which no model config is: "
            "fix or replace config.json"
        )
    try:
        json.dumps(loaded, ensure_ascii=False).encode()
    except UnicodeError:
        raise InvalidInputError(f"{where} holds a lone surrogate (\\ud800-style escape): fix config.json") from None
    return loaded if isinstance(loaded, dict) else {}


def _depth(value: Any) -> int:
    """Nesting depth, walked without recursion (the value may be arbitrarily deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > MAX_CONFIG_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest
