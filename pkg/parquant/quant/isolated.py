"""Answers that need transformers-sized imports, computed once in a short-lived child and cached.

Importing transformers (directly, or through compressed-tensors) costs a streaming stage 3-6 s
and ~120 MB of resident memory it never gives back (measured: the built-in PTQ of a 0.5 GB model
took 8.7 s, 3.5 s of it importing compressed-tensors, and peaked at 595 MB). Some of what the
streaming stages need from those libraries is a pure function of a small JSON input (which modules
of an architecture are nn.Linear; the quantization_config block the library builds), so a child
process computes it once and the answer is kept in parquant's cache, keyed by the input and the
versions of the libraries that made it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import InternalError, UnavailableError

_CHILD = """
import importlib, json, sys
from parquant.errors import ParquantError
module, function = sys.argv[1].rsplit(".", 1)
try:
    print(json.dumps({"answer": getattr(importlib.import_module(module), function)(*json.load(sys.stdin))}))
except ParquantError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def isolated_call(function: str, arguments: list[Any], libraries: tuple[str, ...]) -> Any:
    """`function(*arguments)` (a dotted name; JSON in, JSON out), from the cache or a child process.

    `libraries`: the distributions whose versions the answer depends on (part of the cache key)."""
    return json.loads(_cached(function, json.dumps(arguments, sort_keys=True), libraries))


@functools.lru_cache(maxsize=64)
def _cached(function: str, arguments: str, libraries: tuple[str, ...]) -> str:
    from ..cache import cache_dir

    versions = [_version(name) for name in libraries]
    key = hashlib.sha256(json.dumps([function, arguments, versions]).encode()).hexdigest()[:32]
    cached = cache_dir() / "isolated" / f"{key}.json"
    if cached.exists():
        return cached.read_text()
    answer = json.dumps(_ask_child(function, arguments))
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.part")
    partial.write_text(answer)
    partial.replace(cached)
    return answer


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _ask_child(function: str, arguments: str) -> Any:
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, function], input=arguments, capture_output=True, text=True, env=env
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise InternalError(f"{function} failed in its child process: {done.stderr.strip()[-300:]}")
    answer = json.loads(lines[-1])
    if "error" in answer:
        raise UnavailableError(answer["error"])
    return answer["answer"]
