"""The format itself: v2 written and read back, v1 (read only) from files an earlier parquant wrote,
bare .parquet files, manifest refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parquant.errors import InvalidInputError, UnavailableError
from parquant.fs import resolve
from parquant.outputs import OutputFolder
from parquant.store.items import ModelItem
from parquant.store.manifest import Manifest, Provenance
from parquant.store.reader import ModelReader
from parquant.store.schema import FORMAT_VERSIONS, TensorSpec, shard_name
from parquant.store.writer import ModelDescription, WriteOptions, plan_shards, write_model

CONFIG = '{"a": "é"}'.encode()


def _items() -> list[ModelItem]:
    blobs = {"b.weight": bytes(range(256)) * 40, "a.bias": b"\x01\x02" * 3, "empty": b""}
    specs = {
        "b.weight": TensorSpec("b.weight", "U8", (40, 256)),
        "a.bias": TensorSpec("a.bias", "BF16", (3,)),
        "empty": TensorSpec("empty", "F32", (0, 4)),
    }
    items = [ModelItem("file", "config.json", len(CONFIG), lambda n: iter([CONFIG]))]
    for name, blob in sorted(blobs.items()):
        items.append(
            ModelItem(
                "tensor",
                name,
                len(blob),
                lambda n, blob=blob: (blob[i : i + n] for i in range(0, len(blob), n)),
                specs[name],
            )
        )
    return items


def _write(folder: Path, version: int, chunk: int = 1000, shard: int = 10**9) -> Manifest:
    output = OutputFolder(resolve(str(folder)), force=False, marker="parquant.json")
    description = ModelDescription({"fingerprint": "fp"}, Provenance("test", "0"))
    return write_model(output, _items(), WriteOptions(version, chunk, shard), description, "fp")


# Written by parquant before v1 writing ended (the items of _items(), shards of 6000 bytes), and a
# bf16 random Llama from make_checkpoint (tokenizer left out) with its files' SHA-256 beside it.
V1_MODEL = Path(__file__).parent / "data" / "v1-model"
V1_LLAMA = Path(__file__).parent / "data" / "v1-llama"


@pytest.mark.parametrize("version", [1, 2])
def test_a_model_reads_back_exactly(tmp_path: Path, version: int) -> None:
    if version == 2:
        manifest = _write(tmp_path / "m", version, shard=6000)
        assert len(manifest.shards) > 1 and manifest.format_version == FORMAT_VERSIONS[version]
    else:
        shutil.copytree(V1_MODEL, tmp_path / "m")
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        assert reader.version == version
        assert reader.tensor_names() == ["a.bias", "b.weight", "empty"]
        assert reader.read_tensor("b.weight") == bytes(range(256)) * 40
        assert reader.read_tensor("a.bias") == b"\x01\x02" * 3
        assert reader.read_tensor("empty") == b""
        assert reader.read_file("config.json") == CONFIG
        assert reader.tensor_spec("b.weight").shape == (40, 256)
        with pytest.raises(InvalidInputError, match="no tensor"):
            reader.read_tensor("missing")


def test_a_bare_parquet_file_without_manifest_is_readable(tmp_path: Path) -> None:
    _write(tmp_path / "m", 2)
    shutil.copy(tmp_path / "m" / "model.parquet", tmp_path / "legacy.parquet")
    with ModelReader(resolve(str(tmp_path / "legacy.parquet"))) as reader:
        assert reader.read_tensor("b.weight") == bytes(range(256)) * 40
        assert "config.json" in reader.file_names()
        assert reader.read_file("config.json") == CONFIG
    first_v1_shard = V1_MODEL / "model-00001-of-00003.parquet"  # a.bias and the files
    with ModelReader(resolve(str(first_v1_shard))) as reader:
        assert reader.version == 1 and reader.read_tensor("a.bias") == b"\x01\x02" * 3
        assert reader.read_file("config.json") == CONFIG


def test_v1_is_read_bit_exact_but_no_longer_written(tmp_path: Path) -> None:
    """An HF checkpoint imported as v1 by an earlier parquant exports to the very same files."""
    from parquant.errors import UsageError
    from parquant.stages.hf_export import export_checkpoint

    export_checkpoint(str(V1_LLAMA), str(tmp_path / "hf"))
    expected = json.loads((V1_LLAMA.parent / "v1-llama.sha256.json").read_text())
    found = {name: hashlib.sha256((tmp_path / "hf" / name).read_bytes()).hexdigest() for name in expected}
    assert found == expected
    with pytest.raises(UsageError, match="--format-version 1 is read but no longer written"):
        WriteOptions(version=1)


def test_a_foreign_v1_file_with_several_rows_per_row_group(tmp_path: Path) -> None:
    table = pa.table(
        {
            "name": ["x", "y"],
            "dtype": ["I8", "I8"],
            "shape": [[2], [3]],
            "data": pa.array([b"\x01\x02", b"\x03\x04\x05"], pa.large_binary()),
        }
    )
    pq.write_table(table.replace_schema_metadata({b"config": b"{}"}), tmp_path / "old.parquet")
    with ModelReader(resolve(str(tmp_path / "old.parquet"))) as reader:
        assert reader.read_tensor("y") == b"\x03\x04\x05"
        assert reader.version == 1


def test_unrecognised_bare_parquet_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(UnavailableError, match="upgrade parquant"):
        ModelReader(resolve(str(tmp_path / "other.parquet")))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a parquant manifest"),
        ('{"format": "parquant-model", "format_version": "2.0"}', '"shards" is a required property'),
    ],
)
def test_damaged_manifests(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Manifest.from_json(text, "m/parquant.json")


def test_manifest_with_impossible_tensor_entry(tmp_path: Path) -> None:
    _write(tmp_path / "m", 2)
    manifest = json.loads((tmp_path / "m" / "parquant.json").read_text())
    manifest["tensors"]["b.weight"]["shape"] = [41, 256]
    (tmp_path / "m" / "parquant.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match="disagree"):
        ModelReader(resolve(str(tmp_path / "m")))


def test_missing_shard_is_named(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m", 2, shard=6000)
    (tmp_path / "m" / manifest.shards[manifest.tensors["b.weight"].shard]).unlink()
    with ModelReader(resolve(str(tmp_path / "m"))) as reader, pytest.raises(InvalidInputError, match="missing"):
        reader.read_tensor("b.weight")


def test_shard_plan_and_names() -> None:
    items = [ModelItem("tensor", str(i), size, lambda n: iter([b""])) for i, size in enumerate([5, 5, 20, 1])]
    assert [[i.name for i in s] for s in plan_shards(items, 10)] == [["0", "1"], ["2"], ["3"]]
    assert shard_name(0, 1) == "model.parquet"
    assert shard_name(1, 3) == "model-00002-of-00003.parquet"


def test_write_options_are_validated() -> None:
    from parquant.errors import UsageError

    for bad in (dict(version=3), dict(chunk_bytes=0), dict(shard_bytes=0), dict(compression="rar")):
        with pytest.raises(UsageError):
            WriteOptions(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pieces", "error", "message"),
    [
        ([b"1234567890AB"], "InternalError", "12-byte piece as chunk 0 of 1"),
        ([b"1234567890", b"x"], "InternalError", "10-byte piece as chunk 0 of 1"),
        ([b"12345"], "InvalidInputError", "chunk 0 has 5 of 10 bytes; the input is truncated"),
        ([], "InvalidInputError", "chunk 0 has 0 of 10 bytes"),
    ],
)
def test_sources_are_held_to_the_chunk_contract(tmp_path: Path, pieces: list[bytes], error: str, message: str) -> None:
    from parquant import errors

    items = [ModelItem("tensor", "t", 10, lambda n: iter(pieces), TensorSpec("t", "U8", (10,)))]
    output = OutputFolder(resolve(str(tmp_path / "m")), force=False, marker="parquant.json")
    with pytest.raises(getattr(errors, error), match=message):
        write_model(output, items, WriteOptions(), ModelDescription({}, Provenance("t", "0")), "fp")
