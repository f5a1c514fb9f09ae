"""Bad input and unhappy paths of import/export: exit code, one-line message, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from parquant.fs import resolve
from parquant.outputs import OutputFolder
from parquant.store.items import ModelItem
from parquant.store.manifest import Provenance
from parquant.store.writer import ModelDescription, WriteOptions, write_model

from ..conftest import CliResult, make_checkpoint

Cli = Callable[..., CliResult]


def one_line_error(result: CliResult) -> str:
    errors = [line for line in result.err.splitlines() if "error" in line]
    assert len(errors) == 1, result.err
    return errors[0]


@pytest.fixture
def imported(tmp_path: Path, cli: Cli) -> Path:
    source = make_checkpoint(tmp_path / "hf", "llama")
    assert cli("import", source, "-o", tmp_path / "pq", "--chunk-size", "4KiB").code == 0
    return tmp_path / "pq"


def test_truncated_parquet_is_refused(imported: Path, tmp_path: Path, cli: Cli) -> None:
    shard = imported / "model.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = cli("export", imported, "-o", tmp_path / "out")
    assert result.code == 65
    assert "corrupt or truncated" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_flipped_byte_is_caught_by_checksum(imported: Path, tmp_path: Path, cli: Cli) -> None:
    shard = imported / "model.parquet"
    data = bytearray(shard.read_bytes())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "np") as handle:
        needle = handle.get_tensor("model.layers.1.mlp.up_proj.weight").tobytes()[:64]
    position = data.find(needle)
    assert position > 0
    data[position + 10] ^= 0x01
    shard.write_bytes(bytes(data))
    result = cli("export", imported, "-o", tmp_path / "out")
    assert result.code == 65
    line = one_line_error(result)
    assert "checksum mismatch" in line and "model.layers.1.mlp.up_proj.weight" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_unknown_format_version_is_refused(imported: Path, tmp_path: Path, cli: Cli) -> None:
    manifest = json.loads((imported / "parquant.json").read_text())
    manifest["format_version"] = "3.0"
    (imported / "parquant.json").write_text(json.dumps(manifest))
    result = cli("inspect", imported)
    assert result.code == 69
    assert "format version '3.0'" in one_line_error(result) and "upgrade parquant" in result.err


def test_missing_chunk_is_detected(imported: Path, tmp_path: Path, cli: Cli) -> None:
    shard = imported / "model.parquet"
    manifest = json.loads((imported / "parquant.json").read_text())
    first, last = manifest["tensors"]["model.embed_tokens.weight"]["row_groups"]
    assert last > first
    parquet = pq.ParquetFile(shard)
    groups = [parquet.read_row_group(i) for i in range(parquet.num_row_groups)]
    groups[first + 1] = groups[first]  # chunk 1 lost, chunk 0 duplicated in its place
    with pq.ParquetWriter(tmp_path / "rewritten.parquet", parquet.schema_arrow) as writer:
        for group in groups:
            writer.write_table(group)
    (tmp_path / "rewritten.parquet").replace(shard)
    result = cli("export", imported, "-o", tmp_path / "out")
    assert result.code == 65
    assert "chunk 1 is missing" in one_line_error(result)


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/parquant-evil.txt", "a/../../evil.txt", "C:evil.txt"])
def test_path_traversal_in_file_rows_is_refused(tmp_path: Path, cli: Cli, name: str) -> None:
    payload = b"owned"
    items = [ModelItem("file", name, len(payload), lambda size: iter([payload]))]
    folder = OutputFolder(resolve(str(tmp_path / "evil")), force=False, marker="parquant.json")
    write_model(folder, items, WriteOptions(), ModelDescription({"fingerprint": "x"}, Provenance("test", "0")), "x")
    result = cli("export", tmp_path / "evil", "-o", tmp_path / "sub" / "out")
    assert result.code == 65
    assert "unsafe file name" in one_line_error(result)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/parquant-evil.txt").exists()
    assert not (tmp_path / "sub" / "out").exists()


def test_nan_weights_warn_and_strict_refuses(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama")
    tensors = {"w": np.array([1.0, np.nan, np.inf, 2.0], dtype=np.float32)}
    save_file(tensors, str(source / "extra.safetensors"))
    result = cli("import", source, "-o", tmp_path / "pq")
    assert result.code == 0
    assert "tensor w has 2 NaN/Inf values" in result.err
    strict = cli("import", source, "-o", tmp_path / "strict", "--strict")
    assert strict.code == 65
    assert "tensor w contains NaN/Inf" in one_line_error(strict)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))


def test_missing_input(tmp_path: Path, cli: Cli) -> None:
    result = cli("import", tmp_path / "nope", "-o", tmp_path / "pq")
    assert result.code == 66 and "not found" in one_line_error(result)
    assert cli("export", tmp_path / "nope", "-o", tmp_path / "hf").code == 66
    assert cli("inspect", tmp_path / "nope.parquet").code == 66


def test_incomplete_model_is_not_read(imported: Path, tmp_path: Path, cli: Cli) -> None:
    (imported / "parquant.json").unlink()
    result = cli("export", imported, "-o", tmp_path / "out")
    assert result.code == 66 and "not a complete parquant model" in one_line_error(result)


def test_output_exists_then_skip_then_force(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("keep me")
    result = cli("import", source, "-o", tmp_path / "taken")
    assert result.code == 73 and "--force" in one_line_error(result)
    assert (tmp_path / "taken" / "precious.txt").read_text() == "keep me"

    assert cli("import", source, "-o", tmp_path / "pq").code == 0
    again = cli("import", source, "-o", tmp_path / "pq")
    assert again.code == 0 and json.loads(again.out)["skipped"] is True
    different = cli("import", source, "-o", tmp_path / "pq", "--chunk-size", "64KB")
    assert different.code == 73
    forced = cli("import", source, "-o", tmp_path / "pq", "--chunk-size", "64KB", "--force")
    assert forced.code == 0 and json.loads(forced.out)["skipped"] is False
    manifest = json.loads((tmp_path / "pq" / "parquant.json").read_text())
    assert manifest["created_by"]["config"]["chunk_bytes"] == 64_000
    old_format = cli("import", source, "-o", tmp_path / "pq1", "--format-version", "1")
    assert old_format.code == 64 and "no longer written" in old_format.err
    assert cli("export", tmp_path / "pq", "-o", tmp_path / "pq").code == 64  # the output would be the input


def test_pickle_checkpoint_is_refused_with_a_conversion_hint(tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not-unpickled")
    result = cli("import", folder, "-o", tmp_path / "pq")
    assert result.code == 69
    line = one_line_error(result)
    assert "never unpickles" in line and "save_pretrained" in line


def test_pickle_beside_safetensors_is_skipped(checkpoint: Path, tmp_path: Path, cli: Cli) -> None:
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    result = cli("import", checkpoint, "-o", tmp_path / "pq")
    assert result.code == 0 and "skipping pickle file pytorch_model.bin" in result.err
    assert "pytorch_model.bin" not in json.loads((tmp_path / "pq" / "parquant.json").read_text())["files"]


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"tmpfs mount needs root (CI runs as root): {done.stderr.decode()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_is_refused_before_writing(checkpoint: Path, tiny_disk: Path, cli: Cli) -> None:
    result = cli("import", checkpoint, "-o", tiny_disk / "pq")
    assert result.code == 74
    assert "not enough disk space" in one_line_error(result)
    assert list(tiny_disk.iterdir()) == []


def test_disk_full_during_a_write_leaves_no_partial_file(tiny_disk: Path) -> None:
    from parquant.errors import StorageIOError

    folder = OutputFolder(resolve(str(tiny_disk / "out")), force=False, marker=None)
    folder.begin("fp")
    with pytest.raises(StorageIOError, match="disk full"), folder.open_file("big.bin") as handle:
        for _ in range(64):
            handle.write(b"x" * 16384)
    assert not any(p.name.startswith("big.bin") for p in folder_paths(tiny_disk))


def folder_paths(root: Path) -> list[Path]:
    return list(root.rglob("*"))


def test_bad_safetensors_headers(tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    result = cli("import", folder, "-o", tmp_path / "pq")
    assert result.code == 65 and "impossible header length" in one_line_error(result)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    result = cli("import", folder, "-o", tmp_path / "pq")
    assert result.code == 65 and "past the end of the file" in one_line_error(result)


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_fifo_or_socket_in_the_checkpoint_is_refused_before_it_is_opened(
    checkpoint: Path, tmp_path: Path, cli: Cli, kind: str
) -> None:
    """Was: import blocked for ever reading a FIFO that nobody writes to."""
    import os
    import socket

    folder = tmp_path / "with-special"
    shutil.copytree(checkpoint, folder)
    special = folder / "notes.txt"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(special))
    result = cli("import", folder, "-o", tmp_path / "pq")
    assert result.code == 65, result.err
    assert f"notes.txt is a {'FIFO' if kind == 'fifo' else 'socket'}, not a regular file" in one_line_error(result)
    assert not (tmp_path / "pq").exists()
