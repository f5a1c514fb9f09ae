"""The structure of a parquant checkout, measured from its code: what docs/ARCHITECTURE.md quotes.

    python bench/structure.py [CHECKOUT]          # default: this repository

Prints, as JSON: modules and lines of pkg/parquant, the layers of .importlinter, internal import
edges, the biggest classes by method count, and the quantize path traced through one run of the
built-in PTQ on the embedded model (examples/tiny-llama, int8-weight): how many parquant modules
it passes through, how many times it moves from one module to another, and how many of those
moves return to a module it had already left (a path that goes back and forth between the same
modules is a design whose concerns are interleaved). Run it on two checkouts to compare designs.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import itertools
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

_TRACE = r"""
import sys, json, os
from pathlib import Path
checkout, work = Path(sys.argv[1]), Path(sys.argv[2])
sys.path[:0] = [str(checkout / "pkg")]
from parquant.stages.hf_import import import_checkpoint
from parquant.quant.config import load_config
from parquant.stages.quantize import quantize
import_checkpoint(str(checkout / "examples" / "tiny-llama"), str(work / "model"))
config = load_config(flags={"method": "int8-weight", "backend": "ptq"}, environ={})
quantize(str(work / "model"), str(work / "warm"), config)  # imports and caches warmed up
sequence = []
def profile(frame, event, arg):
    if event == "call":
        name = frame.f_globals.get("__name__", "")
        if name.startswith("parquant."):
            sequence.append([name, frame.f_code.co_name])
sys.setprofile(profile)
quantize(str(work / "model"), str(work / "q"), config)
sys.setprofile(None)
print(json.dumps(sequence))
"""


def _modules(package: Path) -> dict[str, int]:
    return {
        str(path.relative_to(package.parent).with_suffix("")).replace("/", "."): len(path.read_text().splitlines())
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _import_edges(package: Path) -> int:
    """Distinct (module, parquant module it imports) pairs."""
    edges = set()
    for path in package.rglob("*.py"):
        module = str(path.relative_to(package.parent).with_suffix("")).replace("/", ".")
        module = module.removesuffix(".__init__")
        home = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                target = importlib.util.resolve_name(name, home) if node.level else name
                edges.update((module, t) for t in [target] if t.startswith("parquant"))
            elif isinstance(node, ast.Import):
                edges.update((module, a.name) for a in node.names if a.name.startswith("parquant"))
    return len(edges)


def _biggest_classes(package: Path, count: int = 4) -> list[tuple[str, int]]:
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body)
                found.append((f"{path.relative_to(package.parent)}:{node.name}", methods))
    return sorted(found, key=lambda item: -item[1])[:count]


def _layers(checkout: Path) -> int:
    parser = configparser.ConfigParser()
    parser.read(checkout / ".importlinter")
    section = parser["importlinter:contract:layers"]
    return len([line for line in section["layers"].splitlines() if line.strip()])


def _quantize_path(checkout: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run(
            [sys.executable, "-c", _TRACE, str(checkout), work], capture_output=True, text=True, check=True
        )
    calls: list[tuple[str, str]] = [tuple(c) for c in json.loads(done.stdout.strip().splitlines()[-1])]
    writing = next((i for i, (_, function) in enumerate(calls) if function == "write_model"), len(calls))
    orchestration = [c for c in calls[:writing] if not c[0].startswith(_DATA_LAYERS)]
    return {
        "whole run": _moves(calls),
        "planning (until write_model)": _moves(calls[:writing]),
        "planning, data layers left out": _moves(orchestration),
        "method registry lookups by name": sum(function == "get_method" for _, function in calls),
    }


# per-tensor and per-byte work (the manifest's entries, reads, errors): visited in loops by design
_DATA_LAYERS = (
    "parquant.store.",
    "parquant.fs",
    "parquant.errors",
    "parquant.numerics",
    "parquant.prefetch",
    "parquant.progress",
    "parquant.logs",
)


def _moves(calls: list[tuple[str, str]]) -> dict[str, object]:
    sequence = [module for i, (module, _) in enumerate(calls) if i == 0 or calls[i - 1][0] != module]
    left: set[str] = set()
    returns = 0
    for previous, current in itertools.pairwise(sequence):
        left.add(previous)
        if current in left:
            returns += 1
    return {
        "modules": len(set(sequence)),
        "moves": max(0, len(sequence) - 1),
        "returns": returns,
        "most_visited": Counter(sequence).most_common(3),
    }


def measure(checkout: Path) -> dict[str, object]:
    package = checkout / "pkg" / "parquant"
    modules = _modules(package)
    return {
        "checkout": subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "modules": len(modules),
        "lines": sum(modules.values()),
        "layers": _layers(checkout),
        "internal_import_edges": _import_edges(package),
        "biggest_classes": _biggest_classes(package),
        "quantize_path": _quantize_path(checkout),
    }


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE), indent=1))
