"""Import fan-out (an Indexed Job's workers): each worker writes its share of the shards, the last
plain run adds the manifest, and the result is the same model a single import makes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from parquant.errors import UsageError
from parquant.fs import resolve
from parquant.stages.hf_import import import_checkpoint
from parquant.store.reader import ModelReader
from parquant.store.writer import WriteOptions

from ..conftest import CliResult, S3Env, make_checkpoint, upload_folder

WRITE = WriteOptions(chunk_bytes=8192, shard_bytes=48 * 1024)


def _tensors(url: str, options: dict[str, str] | None = None) -> dict[str, tuple[int, str]]:
    with ModelReader(resolve(url, options)) as reader:
        return {name: (e.crc32c, e.dtype) for name, e in reader.manifest.tensors.items()}


def test_workers_then_final_run_make_the_same_model_locally(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama", shard_size="60KB")
    single, fanned = tmp_path / "single", tmp_path / "fanned"
    import_checkpoint(str(source), str(single), write=WRITE)
    for index in (2, 0, 1):
        result = import_checkpoint(str(source), str(fanned), write=WRITE, part=(index, 3))
        assert result.details == {"part": [index, 3]}
        assert not fanned.exists()  # nothing visible until the final run commits
    staged = sorted(os.listdir(tmp_path / ".fanned.parquant-partial"))
    assert len([n for n in staged if n.endswith(".parquet")]) >= 3
    final = import_checkpoint(str(source), str(fanned), write=WRITE)
    assert final.details["shards"] == len([n for n in staged if n.endswith(".parquet")])
    assert _tensors(str(fanned)) == _tensors(str(single))
    assert sorted(os.listdir(fanned)) == sorted(os.listdir(single))  # worker records are gone
    assert (fanned / "parquant.json").exists()


def test_final_run_writes_what_no_worker_did(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "qwen3", shard_size="60KB")
    import_checkpoint(str(source), str(tmp_path / "m"), write=WRITE, part=(0, 4))  # workers 1-3 never ran
    import_checkpoint(str(source), str(tmp_path / "m"), write=WRITE)
    import_checkpoint(str(source), str(tmp_path / "ref"), write=WRITE)
    assert _tensors(str(tmp_path / "m")) == _tensors(str(tmp_path / "ref"))


def test_records_of_other_work_are_not_trusted(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama", shard_size="60KB")
    import_checkpoint(str(source), str(tmp_path / "m"), write=WRITE, part=(0, 2))
    other = WriteOptions(chunk_bytes=4096, shard_bytes=48 * 1024)  # different options: another fingerprint
    import_checkpoint(str(source), str(tmp_path / "m"), write=other)
    import_checkpoint(str(source), str(tmp_path / "ref"), write=other)
    assert _tensors(str(tmp_path / "m")) == _tensors(str(tmp_path / "ref"))


def test_workers_on_s3(tmp_path: Path, s3: S3Env) -> None:
    source = upload_folder(s3, make_checkpoint(tmp_path / "hf", "mistral", shard_size="60KB"), "hf/mistral")
    out = s3.url("models/mistral")
    for index in range(2):
        import_checkpoint(source, out, write=WRITE, part=(index, 2), storage_options=s3.options)
    keys = s3.keys("models/mistral/")
    assert "models/mistral/parquant.json" not in keys and any(".parquant-part-" in k for k in keys)
    import_checkpoint(source, out, write=WRITE, storage_options=s3.options)
    keys = s3.keys("models/mistral/")
    assert "models/mistral/parquant.json" in keys and not any(".parquant-part-" in k for k in keys)
    import_checkpoint(source, s3.url("models/ref"), write=WRITE, storage_options=s3.options)
    assert _tensors(out, s3.options) == _tensors(s3.url("models/ref"), s3.options)


def test_fan_out_refuses_force_and_bad_index(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama")
    with pytest.raises(UsageError, match="--force cannot be used with a fan-out"):
        import_checkpoint(str(source), str(tmp_path / "m"), part=(0, 2), force=True)
    with pytest.raises(UsageError, match=r"--shard-index 2 is outside 0\.\.1 \(--shard-count 2\)") as refused:
        import_checkpoint(str(source), str(tmp_path / "m"), part=(2, 2))
    assert "--force" not in str(refused.value)  # it was: one message for both mistakes


def test_a_workers_bad_input_keeps_the_other_workers_files(tmp_path: Path) -> None:
    """Was: a worker's non-retryable failure deleted the shared staging folder, with the shards
    the other workers had finished."""
    from safetensors.torch import load_file, save_file

    from parquant.errors import InvalidInputError

    source = make_checkpoint(tmp_path / "hf", "llama", shard_size="60KB")
    for weights in source.glob("*.safetensors"):  # a NaN in every tensor: --strict refuses it (65)
        tensors = load_file(weights)
        for tensor in tensors.values():
            tensor.view(-1)[0] = float("nan")
        save_file(tensors, weights, metadata={"format": "pt"})
    out = tmp_path / "m"
    import_checkpoint(str(source), str(out), write=WRITE, part=(0, 2))
    staging = tmp_path / ".m.parquant-partial"
    finished = sorted(p.name for p in staging.iterdir())
    assert any(name.endswith(".parquet") for name in finished)
    with pytest.raises(InvalidInputError, match="NaN"):
        import_checkpoint(str(source), str(out), write=WRITE, part=(1, 2), strict=True)
    assert set(finished) <= {p.name for p in staging.iterdir()}  # worker 0's shards and records all kept


def test_a_worker_does_not_start_while_the_output_is_being_committed(tmp_path: Path) -> None:
    from parquant.errors import TemporaryFailure
    from parquant.fs import resolve
    from parquant.locks import output_lock

    source = make_checkpoint(tmp_path / "hf", "llama")
    commit_lock = output_lock(resolve(str(tmp_path / "m")))  # what the commit holds
    with commit_lock, pytest.raises(TemporaryFailure, match="another run is committing"):
        import_checkpoint(str(source), str(tmp_path / "m"), write=WRITE, part=(1, 2))


def test_cli_takes_the_index_from_an_indexed_job(
    tmp_path: Path, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama", shard_size="60KB")
    out = tmp_path / "m"
    common = ("--chunk-size", "8192", "--shard-size", "48KB")
    assert cli("import", source, "-o", out, "--shard-count", "2", *common).code == 64  # no index anywhere
    assert cli("import", source, "-o", out, "--shard-index", "1", *common).code == 64  # index without count
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert cli("import", source, "-o", out, "--shard-count", "2", *common).code == 0
    assert cli("import", source, "-o", out, "--shard-count", "2", "--shard-index", "0", *common).code == 0
    assert not out.exists()
    assert cli("import", source, "-o", out, *common).code == 0
    assert (out / "parquant.json").exists()
