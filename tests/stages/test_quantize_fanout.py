"""Quantize fan-out: workers (in-process parts, local processes, S3) each write their share of the
shards, one commit checks them and writes the manifest, and the model is byte for byte the one a
single run writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from parquant.errors import UsageError
from parquant.quant.config import load_config
from parquant.stages.quantize import quantize
from parquant.store.writer import WriteOptions

from ..conftest import CliResult, S3Env, embedded_model_in, make_checkpoint, upload_folder

WRITE = WriteOptions(chunk_bytes=64 * 1024, shard_bytes=600 * 1024)
FP8_BLOCK = load_config(flags={"method": "fp8-block", "backend": "ptq"}, environ={})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    with embedded_model_in(tmp_path_factory.mktemp("fanout"), "tiny") as model:
        return str(model)


def same_model(left: Path, right: Path) -> None:
    """Every shard byte-identical, the manifest identical but for its timings."""
    names = sorted(os.listdir(left))
    assert names == sorted(os.listdir(right)) and len([n for n in names if n.endswith(".parquet")]) >= 3
    for name in names:
        if name.endswith(".parquet"):
            assert (left / name).read_bytes() == (right / name).read_bytes(), name
    manifests = [json.loads((folder / "parquant.json").read_bytes()) for folder in (left, right)]
    for manifest in manifests:
        manifest.pop("timings")
    assert manifests[0] == manifests[1]


def test_parts_then_commit_equal_one_worker(tiny: str, tmp_path: Path) -> None:
    quantize(tiny, str(tmp_path / "single"), FP8_BLOCK, write=WRITE)
    for index in (2, 0, 1):
        result = quantize(tiny, str(tmp_path / "fanned"), FP8_BLOCK, write=WRITE, part=(index, 3))
        assert result.details["part"] == [index, 3]
        assert not (tmp_path / "fanned").exists()  # nothing visible before the commit
    committed = quantize(tiny, str(tmp_path / "fanned"), FP8_BLOCK, write=WRITE)
    assert committed.details["quantized_layers"] == 28
    same_model(tmp_path / "single", tmp_path / "fanned")


def test_local_worker_processes_equal_one_worker(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    # an MoE model: the experts are quantized by whichever worker holds their shard
    from parquant.stages.hf_import import import_checkpoint

    import_checkpoint(str(make_checkpoint(tmp_path / "hf", "qwen3_moe")), str(tmp_path / "pq"))
    flags = ("--method", "fp8-block", "--chunk-size", "16384", "--shard-size", "200KB")
    assert cli("quantize", tmp_path / "pq", "-o", tmp_path / "single", *flags).code == 0
    result = cli("quantize", tmp_path / "pq", "-o", tmp_path / "fanned", *flags, "--workers", "2")
    assert result.code == 0, result.err
    assert "fan-out: 2 local workers" in result.err
    assert json.loads(result.out.strip().splitlines()[-1])["details"]["quantized_experts"] == 24
    same_model(tmp_path / "single", tmp_path / "fanned")


def test_a_killed_workers_part_is_redone_and_the_others_kept(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "m"
    staging = tmp_path / ".m.parquant-partial"
    for index in (0, 1):
        quantize(tiny, str(out), FP8_BLOCK, write=WRITE, part=(index, 2))
    shards = sorted(p for p in staging.iterdir() if p.name.endswith(".parquet"))
    kept = {p.name: p.stat().st_mtime_ns for p in shards}
    # worker 1 killed while writing its first shard: a truncated file, and no record of it
    victim = shards[1]
    victim.write_bytes(victim.read_bytes()[:1000])
    kept.pop(victim.name)
    for record in staging.iterdir():
        if ".parquant-part-" in record.name and victim.name in record.read_text():
            record.unlink()
    quantize(tiny, str(out), FP8_BLOCK, write=WRITE, part=(1, 2))  # the rerun of worker 1
    assert {p.name: p.stat().st_mtime_ns for p in staging.iterdir() if p.name in kept} == kept
    quantize(tiny, str(out), FP8_BLOCK, write=WRITE)
    quantize(tiny, str(tmp_path / "single"), FP8_BLOCK, write=WRITE)
    same_model(tmp_path / "single", out)


def test_workers_on_s3(tiny: str, tmp_path: Path, s3: S3Env) -> None:
    from parquant.fs import resolve
    from parquant.store.reader import ModelReader

    source = upload_folder(s3, Path(tiny), "models/tiny")
    out = s3.url("q/fanned")
    for index in range(2):
        quantize(source, out, FP8_BLOCK, write=WRITE, part=(index, 2), storage_options=s3.options)
    assert "q/fanned/parquant.json" not in s3.keys("q/fanned/")
    quantize(source, out, FP8_BLOCK, write=WRITE, storage_options=s3.options)
    assert not any(".parquant-part-" in k for k in s3.keys("q/fanned/"))
    quantize(source, s3.url("q/single"), FP8_BLOCK, write=WRITE, storage_options=s3.options)
    # shards live in data-<work>/ on object stores; the same work, the same folder name
    shards = [k.removeprefix("q/single/") for k in s3.keys("q/single/") if k.endswith(".parquet")]
    assert len(shards) >= 3 and all(name.startswith("data-") for name in shards)
    assert shards == [k.removeprefix("q/fanned/") for k in s3.keys("q/fanned/") if k.endswith(".parquet")]
    for name in shards:
        left = s3.client.get_object(Bucket=s3.bucket, Key=f"q/single/{name}")["Body"].read()
        assert left == s3.client.get_object(Bucket=s3.bucket, Key=f"q/fanned/{name}")["Body"].read()
    with ModelReader(resolve(out, s3.options)) as fanned, ModelReader(resolve(s3.url("q/single"), s3.options)) as one:
        assert fanned.manifest.tensors == one.manifest.tensors


def test_what_cannot_fan_out_is_refused(tiny: str, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    angelslim = load_config(flags={"method": "fp8-dynamic", "backend": "angelslim"}, environ={})
    with pytest.raises(UsageError, match="cannot fan out"):
        quantize(tiny, str(tmp_path / "a"), angelslim, part=(0, 2))
    result = cli("quantize", tiny, "-o", tmp_path / "b", "--method", "int8-dynamic", "--workers", "2")
    assert result.code == 64 and "cannot fan out" in result.err and not (tmp_path / ".b.parquant-partial").exists()
    assert cli("quantize", tiny, "-o", tmp_path / "c", "--workers", "2", "--force").code == 64
    assert cli("quantize", tiny, "-o", tmp_path / "d", "--shard-count", "2", "--shard-index", "2").code == 64


def test_a_local_worker_killed_by_a_signal_is_a_temporary_failure_and_leaves_no_lock(
    tiny: str, tmp_path: Path, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: exit 137 (not in the exit-code table) and the killed worker's part lock left behind."""
    import stat
    import sys

    from parquant.stages import fanout

    python = tmp_path / "python"  # worker 1 is killed by SIGKILL as it starts; worker 0 runs for real
    python.write_text(f'#!/bin/sh\ncase "$*" in *"--shard-index 1"*) kill -9 $$;; esac\nexec {sys.executable} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(fanout.sys, "executable", str(python))
    out = tmp_path / "m"
    (tmp_path / ".m.parquant-lock-part-1-of-2").write_text("{}")  # what a killed worker leaves behind
    flags = ("--method", "fp8-block", "--shard-size", "1MB")
    result = cli("quantize", tiny, "-o", out, *flags, "--workers", "2")
    assert result.code == 75, result.err
    assert "fan-out worker 1 of 2 was killed by SIGKILL" in result.err
    assert not (tmp_path / ".m.parquant-lock-part-1-of-2").exists()
    monkeypatch.undo()
    worker = cli("quantize", tiny, "-o", out, *flags, "--shard-index", "1", "--shard-count", "2")
    assert "fan-out worker 1 of 2 wrote its share of" in worker.err and not (out / "parquant.json").exists()
    again = cli("quantize", tiny, "-o", out, *flags, "--workers", "2")
    assert again.code == 0, again.err
    done = json.loads(again.out.strip().splitlines()[-1])
    manifest = json.loads((out / "parquant.json").read_text())
    assert done["seconds"] >= manifest["timings"]["stage_seconds"] > 0.5  # the workers' time counts
