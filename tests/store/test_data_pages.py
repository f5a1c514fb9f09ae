"""The manifest's data_pages: one tensor read by its byte ranges, exactly, with every fallback judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from parquant.errors import InvalidInputError
from parquant.fs import resolve
from parquant.store.reader import ModelReader
from parquant.weights import WeightLoader

from .test_reader_writer import _write

WEIGHT = bytes(range(256)) * 40  # b.weight, 10240 bytes: 11 chunks of 1000 bytes


def _without_pages(folder: Path) -> None:
    """Make the model look like one written before data_pages existed (format 2.0)."""
    manifest = json.loads((folder / "parquant.json").read_text())
    for section in ("tensors", "files"):
        for entry in manifest[section].values():
            entry.pop("data_pages", None)
    manifest["format_version"] = "2.0"
    (folder / "parquant.json").write_text(json.dumps(manifest))


def test_pages_point_at_each_chunk_value(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m", 2)
    pages = manifest.tensors["b.weight"].data_pages
    assert pages is not None and len(pages) == 11
    shard = (tmp_path / "m" / manifest.shards[0]).read_bytes()
    assert b"".join(shard[offset : offset + length] for offset, length, _ in pages) == WEIGHT
    assert [length for _, length, _ in pages] == [1000] * 10 + [240]


@pytest.mark.parametrize("with_pages", [True, False])
def test_reads_are_the_same_with_and_without_pages(tmp_path: Path, with_pages: bool) -> None:
    _write(tmp_path / "m", 2)
    if not with_pages:
        _without_pages(tmp_path / "m")
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        assert reader.read_tensor("b.weight") == WEIGHT
        with reader.mapped_tensor("b.weight") as views:
            assert (views is not None) is with_pages
            assert views is None or b"".join(views) == WEIGHT
        target = bytearray(len(WEIGHT))
        reader.read_tensor_into("b.weight", memoryview(target))
        assert bytes(target) == WEIGHT
    with WeightLoader(str(tmp_path / "m")) as loader:
        loaded = loader.load("b.weight")
        assert loaded.dtype == torch.uint8 and loaded.shape == (40, 256)
        assert bytes(loaded.reshape(-1).numpy()) == WEIGHT


def test_a_corrupt_chunk_is_still_named(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m", 2)
    offset, _, _ = manifest.tensors["b.weight"].data_pages[3]  # type: ignore[index]
    shard = tmp_path / "m" / manifest.shards[0]
    data = bytearray(shard.read_bytes())
    data[offset + 10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        with reader.mapped_tensor("b.weight") as views:
            assert views is None  # the fast path trusts nothing it cannot check
        with pytest.raises(InvalidInputError, match=r"checksum mismatch in b\.weight \(chunk 3\)"):
            reader.read_tensor("b.weight")
    with WeightLoader(str(tmp_path / "m")) as loader, pytest.raises(InvalidInputError, match=r"b\.weight"):
        loader.load("b.weight")


def test_pages_that_lie_are_judged_by_the_footer(tmp_path: Path) -> None:
    """A manifest whose pages point at the wrong bytes reads through the Parquet footer instead,
    which finds the right ones (the per-chunk CRC tells them apart)."""
    _write(tmp_path / "m", 2)
    manifest = json.loads((tmp_path / "m" / "parquant.json").read_text())
    pages = manifest["tensors"]["b.weight"]["data_pages"]
    pages[2][0] += 7
    (tmp_path / "m" / "parquant.json").write_text(json.dumps(manifest))
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        with reader.mapped_tensor("b.weight") as views:
            assert views is None
        assert reader.read_tensor("b.weight") == WEIGHT
        target = bytearray(len(WEIGHT))
        reader.read_tensor_into("b.weight", memoryview(target))  # the kernel-read path falls back too
        assert bytes(target) == WEIGHT


def test_pages_that_do_not_match_the_row_groups_are_invalid(tmp_path: Path) -> None:
    _write(tmp_path / "m", 2)
    manifest = json.loads((tmp_path / "m" / "parquant.json").read_text())
    manifest["tensors"]["b.weight"]["data_pages"].pop()
    (tmp_path / "m" / "parquant.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match="data_pages do not match"):
        ModelReader(resolve(str(tmp_path / "m")))


def test_a_model_without_pages_keeps_the_identity_older_versions_gave_it(tmp_path: Path) -> None:
    """The digest is taken over format 2.0's text (indented, no data_pages): outputs made from a
    model an older parquant wrote are still recognised as done after an upgrade."""
    import hashlib

    from parquant.store.manifest import Manifest

    _write(tmp_path / "m", 2)
    _without_pages(tmp_path / "m")
    text = (tmp_path / "m" / "parquant.json").read_text()
    as_older_versions_hashed = json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"
    manifest = Manifest.from_json(text, "m")
    assert manifest.digest() == hashlib.sha256(as_older_versions_hashed.encode()).hexdigest()


def _twins(folder: Path, compression: str = "none") -> None:
    """A model of two tensors of the same size and different bytes: x.weight and y.weight."""
    from parquant.outputs import OutputFolder
    from parquant.store.items import ModelItem
    from parquant.store.manifest import Provenance
    from parquant.store.schema import TensorSpec
    from parquant.store.writer import ModelDescription, WriteOptions, write_model

    items = [
        ModelItem(
            "tensor",
            name,
            len(blob),
            lambda n, blob=blob: (blob[i : i + n] for i in range(0, len(blob), n)),
            TensorSpec(name, "U8", (len(blob),)),
        )
        for name, blob in sorted(TWINS.items())
    ]
    output = OutputFolder(resolve(str(folder)), force=False, marker="parquant.json")
    description = ModelDescription({"fingerprint": "fp"}, Provenance("test", "0"))
    write_model(output, items, WriteOptions(2, 1000, 10**9, compression), description, "fp")


TWINS = {"x.weight": bytes(range(256)) * 10, "y.weight": bytes(reversed(range(256))) * 10}


def _edit(folder: Path, *keys: str) -> None:
    """x.weight's manifest entry gets y.weight's values for `keys`."""
    manifest = json.loads((folder / "parquant.json").read_text())
    for key in keys:
        manifest["tensors"]["x.weight"][key] = manifest["tensors"]["y.weight"][key]
    (folder / "parquant.json").write_text(json.dumps(manifest))


def test_pages_pointed_at_another_tensors_bytes_read_the_right_tensor_through_the_footer(tmp_path: Path) -> None:
    """Was: 'checksum mismatch' (65) blaming an intact shard; FORMAT.md promises the footer decides."""
    _twins(tmp_path / "m")
    _edit(tmp_path / "m", "data_pages")
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        assert reader.read_tensor("x.weight") == TWINS["x.weight"]
        assert reader.read_tensor("y.weight") == TWINS["y.weight"]
        with reader.mapped_tensor("x.weight") as views:
            assert views is None


def test_no_manifest_edit_of_pages_and_checksum_returns_another_tensor(tmp_path: Path) -> None:
    """Was: y.weight's bytes returned as x.weight, exit 0."""
    _twins(tmp_path / "m")
    _edit(tmp_path / "m", "data_pages", "crc32c")
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        with reader.mapped_tensor("x.weight") as views:
            assert views is None
        with pytest.raises(InvalidInputError, match=r"x\.weight"):
            reader.read_tensor("x.weight")
    _edit(tmp_path / "m", "data_pages", "crc32c", "row_groups")  # the whole entry: the footer's rows name y
    with (
        ModelReader(resolve(str(tmp_path / "m"))) as reader,
        pytest.raises(InvalidInputError, match=r"hold 'y\.weight'"),
    ):
        reader.read_tensor("x.weight")


def test_a_compressed_model_has_no_data_pages_key(tmp_path: Path) -> None:
    """FORMAT.md says absent; it was written as null."""
    _twins(tmp_path / "m", compression="zstd")
    manifest = json.loads((tmp_path / "m" / "parquant.json").read_text())
    assert all("data_pages" not in entry for entry in manifest["tensors"].values())
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        assert reader.read_tensor("x.weight") == TWINS["x.weight"]
