"""Quantize under failure: a broken AngelSlim falls back, outputs carry no host paths, inputs stay whole."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parquant.fs import resolve
from parquant.stages.hf_import import import_checkpoint
from parquant.store.reader import ModelReader

from ..conftest import EXAMPLE_MODEL, CliResult, embedded_model_in

Cli = Callable[..., CliResult]
CALIBRATION = EXAMPLE_MODEL.parent / "data" / "calibration.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_model_in(tmp_path_factory.mktemp("recovery"), "tiny", work_dir=True) as model:
        yield str(model)


def test_angelslim_that_does_not_import_falls_back(
    tiny: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Installed (its spec is found) but broken: `import angelslim.engine` fails, as with a wrong
    # transformers version or a missing module.
    monkeypatch.setitem(sys.modules, "angelslim.engine", None)
    result = cli("quantize", tiny, "-o", tmp_path / "q", "--method", "fp8-dynamic")
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "q" / "parquant.json").read_text())
    assert manifest["created_by"]["backend"] == "ptq"
    [fallback] = manifest["created_by"]["fallbacks"]
    assert "AngelSlim failed (angelslim is installed but does not import" in fallback
    assert fallback.endswith("-> ptq fp8-dynamic")
    refused = cli("quantize", tiny, "-o", tmp_path / "r", "--method", "fp8-dynamic", "--no-fallback")
    assert refused.code == 69
    assert "does not import" in refused.err and not (tmp_path / "r").exists()


def test_angelslim_output_records_no_host_paths(tiny: str, tmp_path: Path, cli: Cli) -> None:
    result = cli("quantize", tiny, "-o", tmp_path / "q", "--method", "fp8-dynamic", "--backend", "angelslim")
    assert result.code == 0, result.err
    with ModelReader(resolve(str(tmp_path / "q"))) as reader:
        assert "angelslim_config.json" in reader.file_names()
        config = json.loads(reader.read_file("angelslim_config.json"))
        # The source URL is provenance, and allowed; no other path of this host is.
        texts = {n: reader.read_file(n).decode("utf-8", "replace").replace(tiny, "") for n in reader.file_names()}
    assert config["global_config"]["absolute_model_path"] == tiny
    for host_path in (os.environ["PARQUANT_CACHE_DIR"], os.environ["PARQUANT_WORK_DIR"], "/tmp/"):
        for name, text in texts.items():
            assert host_path not in text, f"{name} mentions {host_path}"
    assert not any(Path(os.environ["PARQUANT_WORK_DIR"]).iterdir())  # the scratch folder is gone


def test_calibration_data_for_a_data_free_method_is_reported(tiny: str, tmp_path: Path, cli: Cli) -> None:
    result = cli("quantize", tiny, "-o", tmp_path / "q", "--method", "int8-weight", "--calibration-data", CALIBRATION)
    assert result.code == 0, result.err
    assert f"calibration data {CALIBRATION} is not used: int8-weight is data-free" in result.err


def test_explicit_backend_is_never_swapped(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from ..conftest import make_checkpoint

    source = make_checkpoint(tmp_path / "hf", "gpt2")
    import_checkpoint(str(source), str(tmp_path / "gpt2"))
    flags = ("--method", "fp8-static", "--backend", "angelslim", "--calibration-data", CALIBRATION)
    # an architecture AngelSlim does not support: no silent move to PTQ fp8-dynamic
    asked = cli("quantize", tmp_path / "gpt2", "-o", tmp_path / "q", *flags)
    assert asked.code == 69 and "--backend angelslim was asked for explicitly" in asked.err
    # AngelSlim that does not import
    monkeypatch.setitem(sys.modules, "angelslim.engine", None)
    llama = make_checkpoint(tmp_path / "hf-llama", "llama")
    import_checkpoint(str(llama), str(tmp_path / "llama"))
    broken = cli("quantize", tmp_path / "llama", "-o", tmp_path / "q", *flags)
    assert broken.code == 69 and "--backend angelslim was asked for explicitly" in broken.err
    assert not (tmp_path / "q").exists()
