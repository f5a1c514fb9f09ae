"""Bad input is never a traceback: each case exits with its documented code and one line."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parquant.errors import InvalidInputError

from ..conftest import CliResult, S3Env, make_checkpoint

Cli = Callable[..., CliResult]


def _assert_one_line(result: CliResult, code: int) -> str:
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.err
    return errors[0]


@pytest.fixture
def model(tmp_path: Path, cli: Cli) -> Path:
    assert cli("import", make_checkpoint(tmp_path / "hf"), "-o", tmp_path / "pq").code == 0
    return tmp_path / "pq"


def _edit_manifest(model: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    manifest = json.loads((model / "parquant.json").read_text())
    replaced = edit(manifest)
    (model / "parquant.json").write_text(replaced if isinstance(replaced, str) else json.dumps(manifest))


def _first_tensor(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(iter(manifest["tensors"].values()))  # type: ignore[no-any-return]


MANIFEST_DAMAGE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "shards-not-a-list": lambda m: m.update(shards={"a": 1}),
    "shape-of-strings": lambda m: _first_tensor(m).update(shape=["64", "x"]),
    "crc-is-nan": lambda m: json.dumps(m).replace('"crc32c": ' + str(_first_tensor(m)["crc32c"]), '"crc32c": NaN', 1),
    "shape-is-infinite": lambda m: json.dumps(m).replace('"shape": [', '"shape": [Infinity, ', 1),
    "deeply-nested": lambda m: (
        '{"format": "parquant-model", "format_version": "2.0", "x": ' + "[" * 100000 + "]" * 100000 + "}"
    ),
    "negative-dimension": lambda m: _first_tensor(m).update(shape=[-64, -128]),
    # JSON Schema counts 1.0 as an integer; the typed index does not (found by the fuzzer)
    "float-row-group": lambda m: _first_tensor(m).update(row_groups=[float(g) for g in _first_tensor(m)["row_groups"]]),
    "float-data-page": lambda m: _first_tensor(m)["data_pages"][0].__setitem__(0, 1.0),
    "layout-of-wrong-type": lambda m: m.update(safetensors_layout={"model.safetensors": {"tensors": 5}}),
    "files-entry-a-string": lambda m: m.update(files={"config.json": "here"}),
    "shard-escapes": lambda m: m.update(shards=["../other/model.parquet"]),
    "shard-absolute": lambda m: m.update(shards=["/etc/passwd"]),
    "layout-file-escapes": lambda m: m.update(
        safetensors_layout={"../../escaped.safetensors": {"tensors": list(m["tensors"]), "metadata": None}}
    ),
    "absurd-shape": lambda m: _first_tensor(m).update(shape=[2**40, 2**40], nbytes=2**80 * 4),
    "absurd-shape-consistent-bytes": lambda m: _first_tensor(m).update(
        shape=[2**30, 2**30], nbytes=2**62, row_groups=[0, 0]
    ),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_damaged_manifest_is_invalid_input(damage: str, model: Path, tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "other").mkdir()
    shutil.copy(model / "model.parquet", tmp_path / "other" / "model.parquet")  # a readable file outside
    _edit_manifest(model, MANIFEST_DAMAGE[damage])
    for args in (
        ["export", model, "-o", tmp_path / "out"],
        ["quantize", model, "-o", tmp_path / "q", "--method", "int8-weight"],
    ):
        line = _assert_one_line(cli(*args), 65)
        assert "parquant.json" in line or "manifest" in line or "unsafe" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped.safetensors").exists()
    assert not (tmp_path.parent / "escaped.safetensors").exists()


def test_absurd_shape_quantized_to_s3_is_invalid_input(model: Path, s3: S3Env, cli: Cli) -> None:
    _edit_manifest(model, MANIFEST_DAMAGE["absurd-shape-consistent-bytes"])
    result = cli(
        "quantize",
        model,
        "-o",
        s3.url("q"),
        "--method",
        "int8-weight",
        "--storage-option",
        f"endpoint_url={s3.endpoint}",
    )
    _assert_one_line(result, 65)


def _header_file(folder: Path, header: bytes) -> Path:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 50000 + b"]" * 50000,
        b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
        b'{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}',
        b'{"w": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}',
        b'{"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776], '
        b'"data_offsets": [0, 4835703278458516698824704]}}',
        b'{"w": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}}',
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        b'{"v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}',
        b'{"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}, '
        b'"v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}',
        b'{"w\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    ],
    ids=[
        "nested",
        "nan",
        "float-dim",
        "negative",
        "absurd",
        "dtype-type",
        "duplicate",
        "overlap",
        "reversed",
        "surrogate",
    ],
)
def test_malformed_safetensors_header_is_invalid_input(header: bytes, tmp_path: Path, cli: Cli) -> None:
    source = _header_file(tmp_path / "hf", header)
    _assert_one_line(cli("import", source, "-o", tmp_path / "pq"), 65)
    assert not (tmp_path / "pq").exists()


def test_unknown_storage_option_is_usage(tmp_path: Path, cli: Cli) -> None:
    line = _assert_one_line(cli("inspect", tmp_path, "--storage-option", "colour=blue"), 64)
    assert "colour" in line and "endpoint_url" in line


@pytest.mark.parametrize("option", ["key=AKIAEXAMPLE", "secret=SuperSecretValue", "token=SuperSecretValue"])
def test_credentials_in_flags_are_refused_and_never_echoed(option: str, tmp_path: Path, cli: Cli) -> None:
    line = _assert_one_line(cli("inspect", tmp_path, "--storage-option", option), 64)
    assert "AWS_ACCESS_KEY_ID" in line
    assert option.split("=", 1)[1] not in line


def test_malformed_option_is_not_echoed(tmp_path: Path, cli: Cli) -> None:
    result = cli("inspect", tmp_path, "--storage-option", "secret:SuperSecretValue")
    line = _assert_one_line(result, 64)
    assert "SuperSecretValue" not in result.err and "KEY=VALUE" in line


def test_endpoint_with_credentials_is_refused_and_not_echoed(cli: Cli) -> None:
    result = cli(
        "inspect", "s3://bucket/m", "--storage-option", "endpoint_url=http://user:SuperSecretValue@127.0.0.1:9"
    )
    _assert_one_line(result, 64)
    assert "SuperSecretValue" not in result.err


def test_pipeline_spec_that_is_not_utf8_is_a_config_error(tmp_path: Path, cli: Cli) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_bytes(b"name: x\nstages:\n  - stage: inspect\n    model: \xff\xfe\n")
    line = _assert_one_line(cli("pipeline", spec), 78)
    assert "UTF-8" in line


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path, cli: Cli) -> None:
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    spec = tmp_path / "bomb.yaml"
    spec.write_text("\n".join(lines) + "\nstages: [*a8]\n")
    started = time.monotonic()
    line = _assert_one_line(cli("pipeline", spec), 78)
    assert time.monotonic() - started < 5
    assert "aliases" in line


def test_unexpected_exception_is_one_line_exit_70(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from parquant.stages import inspect as inspect_stage

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(inspect_stage, "inspect_model", broken)
    line = _assert_one_line(cli("inspect", tmp_path), 70)
    assert "internal error (KeyError" in line and "--log-level debug" in line
    debug = cli("inspect", tmp_path, "--log-level", "debug")
    assert debug.code == 70 and "Traceback" in debug.err  # the traceback, at debug level only


def test_oversized_calibration_sample_is_refused_before_tokenizing(tmp_path: Path) -> None:
    import time

    from parquant.errors import InvalidInputError
    from parquant.quant.calibration import MAX_SAMPLE_CHARS, load_texts

    data = tmp_path / "calibration.jsonl"
    data.write_text('{"text": "fine"}\n' + json.dumps({"text": "x" * (MAX_SAMPLE_CHARS + 1)}) + "\n")
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="line 2 has") as caught:
        load_texts(str(data), None)
    assert caught.value.exit_code == 65 and time.monotonic() - started < 5
    (tmp_path / "calibration.txt").write_text("a paragraph\n\n" + "y" * (MAX_SAMPLE_CHARS + 1))
    with pytest.raises(InvalidInputError, match="sample 2 has"):
        load_texts(str(tmp_path / "calibration.txt"), None)


def test_oversized_manifest_is_refused_without_reading_it(
    model: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parquant.store import reader

    monkeypatch.setattr(reader, "MAX_MANIFEST_BYTES", 1000)
    line = _assert_one_line(cli("export", model, "-o", tmp_path / "out"), 65)
    assert "larger than the 1000 bytes a manifest may have" in line


@pytest.mark.parametrize("stage", ["validate", "benchmark"])
def test_unwritable_result_file_is_refused_before_the_work(stage: str, tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "a-file").write_text("x")
    target = tmp_path / "a-file" / "result.json"
    args = ["ref", "cand", "--eval-text", "t.txt"] if stage == "validate" else ["model"]
    # The models do not even exist: the output is checked first, so that hours of evaluation
    # never end in "cannot write".
    line = _assert_one_line(cli(stage, *[tmp_path / a for a in args[:2]], *args[2:], "-o", target), 64)
    assert "is a file, not a folder" in line


@pytest.mark.parametrize("stage", ["quantize", "export", "inspect", "benchmark"])
def test_hf_folder_given_to_a_parquet_stage_says_what_to_run(stage: str, tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf")
    extra = {"quantize": ["-o", tmp_path / "q"], "export": ["-o", tmp_path / "e"]}.get(stage, [])
    line = _assert_one_line(cli(stage, source, *extra), 66)
    assert "is a Hugging Face checkpoint folder, not a Parquet model" in line
    assert f"parquant import {source} -o MODEL" in line


def test_benchmark_on_a_gpu_this_host_lacks_is_unavailable(model: Path, cli: Cli) -> None:
    line = _assert_one_line(cli("benchmark", model, "--device", "cuda"), 69)
    assert "no such CUDA GPU" in line and "--device cpu" in line
    assert cli("benchmark", model, "--device", "tpu").code == 64


def test_broken_pipe_is_quiet(tmp_path: Path, cli: Cli) -> None:
    import subprocess
    import sys

    import numpy as np
    from safetensors.numpy import save_file

    from ..conftest import REPO

    # 3000 tensors: a listing far bigger than a pipe's buffer, so `head` leaves while we write
    (tmp_path / "hf").mkdir()
    save_file({f"t.{i:04d}": np.zeros(1, np.float32) for i in range(3000)}, str(tmp_path / "hf" / "model.safetensors"))
    assert cli("import", tmp_path / "hf", "-o", tmp_path / "pq").code == 0
    model = tmp_path / "pq"

    env = {"PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}", "PATH": "/usr/bin:/bin"}
    command = f"{sys.executable} -m parquant_cli inspect {model} --json | head -1"
    run = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True)
    assert b"Traceback" not in run.stderr and b"BrokenPipe" not in run.stderr
    assert run.returncode in (0, 141)


def test_a_config_nested_200000_deep_is_refused_at_import_and_when_read(tmp_path: Path, cli: Cli) -> None:
    """Was: import accepted it, then inspect and quantize died of RecursionError (exit 70)."""
    source = make_checkpoint(tmp_path / "hf")
    (source / "config.json").write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    line = _assert_one_line(cli("import", source, "-o", tmp_path / "pq"), 65)
    assert "config.json is nested too deeply" in line and not (tmp_path / "pq").exists()
    # the same rule in every reader of a model's config.json (HF folders and Parquet models alike)
    from parquant.store.config_json import MAX_CONFIG_DEPTH, parse_config

    deep = '{"a": ' + "[" * (MAX_CONFIG_DEPTH + 1) + "]" * (MAX_CONFIG_DEPTH + 1) + "}"
    with pytest.raises(InvalidInputError, match="nested more than 64 levels"):
        parse_config(deep, "config.json")
    assert parse_config('{"a": {"b": [1, 2]}}', "c") == {"a": {"b": [1, 2]}}


def test_a_yaml_integer_of_5000_digits_is_a_config_error(tmp_path: Path, cli: Cli) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text("stages:\n  - stage: inspect\n    model: m\n    log_level: " + "9" * 5000 + "\n")
    line = _assert_one_line(cli("pipeline", spec, "--dry-run"), 78)
    assert "p.yaml has a value parquant cannot take" in line
