"""Import/export through a real S3 endpoint on 127.0.0.1 (moto server) via s3fs, as in production."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from safetensors.numpy import save_file

from parquant.fs import resolve, s3_filesystem_class
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.hf_import import import_checkpoint
from parquant.store.reader import ModelReader
from parquant.store.writer import WriteOptions

from ..byte_counting_proxy import ByteCountingProxy
from ..conftest import REPO, CliResult, S3Env, make_checkpoint, upload_folder
from ..helpers import assert_same_checkpoint

Cli = Callable[..., CliResult]


def test_round_trip_through_s3(tmp_path: Path, s3: S3Env) -> None:
    source = make_checkpoint(tmp_path / "hf", "qwen3", shard_size="60KB")
    remote_hf = upload_folder(s3, source, "checkpoints/qwen3")
    write = WriteOptions(chunk_bytes=8192, shard_bytes=64 * 1024)
    import_checkpoint(remote_hf, s3.url("models/qwen3"), write=write, storage_options=s3.options)
    keys = s3.keys("models/qwen3/")
    assert "models/qwen3/parquant.json" in keys and len([k for k in keys if k.endswith(".parquet")]) > 1
    assert not any(".parquant-progress" in k for k in keys)
    export_checkpoint(s3.url("models/qwen3"), s3.url("export/qwen3"), storage_options=s3.options)
    export_checkpoint(s3.url("models/qwen3"), str(tmp_path / "back"), storage_options=s3.options)
    assert_same_checkpoint(source, tmp_path / "back")
    assert sorted(k.removeprefix("export/qwen3/") for k in s3.keys("export/qwen3/")) == sorted(
        p.name for p in (tmp_path / "back").iterdir()
    )
    assert s3.multipart_uploads() == []


def test_local_checkpoint_to_s3_model_via_cli(tmp_path: Path, s3: S3Env, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf", "gpt2")
    result = cli("import", source, "-o", s3.url("m"), "--storage-option", f"endpoint_url={s3.endpoint}")
    assert result.code == 0, result.err
    inspected = cli("inspect", s3.url("m"), "--json", "--storage-option", f"endpoint_url={s3.endpoint}")
    assert json.loads(inspected.out)["architecture"] == "GPT2LMHeadModel"
    assert "testing-secret" not in result.err + inspected.err


def test_single_tensor_read_fetches_a_small_fraction(tmp_path: Path, s3: S3Env) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.weight": rng.standard_normal((256, 256), dtype=np.float32) for i in range(32)}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    import_checkpoint(upload_folder(s3, folder, "hf"), s3.url("pq"), storage_options=s3.options)
    (shard,) = [k for k in s3.keys("pq/") if k.endswith(".parquet")]  # pq/data-<work>/model.parquet
    shard_bytes = s3.client.head_object(Bucket=s3.bucket, Key=shard)["ContentLength"]
    upstream = urlparse(s3.endpoint)
    with ByteCountingProxy((upstream.hostname or "", upstream.port or 80)) as proxy:
        s3_filesystem_class().clear_instance_cache()
        location = resolve(s3.url("pq"), {"endpoint_url": f"http://127.0.0.1:{proxy.port}"})
        with ModelReader(location) as reader:
            proxy.reset()
            data = reader.read_tensor("layers.17.weight")
            fetched = proxy.received
    assert data == tensors["layers.17.weight"].tobytes()
    tensor_bytes = 256 * 256 * 4
    print(f"single-tensor read: {fetched} bytes fetched; tensor {tensor_bytes} bytes; shard {shard_bytes} bytes")
    assert fetched < 0.1 * shard_bytes
    assert fetched <= tensor_bytes + 64 * 1024  # the manifest's data_pages: no footer read


def test_no_credentials(tmp_path: Path, s3: S3Env, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    result = cli("import", source, "-o", s3.url("m"), "--storage-option", f"endpoint_url={s3.endpoint}")
    assert result.code == 77
    assert "no credentials" in result.err and "AWS_ACCESS_KEY_ID" in result.err


def test_wrong_endpoint_is_a_temporary_failure(tmp_path: Path, s3: S3Env, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama")
    started = time.monotonic()
    result = cli("import", source, "-o", s3.url("m"), "--storage-option", "endpoint_url=http://127.0.0.1:9")
    assert result.code == 75
    assert "cannot reach the storage endpoint" in result.err
    assert time.monotonic() - started < 60


def test_endpoint_that_accepts_and_never_answers_cannot_hold_a_run(tmp_path: Path, s3: S3Env) -> None:
    """A frozen server (or proxy) completes TCP handshakes from its kernel's backlog and then says
    nothing: every call, uploads included, must end by its read timeout, never wait for ever."""
    source = make_checkpoint(tmp_path / "hf", "llama")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # never accepted: the kernel answers the handshake, nobody reads
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = _start_import(
            str(source),
            s3.url("m"),
            ["--storage-option", f"endpoint_url={endpoint}", "--storage-option", "read_timeout=1"],
        )
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the import waited on a silent endpoint for over 90 s")
    assert proc.returncode in (74, 75), err.decode()[-500:]
    assert b"Traceback" not in err


def test_missing_bucket(tmp_path: Path, s3: S3Env, cli: Cli) -> None:
    result = cli(
        "export",
        "s3://no-such-bucket-parquant/m",
        "-o",
        tmp_path / "out",
        "--storage-option",
        f"endpoint_url={s3.endpoint}",
    )
    assert result.code == 66 and "not found" in result.err
    source = make_checkpoint(tmp_path / "hf", "llama")
    result = cli(
        "import", source, "-o", "s3://no-such-bucket-parquant/m", "--storage-option", f"endpoint_url={s3.endpoint}"
    )
    assert result.code == 66 and "bucket" in result.err


def _big_checkpoint(folder: Path, tensors: int, shape: tuple[int, int]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    save_file(
        {f"layers.{i:03d}.weight": rng.standard_normal(shape, dtype=np.float32) for i in range(tensors)},
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def _start_import(source: str, output: str, extra: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parquant_cli",
            "import",
            source,
            "-o",
            output,
            "--shard-size",
            "1MiB",
            "--log-format",
            "json",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, "import finished before it could be killed: make the model bigger"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_s3_import_leaves_no_manifest_and_resumes(tmp_path: Path, s3: S3Env) -> None:
    source = _big_checkpoint(tmp_path / "hf", 48, (512, 512))  # 48 MiB, 1 MiB shards
    output = s3.url("killed")
    options = ["--storage-option", f"endpoint_url={s3.endpoint}"]
    proc = _start_import(str(source), output, options)
    _kill_when(proc, lambda: len(s3.keys("killed/")) >= 4)
    assert "killed/parquant.json" not in s3.keys("killed/")
    rerun = _start_import(str(source), output, options)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert b"resuming:" in err
    assert "killed/parquant.json" in s3.keys("killed/")
    assert s3.multipart_uploads() == []
    with ModelReader(resolve(output, s3.options)) as reader:
        assert len(reader.tensor_names()) == 48
        assert reader.read_tensor("layers.047.weight") == (source / "model.safetensors").read_bytes()[-512 * 512 * 4 :]
