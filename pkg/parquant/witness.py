"""What a stage's inputs and output are now, so that a pipeline rerun skips a stage only when
nothing it read or wrote has changed since it ran.

A pipeline's state file alone cannot say a stage is done: an input changed in place, or an output
deleted or damaged, leaves the file as it was. So the state records, beside each finished stage,
the identity of every path the stage read and of the output it wrote, and a rerun compares them
with what is there now:

- a parquant model folder: its manifest's digest (every tensor's CRC is in it), and only while the
  manifest parses and checks and every shard it names is there;
- any other folder (an HF checkpoint, a report): each file's name and storage version (size, mtime,
  ctime and inode locally; the ETag on S3), hidden files left out (locks, staging);
- a file: its storage version.

Nothing is read but listings, a manifest and small metadata, so the check costs what a listing does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import ParquantError
from .fs import Location, resolve, storage_errors
from .hf import version_token
from .store.manifest import Manifest
from .store.schema import MANIFEST_NAME

MISSING = "missing"

# The options of each stage that name what it reads, and the option that names what it writes.
STAGE_PATHS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "import": (("source",), "output"),
    "export": (("model",), "output"),
    "inspect": (("model",), None),
    "quantize": (("model", "calibration_data", "config", "recipe", "eval_text"), "output"),
    "validate": (("reference", "candidate", "eval_text"), "output"),
    "benchmark": (("model",), "output"),
    "report": (("results",), "output"),
}


def stage_witness(stage: str, params: Mapping[str, Any], storage_options: Mapping[str, str]) -> dict[str, Any]:
    """{"inputs": {url: identity}, "output": identity or None}: what a finished stage leaves
    recorded, and what a rerun compares with."""
    inputs, output = STAGE_PATHS.get(stage, ((), None))
    urls = [str(u) for key in inputs for u in _as_list(params.get(key))]
    target = params.get(output) if output else None
    return {
        "inputs": {url: identity(url, storage_options) for url in urls},
        "output": identity(str(target), storage_options) if target else None,
    }


def changed(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """Why a recorded stage is not done any more (a line for the log), or None when it still is."""
    if now.get("output") == MISSING:
        return "its output is missing"
    if now.get("output") != recorded.get("output"):
        return "its output changed or no longer verifies since it ran"
    for url, identity_now in now.get("inputs", {}).items():
        if recorded.get("inputs", {}).get(url) != identity_now:
            return f"its input {url} changed since it ran"
    return None


def identity(url: str, storage_options: Mapping[str, str]) -> str:
    location = resolve(url, storage_options)
    with storage_errors(location.url):
        if not location.fs.exists(location.path):
            return MISSING
        if not location.fs.isdir(location.path):
            return "file:" + version_token(location)
    sizes = location.file_sizes()
    visible = sorted(n for n in sizes if not any(part.startswith(".") for part in n.split("/")))
    if MANIFEST_NAME in visible:
        return _model_identity(location, sizes)
    listing = [(name, version_token(location.child(name))) for name in visible]
    return "folder:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _model_identity(location: Location, sizes: Mapping[str, int]) -> str:
    manifest_location = location.child(MANIFEST_NAME)
    try:
        manifest = Manifest.from_json(manifest_location.read_bytes(), manifest_location.url)
    except ParquantError as exc:
        return f"unverified: {exc.message}"
    problem = manifest.shard_problem(sizes)
    return f"unverified: {problem}" if problem else "parquant:" + manifest.digest()


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
