"""Every code block of README.md and docs/ runs here, page by page, so an example cannot rot.

A page's blocks run in order in one scratch folder (beside a link to the repo's examples/), so a
tutorial's later steps see what its earlier ones made:
- `sh` blocks made of `parquant ...` commands run in bash; the S3 examples run against the loopback
  S3 server (their placeholder endpoint and bucket swapped for the test server's, the embedded
  model uploaded where they expect a checkpoint);
- `python` blocks run as scripts;
- a `yaml` block of quantization keys (quantize.md) is loaded as a config file (every key must be known);
- blocks of other commands (make, pip, docker, kubectl) are not run, and the test says which: CI
  runs `make demo`/`make test` itself, and the images and Kubernetes have their own tiers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, S3Env, upload_folder

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
# What the S3 examples name, and what the test server has instead.
_EXAMPLE_ENDPOINT = "https://minio.example:9000"
_EXAMPLE_BUCKET = "s3://models/"
_EXAMPLE_CHECKPOINTS = ("llama-3-8b-hf", "tiny-llama-hf")


def _blocks(page: Path) -> list[tuple[str, str]]:
    return [
        (language, body)
        for language, body in _BLOCK.findall(page.read_text())
        if language in ("sh", "python") or (language == "yaml" and page.name == "quantize.md")
    ]


def _commands(body: str) -> list[str]:
    """Shell lines with their `\\` continuations joined and comments dropped."""
    joined = body.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _program(command: str) -> str:
    """The program a shell line runs, past any `NAME=value` environment assignments."""
    words = command.split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    return words[0] if words else ""


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_doc_page_examples_run(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{REPO / 'pkg'}{os.pathsep}{REPO / 'cmd'}",
        "PARQUANT_CACHE_DIR": str(tmp_path / "cache"),
    }
    blocks = _blocks(page)
    s3: S3Env | None = None
    if any("s3://" in body for language, body in blocks if language == "sh"):
        s3 = request.getfixturevalue("s3")
        for prefix in _EXAMPLE_CHECKPOINTS:
            upload_folder(s3, REPO / "examples" / "tiny-llama", prefix)
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    ran, skipped = 0, []
    for number, (language, body) in enumerate(blocks):
        where = f"{page.relative_to(REPO)} block {number}"
        if language == "yaml":
            from parquant.quant.config import load_config

            (tmp_path / "config.yaml").write_text(body)
            load_config(str(tmp_path / "config.yaml"), environ={})
        elif language == "python":
            (tmp_path / "example.py").write_text(body)
            done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{where}:\n{done.stderr[-3000:]}"
        else:
            commands = _commands(body)
            others = sorted({_program(c) for c in commands if _program(c) != "parquant"})
            if others:
                skipped.append(f"{where} ({', '.join(others)})")
                continue
            for command in commands:
                if s3 is not None:
                    command = command.replace(_EXAMPLE_ENDPOINT, s3.endpoint)
                    command = command.replace(_EXAMPLE_BUCKET, f"s3://{s3.bucket}/")
                done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
                assert done.returncode == 0, f"{where}: `{command}` exited {done.returncode}:\n{done.stderr[-3000:]}"
        ran += 1
    if not ran:
        pytest.skip(
            f"nothing to run here; not run: {'; '.join(skipped)} (CI runs make itself; images, Kubernetes: tiers)"
        )
