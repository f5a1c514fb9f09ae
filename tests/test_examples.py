"""The examples under examples/ run as documented: the Python API script, every config key, a batch pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from parquant.quant.config import load_config

from .conftest import REPO, CliResult

EXAMPLES = REPO / "examples"
Cli = Callable[..., CliResult]


def test_basic_quantization_through_the_python_api(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}", "PARQUANT_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quantize_basic.py"), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PASSED" in done.stdout
    config = json.loads((tmp_path / "work" / "int8-hf" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "int-quantized"


def test_the_advanced_config_uses_every_key_and_yields_to_the_environment(tmp_path: Path, cli: Cli) -> None:
    path = str(EXAMPLES / "configs" / "advanced.yaml")
    config = load_config(path, environ={})
    assert (config.method, config.group_size, config.calibration.num_samples) == ("int4-rtn", 128, 32)
    overridden = load_config(path, environ={"PARQUANT_GROUP_SIZE": "64"})
    assert overridden.group_size == 64
    flagged = load_config(path, flags={"group_size": 32}, environ={"PARQUANT_GROUP_SIZE": "64"})
    assert flagged.group_size == 32
    written = set((EXAMPLES / "configs" / "advanced.yaml").read_text().split())
    for key in ("method:", "backend:", "group_size:", "ignore:", "device:", "fallback:", "calibration:", "angelslim:"):
        assert key in written, f"examples/configs/advanced.yaml lacks {key}"
    # and a real run with it, the environment overriding the file
    cli("import", EXAMPLES / "tiny-llama", "-o", tmp_path / "m")
    os.environ["PARQUANT_GROUP_SIZE"] = "64"
    try:
        result = cli("quantize", tmp_path / "m", "-o", tmp_path / "q", "--config", path)
    finally:
        del os.environ["PARQUANT_GROUP_SIZE"]
    assert result.code == 0, result.err
    from parquant.fs import resolve
    from parquant.store.reader import ModelReader

    with ModelReader(resolve(str(tmp_path / "q"))) as reader:
        assert reader.config()["quantization_config"]["group_size"] == 64


def test_the_batch_pipeline_runs_every_model_locally(tmp_path: Path, cli: Cli) -> None:
    spec = (EXAMPLES / "pipelines" / "batch.yaml").read_text().replace("out/pipeline-batch", str(tmp_path / "b"))
    spec = spec.replace("examples/", f"{EXAMPLES}/")
    (tmp_path / "batch.yaml").write_text(spec)
    result = cli("pipeline", tmp_path / "batch.yaml", "--state-dir", tmp_path / "state")
    assert result.code == 0, result.err
    summary = json.loads(result.out.strip().splitlines()[-1])
    assert [s["status"] for s in summary["stages"]] == ["done"] * 7
    report = (tmp_path / "b" / "report" / "report.md").read_text()
    assert "int8-weight" in report and "int4-rtn" in report
    # each quantized model's quantize time comes from its manifest, through the validate results
    rows = json.loads((tmp_path / "b" / "report" / "report.json").read_text())["rows"]
    assert [row["quantize_seconds"] > 0 for row in rows] == [True, True]
