"""Reading a user's YAML file (a pipeline spec, a quantization config) within bounds."""

from __future__ import annotations

import os
from typing import Any

import yaml

from .errors import ConfigError, InputNotFoundError

# A pipeline spec or config file is a few KB; the bounds keep a hostile one from costing minutes.
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_NODES = 100_000  # after aliases are expanded ("billion laughs" stays cheap to refuse)


def read_yaml_file(path: str, what: str) -> Any:
    """A YAML file's content; missing file is exit 66, malformed YAML exit 78, both naming `what`.

    Bounded: the file's size, and the number of nodes once every alias is expanded, which is what
    any consumer of the data would walk.
    """
    if not os.path.isfile(path):
        raise InputNotFoundError(f"{what} {path} not found")
    if os.path.getsize(path) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_YAML_BYTES // 1024} KiB: is it the right file?")
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(
                f"{what} {path} expands to more than {MAX_YAML_NODES} values through aliases: write it out plainly"
            )
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits (Python's conversion limit)
        raise ConfigError(
            f"{what} {path} has a value parquant cannot take ({' '.join(str(exc).split())[:120]})"
        ) from None


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document with every alias expanded (aliases share node objects: memoized)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a cycle (not possible in safe YAML, but cheap to guard) counts once
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        if memo[key] > MAX_YAML_NODES:
            memo[key] = MAX_YAML_NODES + 1
    return memo[key]
