"""Every code block of README.md and docs/ runs here, so an example cannot rot.

- `sh` blocks made of `parquant ...` commands run in a scratch folder beside the repo's examples/;
  an S3 example runs against the loopback S3 server (its placeholder endpoint and bucket swapped
  for the test server's).
- `python` blocks run as scripts in the same kind of folder.
- a `yaml` block of quantization keys is loaded as a config file (every key must be known).
- blocks of other commands (make, pip, docker, kubectl) are skipped with the reason; `make demo` and
  `make test` are what CI itself runs, the images and Kubernetes have their own tiers.
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
# What the S3 example of the README names, and what the test server has instead.
_EXAMPLE_ENDPOINT = "https://minio.example:9000"
_EXAMPLE_BUCKET = "s3://models/"


def _blocks() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for index, (language, body) in enumerate(_BLOCK.findall(page.read_text())):
            if language in ("sh", "python") or (language == "yaml" and page.name == "quantize.md"):
                found.append((f"{page.relative_to(REPO)}#{index}", language, body))
    return found


def _commands(body: str) -> list[str]:
    """Shell lines with their `\\` continuations joined and comments dropped."""
    joined = body.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _scratch(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{REPO / 'pkg'}{os.pathsep}{REPO / 'cmd'}",
        "PARQUANT_CACHE_DIR": str(tmp_path / "cache"),
    }


@pytest.mark.parametrize(("where", "language", "body"), _blocks(), ids=[b[0] for b in _blocks()])
def test_doc_block_runs(where: str, language: str, body: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = _scratch(tmp_path)
    if language == "yaml":
        from parquant.quant.config import load_config

        (tmp_path / "config.yaml").write_text(body)
        load_config(str(tmp_path / "config.yaml"), environ={})
        return
    if language == "python":
        (tmp_path / "example.py").write_text(body)
        done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{where}:\n{done.stderr[-3000:]}"
        return
    commands = _commands(body)
    others = sorted({c.split()[0] for c in commands if not c.startswith("parquant ")})
    if others:
        pytest.skip(
            f"{where} runs {', '.join(others)}: CI runs make demo/test itself; images and Kubernetes have tiers"
        )
    if "s3://" in body:
        s3: S3Env = request.getfixturevalue("s3")
        upload_folder(s3, REPO / "examples" / "tiny-llama", "llama-3-8b-hf")
        commands = [
            c.replace(_EXAMPLE_ENDPOINT, s3.endpoint).replace(_EXAMPLE_BUCKET, f"s3://{s3.bucket}/") for c in commands
        ]
        env.update({k: os.environ[k] for k in os.environ if k.startswith("AWS_")})
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{where}: `{command}` exited {done.returncode}:\n{done.stderr[-3000:]}"
