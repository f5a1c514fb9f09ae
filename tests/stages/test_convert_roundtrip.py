"""HF -> Parquet -> HF is bit-exact and byte-identical, and the result loads in transformers (v1, read
only now, has its own exact test on files an earlier parquant wrote: tests/store/test_reader_writer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parquant.fs import resolve
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.hf_import import import_checkpoint
from parquant.store.reader import ModelReader
from parquant.store.writer import WriteOptions

from ..conftest import make_checkpoint
from ..helpers import assert_same_checkpoint, logits

ARCHS = ["llama", "qwen3", "qwen2", "mistral", "gpt2"]


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_exact_and_loads(tmp_path: Path, arch: str, sharded: bool) -> None:
    source = make_checkpoint(tmp_path / "hf", arch, shard_size="60KB" if sharded else None)
    assert (len(list(source.glob("*.safetensors"))) > 1) == sharded
    # small chunks and shards: tensors span several chunks, the model spans several Parquet files
    write = WriteOptions(chunk_bytes=16 * 1024, shard_bytes=100 * 1024)
    import_checkpoint(str(source), str(tmp_path / "model.parquet"), write=write)  # a folder, despite its name
    export_checkpoint(str(tmp_path / "model.parquet"), str(tmp_path / "back"))
    assert_same_checkpoint(source, tmp_path / "back")
    assert torch.equal(logits(source), logits(tmp_path / "back"))


def test_tensor_larger_than_one_chunk_is_split_and_rejoined(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama", dtype="bfloat16")
    import_checkpoint(str(source), str(tmp_path / "pq"), write=WriteOptions(chunk_bytes=1000))
    with ModelReader(resolve(str(tmp_path / "pq"))) as reader:
        entry = reader.manifest.tensors["model.embed_tokens.weight"]
        assert entry.nbytes == 256 * 64 * 2
        first, last = entry.row_groups
        assert last - first + 1 == -(-entry.nbytes // 1000)  # one row group per chunk
        chunks = list(reader.iter_tensor_chunks("model.embed_tokens.weight"))
    assert [len(c) for c in chunks[:-1]] == [1000] * (len(chunks) - 1)
    export_checkpoint(str(tmp_path / "pq"), str(tmp_path / "back"))
    assert_same_checkpoint(source, tmp_path / "back")


def test_zstd_compression_round_trips(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "qwen3")
    import_checkpoint(str(source), str(tmp_path / "pq"), write=WriteOptions(compression="zstd"))
    export_checkpoint(str(tmp_path / "pq"), str(tmp_path / "back"))
    assert_same_checkpoint(source, tmp_path / "back")
