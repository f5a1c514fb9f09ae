"""One storage protocol, three stores: the same contract holds on local disk, S3 (moto on loopback)
and fsspec's in-memory filesystem, and a whole pipeline runs on memory:// with the bytes it has on disk."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from parquant.errors import OutputExistsError, TemporaryFailure, UsageError
from parquant.fs import Location, resolve
from parquant.locks import is_locked, output_lock
from parquant.outputs import OutputFolder
from parquant.storage import store_for
from parquant.storage.local import LocalStore
from parquant.storage.memory import MemoryStore
from parquant.storage.s3 import S3Store

from ..conftest import EXAMPLE_MODEL, S3Env


@pytest.fixture(params=["local", "memory", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Location]:
    """A fresh folder on each store (the S3 one on the loopback moto server)."""
    if request.param == "local":
        yield resolve(str(tmp_path / "root"))
    elif request.param == "memory":
        yield resolve(f"memory://parquant-tests/{uuid.uuid4().hex}")
    else:
        s3: S3Env = request.getfixturevalue("s3")
        yield resolve(s3.url("root"), s3.options)


def test_store_for_names_the_implementation(tmp_path: Path) -> None:
    assert isinstance(store_for(resolve(str(tmp_path))), LocalStore)
    assert isinstance(store_for(resolve("memory://b/x")), MemoryStore)
    assert isinstance(store_for(resolve("s3://b/x", {"endpoint_url": "http://127.0.0.1:9"})), S3Store)
    with pytest.raises(UsageError, match="not gs://"):
        resolve("gs://bucket/x")


def test_a_file_appears_whole_or_not_at_all(root: Location) -> None:
    store = store_for(root)
    target = root.child("out", "data.bin")
    store.prepare(root.child("out"))
    with store.open_atomic(target) as handle:
        handle.write(b"x" * 1000)
    assert target.read_bytes() == b"x" * 1000
    failed = root.child("out", "failed.bin")
    with pytest.raises(RuntimeError), store.open_atomic(failed) as handle:
        handle.write(b"half")
        raise RuntimeError("killed mid-write")
    assert not failed.exists()
    store.put_atomic(root.child("out", "small.json"), b"{}")
    assert sorted(store.entries(root.child("out")) or []) == ["data.bin", "small.json"]
    assert store.entries(root.child("nothing-here")) is None


def test_the_commit_point_is_created_once(root: Location) -> None:
    store = store_for(root)
    marker = root.child("m", "marker.json")
    store.prepare(root.child("m"))
    assert store.create_exclusive(marker, b"first")
    if not store.renames:  # where nothing is renamed, a second commit must not replace the first
        assert not store.create_exclusive(marker, b"second")
        assert marker.read_bytes() == b"first"
    store.remove(marker)
    store.remove(marker)  # a missing file is no error
    store.remove(root.child("no-folder"), recursive=True)
    assert not marker.exists()


def test_one_writer_per_output_on_every_store(root: Location) -> None:
    output = root.child("model")
    with output_lock(output):
        assert is_locked(output)
        with pytest.raises(TemporaryFailure, match="is writing"):
            store_for(output).new_lock(root.child(".model.parquant-lock")).acquire(output.url)
    assert not is_locked(output)


def test_an_output_folder_is_invisible_until_committed_and_resumes(root: Location) -> None:
    output = root.child("model")
    folder = OutputFolder(output, force=False, marker="parquant.json")
    with folder.locked():
        folder.check_free()
        assert folder.begin("work-1") == {}
        with folder.open_file("shard-0.parquet") as handle:
            handle.write(b"PAR1" + b"0" * 8 + b"PAR1")
        folder.record("shard-0.parquet", {"size": 16})
    assert not output.child("parquant.json").exists()  # not committed: no reader sees a model
    again = OutputFolder(output, force=False, marker="parquant.json")
    with again.locked():
        again.check_free()  # our own unfinished run: resumed, not "exists"
        assert again.begin("work-1") == {"shard-0.parquet": {"size": 16}}
        again.verify({"shard-0.parquet": 16}, parquet=True)
        again.commit(b'{"model": 1}')
    assert output.child("parquant.json").read_bytes() == b'{"model": 1}'
    with pytest.raises(OutputExistsError):
        OutputFolder(output, force=False, marker="parquant.json").check_free()
    names = store_for(output).entries(output) or []
    assert "parquant.json" in names and not any(n.endswith(".parquant-progress.json") for n in names)


def test_a_pipeline_on_memory_writes_the_bytes_it_writes_on_disk(tmp_path: Path) -> None:
    """import -> quantize -> export, all on memory://, exports the same files as on local disk."""
    from parquant.quant.config import load_config
    from parquant.stages.hf_export import export_checkpoint
    from parquant.stages.hf_import import import_checkpoint
    from parquant.stages.inspect import inspect_model
    from parquant.stages.quantize import quantize

    memory = f"memory://parquant-tests/{uuid.uuid4().hex}"
    config = load_config(flags={"method": "int8-dynamic", "backend": "ptq"}, environ={})
    for base, out in ((memory, tmp_path / "from-memory"), (str(tmp_path / "disk"), tmp_path / "from-disk")):
        import_checkpoint(str(EXAMPLE_MODEL), f"{base}/model")
        result = quantize(f"{base}/model", f"{base}/q", config)
        assert result.details["backend"] == "ptq"
        assert quantize(f"{base}/model", f"{base}/q", config).skipped  # a rerun finds it done
        export_checkpoint(f"{base}/q", str(out))
    assert "int" in inspect_model(f"{memory}/q").quantization

    def digests(folder: Path) -> dict[str, str]:
        # (the hidden export record names the source URL, which differs by construction)
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".")
        }

    assert digests(tmp_path / "from-memory") == digests(tmp_path / "from-disk")
