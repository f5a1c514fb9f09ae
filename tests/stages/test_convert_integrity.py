"""Nothing lost, nothing stale: content-true fingerprints, verified completion, contained inputs and outputs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from parquant.errors import ParquantError, StorageIOError
from parquant.fs import resolve
from parquant.outputs import OutputFolder
from parquant.progress import ProgressEvent
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.hf_import import import_checkpoint
from parquant.store.reader import ModelReader
from parquant.store.writer import WriteOptions

from ..conftest import CliResult, S3Env, make_checkpoint, upload_folder
from ..helpers import assert_same_checkpoint

Cli = Callable[..., CliResult]
# config.json + 2 tensors in the first shard, 2 tensors in each of the 3 others.
SMALL_SHARDS = WriteOptions(shard_bytes=80 * 1024, chunk_bytes=16 * 1024)


def _weights(folder: Path, seed: int, tensors: int = 8) -> Path:
    """Same names and shapes for every seed: only the values differ (a retrained checkpoint)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file(
        {f"layers.{i}.weight": rng.standard_normal((64, 128), dtype=np.float32) for i in range(tensors)},
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


class _StopAfter:
    """A progress callback that interrupts the run (a crash) once `shards` shards are finished:
    at the first item of the next shard, so exactly those shards are recorded."""

    def __init__(self, shards: int) -> None:
        self.stop_at = 2 + 2 * shards
        self.written = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == "write" and not event.note:
            self.written += 1
            if self.written == self.stop_at:
                raise KeyboardInterrupt


def _tensor_bytes(model: Path | str, name: str, options: dict[str, str] | None = None) -> bytes:
    with ModelReader(resolve(str(model), options)) as reader:
        return reader.read_tensor(name)


def test_retrained_checkpoint_with_same_shapes_is_not_skipped(tmp_path: Path, cli: Cli) -> None:
    source = _weights(tmp_path / "hf", seed=1)
    assert cli("import", source, "-o", tmp_path / "pq").code == 0
    old = _tensor_bytes(tmp_path / "pq", "layers.0.weight")
    _weights(source, seed=2)  # retrained: same header, same size, new values
    result = cli("import", source, "-o", tmp_path / "pq")
    assert result.code == 73, result.err  # a different input is not "already done"
    assert cli("import", source, "-o", tmp_path / "pq", "--force").code == 0
    assert _tensor_bytes(tmp_path / "pq", "layers.0.weight") != old
    assert cli("export", tmp_path / "pq", "-o", tmp_path / "back").code == 0
    assert_same_checkpoint(source, tmp_path / "back")


def _crashed_import(tmp_path: Path, shards: int) -> tuple[Path, str]:
    """A checkpoint whose import into tmp_path/pq crashed after `shards` finished shards."""
    source = _weights(tmp_path / "hf", seed=1)
    output = str(tmp_path / "pq")
    with pytest.raises(KeyboardInterrupt):
        import_checkpoint(str(source), output, write=SMALL_SHARDS, progress=_StopAfter(shards))
    return source, output


def _assert_exports_as(output: str, source: Path, tmp_path: Path) -> None:
    export_checkpoint(output, str(tmp_path / "back"))
    assert_same_checkpoint(source, tmp_path / "back")


def test_resume_never_mixes_old_and_new_weights(tmp_path: Path) -> None:
    source, output = _crashed_import(tmp_path, 2)
    assert (tmp_path / ".pq.parquant-partial" / "model-00001-of-00004.parquet").exists()
    _weights(source, seed=2)  # the checkpoint changes between the crash and the rerun
    result = import_checkpoint(str(source), output, write=SMALL_SHARDS)
    assert not result.skipped
    _assert_exports_as(output, source, tmp_path)


def test_truncated_finished_shard_is_rewritten_on_resume(tmp_path: Path) -> None:
    source, output = _crashed_import(tmp_path, 2)
    shard = tmp_path / ".pq.parquant-partial" / "model-00001-of-00004.parquet"
    shard.write_bytes(shard.read_bytes()[:1000])  # the disk lost the end of a recorded shard
    import_checkpoint(str(source), output, write=SMALL_SHARDS)
    _assert_exports_as(output, source, tmp_path)


def test_commit_verifies_every_shard_on_s3(tmp_path: Path, s3: S3Env, cli: Cli) -> None:
    source = _weights(tmp_path / "hf", seed=1)
    output = s3.url("verified")

    def lose_first_shard(event: ProgressEvent) -> None:
        if event.phase == "write" and event.item == "layers.7.weight" and not event.note:
            (first,) = [k for k in s3.keys("verified/") if k.endswith("/model-00001-of-00004.parquet")]
            s3.client.delete_object(Bucket=s3.bucket, Key=first)

    with pytest.raises(StorageIOError, match="missing or incomplete"):
        import_checkpoint(
            str(source), output, write=SMALL_SHARDS, storage_options=s3.options, progress=lose_first_shard
        )
    assert "verified/parquant.json" not in s3.keys("verified/")  # never a manifest over a lost shard
    import_checkpoint(str(source), output, write=SMALL_SHARDS, storage_options=s3.options)
    assert "verified/parquant.json" in s3.keys("verified/")
    assert _tensor_bytes(output, "layers.0.weight", s3.options) == _tensor_bytes_of(source, "layers.0.weight")


def _tensor_bytes_of(folder: Path, name: str) -> bytes:
    from safetensors.numpy import load_file

    return bytes(load_file(str(folder / "model.safetensors"))[name].tobytes())


def test_cleanup_touches_only_its_own_output(tmp_path: Path, s3: S3Env) -> None:
    source = _weights(tmp_path / "hf", seed=1)
    other = s3.client.create_multipart_upload(Bucket=s3.bucket, Key="tiny-llama-int8/model.parquet")
    s3.client.put_object(Bucket=s3.bucket, Key="tiny-llama-int8/keep.txt", Body=b"x")
    import_checkpoint(str(source), s3.url("tiny-llama"), storage_options=s3.options)
    # --force clears the old output (and its leftover uploads) first: its own prefix only
    import_checkpoint(str(source), s3.url("tiny-llama"), storage_options=s3.options, force=True)
    assert [u["UploadId"] for u in s3.multipart_uploads()] == [other["UploadId"]]
    assert "tiny-llama-int8/keep.txt" in s3.keys("tiny-llama-int8/")


def test_lost_upload_is_retryable_and_keeps_the_output(s3: S3Env) -> None:
    location = resolve(s3.url("lost"), s3.options)
    location.fs.default_block_size = 5 * 2**20  # multipart from 5 MiB on, as with big shards
    folder = OutputFolder(location, force=False, marker="parquant.json")
    with pytest.raises(StorageIOError) as caught, folder.open_file("model.parquet") as handle:
        handle.write(os.urandom(6 * 2**20))
        handle.flush()  # the first part is uploaded...
        for upload in s3.multipart_uploads():  # ...and another run's cleanup aborts the upload
            s3.client.abort_multipart_upload(Bucket=s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        handle.write(os.urandom(2**20))
    assert caught.value.exit_code == 74 and caught.value.retryable
    # AWS answers NoSuchUpload (s3fs: FileNotFoundError) where moto answers 500: both are retryable.
    with pytest.raises(StorageIOError, match="was lost") as lost, folder.open_file("other.parquet"):
        raise FileNotFoundError("NoSuchUpload: The specified upload does not exist")
    assert lost.value.exit_code == 74
    assert s3.multipart_uploads() == []


@pytest.mark.parametrize("stage", ["import", "import-inside", "import-around", "export", "quantize"])
def test_output_equal_to_or_inside_the_input_is_refused(stage: str, tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf")
    assert cli("import", source, "-o", tmp_path / "pq").code == 0
    before = {p: p.read_bytes() for p in [*source.rglob("*"), *(tmp_path / "pq").rglob("*")] if p.is_file()}
    args = {
        "import": ["import", source, "-o", source, "--force"],
        "import-inside": ["import", source, "-o", source / "pq"],
        "import-around": ["import", source, "-o", tmp_path, "--force"],
        "export": ["export", tmp_path / "pq", "-o", tmp_path / "pq", "--force"],
        "quantize": ["quantize", tmp_path / "pq", "-o", tmp_path / "pq", "--force", "--method", "int8-weight"],
    }[stage]
    result = cli(*args)
    assert result.code == 64, result.err
    assert "outside the input" in result.err
    after = {p: p.read_bytes() for p in [*source.rglob("*"), *(tmp_path / "pq").rglob("*")] if p.is_file()}
    assert after == before


def test_output_inside_the_input_is_refused_on_s3(tmp_path: Path, s3: S3Env, cli: Cli) -> None:
    remote = upload_folder(s3, make_checkpoint(tmp_path / "hf"), "hf")
    result = cli("import", remote, "-o", f"{remote}/pq", "--storage-option", f"endpoint_url={s3.endpoint}")
    assert result.code == 64
    sibling = cli("import", remote, "-o", f"{remote}-pq", "--storage-option", f"endpoint_url={s3.endpoint}")
    assert sibling.code == 0, sibling.err  # a shared prefix without "/" is another folder


def test_export_rerun_is_skipped_like_import(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf")
    assert cli("import", source, "-o", tmp_path / "pq").code == 0
    assert cli("export", tmp_path / "pq", "-o", tmp_path / "back").code == 0
    stamp = (tmp_path / "back" / "model.safetensors").stat().st_mtime_ns
    rerun = cli("export", tmp_path / "pq", "-o", tmp_path / "back")
    assert rerun.code == 0 and json.loads(rerun.out)["skipped"] is True
    assert (tmp_path / "back" / "model.safetensors").stat().st_mtime_ns == stamp
    assert_same_checkpoint(source, tmp_path / "back")
    other = cli("export", tmp_path / "pq", "-o", tmp_path / "back", "--max-shard-size", "100KB")
    assert other.code == 73  # different work at the same output still needs --force


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf")
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (source / "notes.txt").symlink_to(secret)
    result = cli("import", source, "-o", tmp_path / "pq")
    assert result.code == 65 and "outside the checkpoint folder" in result.err
    assert "host secret" not in result.err and not (tmp_path / "pq").exists()


def test_hugging_face_cache_snapshot_layout_is_read(tmp_path: Path, cli: Cli) -> None:
    made = make_checkpoint(tmp_path / "made")
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(p for p in made.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{index}"
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    (snapshot / "inside.txt").symlink_to("README.md")  # a link inside the folder is fine too
    assert cli("import", snapshot, "-o", tmp_path / "pq").code == 0
    assert cli("export", tmp_path / "pq", "-o", tmp_path / "back").code == 0
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (made / "model.safetensors").read_bytes()


def test_free_space_check_counts_what_the_rerun_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as shutil_module
    from collections import namedtuple

    source, output = _crashed_import(tmp_path, 3)
    staged = OutputFolder(resolve(output), force=False, marker=None).staged_bytes()
    needed = (source / "model.safetensors").stat().st_size
    assert staged > needed // 2
    usage = namedtuple("usage", "total used free")
    # Free space for the missing part only: the rerun reuses the staged shards, so it proceeds.
    monkeypatch.setattr(shutil_module, "disk_usage", lambda _: usage(10**12, 0, needed - staged + 5 * 2**20))
    result = import_checkpoint(str(source), output, write=SMALL_SHARDS)
    assert not result.skipped
    monkeypatch.setattr(shutil_module, "disk_usage", lambda _: usage(10**12, 0, 1000))
    with pytest.raises(ParquantError, match="not enough disk space") as caught:
        import_checkpoint(str(source), str(tmp_path / "pq2"), write=SMALL_SHARDS)
    assert caught.value.exit_code == 74


def test_local_commit_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    import_checkpoint(str(_weights(tmp_path / "hf", seed=1)), str(tmp_path / "pq"))
    staging = str(tmp_path / ".pq.parquant-partial")
    assert f"{staging}/model.parquet.part" in synced  # the shard's bytes, before its rename
    assert f"{staging}/parquant.json.part" in synced  # the manifest's
    assert staging in synced  # the folder holding the renamed files
    assert str(tmp_path) in synced  # the parent, after the folder is renamed into place
    assert time.time() > 0


def test_big_non_tensor_file_is_streamed(tmp_path: Path) -> None:
    """A 300 MB file beside the weights never sits in memory whole (it did: 1.2 GB import RSS)."""
    import subprocess
    import sys

    from ..conftest import REPO

    source = _weights(tmp_path / "hf", seed=1)
    with open(source / "dataset.dat", "wb") as handle:
        handle.truncate(300 * 2**20)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}"}
    # VmHWM of the child's own address space (ru_maxrss would carry the parent's RSS across fork+exec)
    measure = (
        "import sys\nfrom parquant_cli.main import main\ncode = main(sys.argv[1:])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(hwm, file=sys.stderr)\nsys.exit(code)"
    )
    for args in (["import", source, "-o", tmp_path / "pq"], ["export", tmp_path / "pq", "-o", tmp_path / "back"]):
        run = subprocess.run([sys.executable, "-c", measure, *map(str, args)], env=env, capture_output=True, check=True)
        peak_mb = int(run.stderr.decode().split()[-1]) / 1024
        assert peak_mb < 300, f"{args[0]} peaked at {peak_mb:.0f} MB"
    assert (tmp_path / "back" / "dataset.dat").stat().st_size == 300 * 2**20


def test_force_replaces_only_parquant_outputs(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf")
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "holiday.jpg").write_bytes(b"\xff\xd8 not ours")
    for args in (["import", source], ["export", tmp_path / "pq"]):
        if args[0] == "export":
            assert cli("import", source, "-o", tmp_path / "pq").code == 0
        result = cli(*args, "-o", unrelated, "--force")
        assert result.code == 73 and "parquant did not write" in result.err
        assert (unrelated / "holiday.jpg").read_bytes() == b"\xff\xd8 not ours"
    (tmp_path / "empty").mkdir()
    assert cli("export", tmp_path / "pq", "-o", tmp_path / "empty", "--force").code == 0
    # an earlier export (it carries its record) and an earlier model are replaced
    assert cli("export", tmp_path / "pq", "-o", tmp_path / "empty", "--force", "--max-shard-size", "100KB").code == 0
    assert cli("import", source, "-o", tmp_path / "pq", "--force", "--chunk-size", "64KB").code == 0
