"""No hangs: a dying S3 server and SIGTERM end a run within seconds, with its code and no open uploads."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ..conftest import S3Env
from .test_convert_s3 import _start_import


@pytest.fixture
def own_server(s3: S3Env) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A moto server of this test's own, which the test may kill (the session's one must live)."""
    import boto3

    from ..conftest import _free_port

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="faults")
            break
        except Exception:
            assert time.monotonic() < deadline and proc.poll() is None, "moto did not start"
            time.sleep(0.2)
    yield proc, endpoint
    proc.kill()
    proc.wait()


def _keys(endpoint: str) -> list[str]:
    import boto3

    listing = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").list_objects_v2(Bucket="faults")
    return [item["Key"] for item in listing.get("Contents", [])]


def _multipart_checkpoint(folder: Path) -> Path:
    """64 MiB in one shard: s3fs uploads it in 50 MiB parts (a multipart upload)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    tensors = {f"w{i}": rng.standard_normal((2048, 2048), dtype=np.float32) for i in range(4)}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def test_server_dying_mid_upload_ends_the_run_in_seconds(
    tmp_path: Path, own_server: tuple[subprocess.Popen[bytes], str]
) -> None:
    """The upload of a part fails; the process must exit, not retry through a dead event loop."""
    import boto3

    server, endpoint = own_server
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    source = _multipart_checkpoint(tmp_path / "hf")
    options = ["--storage-option", f"endpoint_url={endpoint}", "--shard-size", "1GiB"]
    proc = _start_import(str(source), "s3://faults/out", options)
    deadline = time.monotonic() + 120
    while not client.list_multipart_uploads(Bucket="faults").get("Uploads"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    server.kill()
    killed = time.monotonic()
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()  # a hung run must not outlive the test
    assert time.monotonic() - killed < 60
    assert proc.returncode in (74, 75), err.decode()
    assert b"Traceback" not in err
    assert len([line for line in err.splitlines() if b'"level": "error"' in line]) == 1


def test_sigterm_aborts_uploads_and_exits_143(tmp_path: Path, s3: S3Env) -> None:
    folder = _multipart_checkpoint(tmp_path / "hf")
    proc = _start_import(
        str(folder), s3.url("term"), ["--storage-option", f"endpoint_url={s3.endpoint}", "--shard-size", "1GiB"]
    )
    deadline = time.monotonic() + 120
    while not s3.multipart_uploads():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err.decode()
    assert b"terminated (SIGTERM)" in err and b"Traceback" not in err
    assert s3.multipart_uploads() == []
    assert "term/parquant.json" not in s3.keys("term/")


def test_stale_work_folders_of_killed_runs_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from parquant import workdirs

    monkeypatch.setenv("PARQUANT_WORK_DIR", str(tmp_path / "work"))
    code = (
        "import time\nfrom parquant.workdirs import work_folder\n"
        "with work_folder('angelslim') as f:\n"
        "    (f / 'model.safetensors').write_bytes(b'x' * 1000)\n"
        "    print(f, flush=True); time.sleep(600)\n"
    )
    env = {"PYTHONPATH": str(Path(workdirs.__file__).parents[1]), "PARQUANT_WORK_DIR": str(tmp_path / "work")}
    killed = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    alive = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    assert killed.stdout is not None and alive.stdout is not None
    killed_folder = Path(killed.stdout.readline().decode().strip())
    alive_folder = Path(alive.stdout.readline().decode().strip())
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    try:
        with workdirs.work_folder("model") as mine:
            assert mine.is_dir()
            assert not killed_folder.exists()  # a dead run's scratch is gone...
            assert alive_folder.exists()  # ...a live run's is never touched
    finally:
        alive.kill()
        alive.wait()
    assert not mine.exists()
