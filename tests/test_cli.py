"""The command line: help texts, usage errors (exit 64), JSON output, exit-code mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import EXAMPLE_MODEL, REPO, CliResult

Cli = Callable[..., CliResult]


def test_top_level_help_lists_stages_and_exit_codes(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for word in ("import", "export", "inspect", "73", "output exists"):
        assert word in result.out


@pytest.mark.parametrize("stage", ["import", "export", "inspect"])
def test_stage_help(stage: str, cli: Cli) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(stage, "--help")
    assert exit_info.value.code == 0


def test_usage_errors_exit_64(cli: Cli, tmp_path: Path) -> None:
    assert cli().code == 64
    unknown = cli("frobnicate")
    assert unknown.code == 64 and "unknown stage 'frobnicate'" in unknown.err
    missing = cli("import", tmp_path)
    assert missing.code == 64 and "--output" in missing.err
    bad_size = cli("import", tmp_path, "-o", tmp_path / "x", "--chunk-size", "lots")
    assert bad_size.code == 64 and "not a size" in bad_size.err
    too_big = cli("import", tmp_path, "-o", tmp_path / "x", "--chunk-size", "65MiB")
    assert too_big.code == 64 and "--chunk-size" in too_big.err
    bad_option = cli("inspect", tmp_path, "--storage-option", "novalue")
    assert bad_option.code == 64 and "KEY=VALUE" in bad_option.err


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.code == 0 and result.out.startswith("parquant ")


def test_inspect_text_and_json(checkpoint: Path, tmp_path: Path, cli: Cli) -> None:
    assert cli("import", checkpoint, "-o", tmp_path / "pq", "--log-format", "text", "--quiet").code == 0
    text = cli("inspect", tmp_path / "pq")
    assert text.code == 0
    assert "LlamaForCausalLM" in text.out and "quantization none" in text.out
    summary = json.loads(cli("inspect", tmp_path / "pq", "--json").out)
    assert summary["parameters"] == sum(
        t["nbytes"] // 4 for t in summary["tensors"]
    )  # float32 checkpoint: 4 bytes a parameter
    assert summary["format_version"] == "2.1" and summary["created_by"]["stage"] == "import"


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    env = {"PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "parquant_cli", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 66
    assert done.stderr.count("\n") == 1 and "not found" in done.stderr


def test_typos_get_a_suggestion_in_the_requested_log_format(cli: Callable[..., CliResult]) -> None:
    option = cli("quantize", "m", "-o", "q", "--methd", "int8-weight", "--log-format", "text")
    assert option.code == 64
    assert option.err.startswith("parquant: error:") and "did you mean --method?" in option.err
    stage = cli("quantise", "m")
    assert stage.code == 64 and "did you mean quantize?" in stage.err


def test_every_option_of_every_stage_has_help() -> None:
    from parquant_cli.main import STAGES, _Parser

    missing = []
    for name, stage in STAGES.items():
        parser = _Parser(stage.options, prog=f"parquant {name}")
        missing += [f"{name} {a.option_strings or a.dest}" for a in parser._actions if not (a.help or "").strip()]
    assert missing == []


def test_progress_lines_give_no_eta_before_one_percent(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from parquant.progress import ProgressEvent
    from parquant_cli.reporting import _LineProgress

    parent = logging.getLogger("parquant")  # whatever an earlier CLI run configured
    monkeypatch.setattr(parent, "handlers", [])
    monkeypatch.setattr(parent, "propagate", True)
    caplog.set_level(logging.INFO, logger="parquant.progress")
    progress = _LineProgress(every_seconds=0)
    progress(ProgressEvent("write", "README.md", 1, 26, 20, 24 * 2**20))
    progress(ProgressEvent("write", "w.13", 13, 26, 12 * 2**20, 24 * 2**20))
    etas = [record.fields["eta_s"] for record in caplog.records]  # type: ignore[attr-defined]
    assert etas[0] is None and etas[1] is not None and etas[1] >= 0


def test_option_defaults_are_the_librarys() -> None:
    """The stage options (CLI, pipeline specs) and the library default to the same layout."""
    from parquant.hf import DEFAULT_EXPORT_SHARD_BYTES
    from parquant.stages.options import ExportOptions, ImportOptions
    from parquant.store.writer import WriteOptions

    options = ImportOptions(source="s", output="o")
    written = WriteOptions()
    assert (options.format_version, options.chunk_size, options.shard_size, options.compression) == (
        written.version,
        written.chunk_bytes,
        written.shard_bytes,
        written.compression,
    )
    assert ExportOptions(model="m", output="o").max_shard_size == DEFAULT_EXPORT_SHARD_BYTES


def test_every_stage_help_shows_examples_that_parse() -> None:
    """`parquant <stage> --help` ends with examples; each one is a valid command line."""
    import shlex

    from parquant_cli.main import STAGES, _parser, stage_help

    for name, stage in STAGES.items():
        assert stage.examples and "examples:" in stage_help(name), name
        for example in stage.examples:
            words = shlex.split(example)
            assert words[:2] == ["parquant", name]
            _parser(name).parse_args(words[2:])  # a bad flag would raise UsageError (64)


@pytest.mark.parametrize("url", ["gs://bucket/m", "az://container/m", "https://host/m"])
def test_a_storage_protocol_without_a_store_is_refused_up_front(url: str, cli: Callable[..., CliResult]) -> None:
    """Was: memory:// reached S3-only lock code and exited 70 (AttributeError; it is a store of its own
    now: tests/storage), gs:// said ImportError."""
    for args in (("import", EXAMPLE_MODEL, "-o", url), ("inspect", url)):
        result = cli(*args)
        assert result.code == 64, result.err
        assert "parquant reads and writes local paths, s3:// and memory:// URLs, not" in result.err
