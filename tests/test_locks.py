"""One writer per output: the lock beside each output, on local disk (flock) and S3 (conditional writes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parquant import locks
from parquant.errors import TemporaryFailure, UnavailableError
from parquant.fs import resolve
from parquant.locks import check_lock_held, is_locked, live_worker_locks, lock_location, output_lock
from parquant.storage import s3 as s3_store

from .conftest import REPO, CliResult, S3Env, make_checkpoint

Cli = Callable[..., CliResult]


def _hold_in_child(target: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A second process that takes the lock of `target`, says so, and waits to be killed."""
    code = (
        "import sys, time\n"
        "from parquant.fs import resolve\n"
        "from parquant.locks import output_lock\n"
        "with output_lock(resolve(sys.argv[1])):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}", **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-c", code, target], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


def test_lock_lives_beside_the_output(tmp_path: Path) -> None:
    where = lock_location(resolve(str(tmp_path / "models" / "m")))
    assert where.path == str(tmp_path / "models" / ".m.parquant-lock")


def test_second_local_writer_fails_fast_and_reentry_is_allowed(tmp_path: Path) -> None:
    output = resolve(str(tmp_path / "out"))
    holder = _hold_in_child(str(tmp_path / "out"))
    try:
        with pytest.raises(TemporaryFailure) as caught, output_lock(output):
            pass
        assert caught.value.exit_code == 75
        assert f"pid {holder.pid}" in caught.value.message and "is writing" in caught.value.message
        assert is_locked(output)
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed writer: the kernel drops its lock
        holder.wait()
    assert not is_locked(output)
    with output_lock(output), output_lock(output):  # re-entrant in one process
        check_lock_held(output)
    assert not (tmp_path / ".out.parquant-lock").exists()


def test_import_refuses_while_another_run_writes_the_output(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf")
    holder = _hold_in_child(str(tmp_path / "pq"))
    try:
        result = cli("import", source, "-o", tmp_path / "pq")
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 75
    assert "another parquant run" in result.err
    assert not (tmp_path / "pq").exists() and not (tmp_path / ".pq.parquant-partial").exists()
    assert cli("import", source, "-o", tmp_path / "pq").code == 0


def test_fan_out_workers_lock_their_part_only(tmp_path: Path) -> None:
    output = resolve(str(tmp_path / "out"))
    with output_lock(output, "-part-0-of-2"), output_lock(output, "-part-1-of-2"):
        assert live_worker_locks(output) == [".out.parquant-lock-part-0-of-2", ".out.parquant-lock-part-1-of-2"]
        with output_lock(output):  # the final run's own lock is another one
            pass
    assert live_worker_locks(output) == []
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time\nfrom parquant.fs import resolve\nfrom parquant.locks import output_lock\n"
            "with output_lock(resolve(sys.argv[1]), '-part-1-of-2'):\n    print('held', flush=True); time.sleep(600)",
            str(tmp_path / "out"),
        ],
        env={**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}"},
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert live_worker_locks(output) == [".out.parquant-lock-part-1-of-2"]
    finally:
        holder.kill()
        holder.wait()


def test_s3_lock_is_exclusive_and_released(s3: S3Env) -> None:
    output = resolve(s3.url("models/m"), s3.options)
    where = lock_location(output)
    with output_lock(output):
        assert "models/.m.parquant-lock" in s3.keys("models/")
        holder = json.loads(s3.client.get_object(Bucket=s3.bucket, Key="models/.m.parquant-lock")["Body"].read())
        assert holder["pid"] == os.getpid()
        with pytest.raises(TemporaryFailure, match="is writing"):
            s3_store.LeaseLock(where).acquire(output.url)  # a second writer (as another process would)
        assert is_locked(output)
    assert "models/.m.parquant-lock" not in s3.keys("models/")


def test_s3_stale_lock_is_taken_over_and_the_loser_learns_it(s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_store, "LEASE_SECONDS", 1.0)
    output = resolve(s3.url("m"), s3.options)
    where = lock_location(output)
    # A writer killed with -9 leaves its lock object behind; nobody renews its lease.
    s3.client.put_object(Bucket=s3.bucket, Key=".m.parquant-lock", Body=b'{"owner": "dead", "pid": 1}')
    with pytest.raises(TemporaryFailure):
        s3_store.LeaseLock(where).acquire(output.url)
    time.sleep(2.1)  # S3 times have one-second resolution
    first = s3_store.LeaseLock(where)
    first.acquire(output.url)  # took the dead writer's lock over
    first._stop.set()  # now this writer stalls: its renewals stop...
    assert first._thread is not None
    first._thread.join()
    time.sleep(2.1)
    second = s3_store.LeaseLock(where)
    second.acquire(output.url)  # ...so a new writer takes over
    assert first.renew() is False  # the stalled writer's next renewal finds out
    with pytest.raises(TemporaryFailure, match="lost the writer lock"):
        first.check(output.url)
    first.release()  # a loser never deletes the winner's lock
    assert ".m.parquant-lock" in s3.keys("")
    second.release()
    assert ".m.parquant-lock" not in s3.keys("")


def test_s3_endpoint_without_conditional_writes_gets_a_best_effort_lock(
    s3: S3Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from botocore.exceptions import ClientError

    real_put = s3_store.LeaseLock._put

    def put(self: s3_store.LeaseLock, **condition: str) -> str:
        if condition:  # an endpoint that implements no conditional writes
            error = {"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}}
            raise ClientError(error, "PutObject")
        return real_put(self)

    monkeypatch.setattr(s3_store.LeaseLock, "_put", put)
    refused = resolve(s3.url("plain"), s3.options)
    with pytest.raises(UnavailableError, match=r"answers 501.*unsafe_single_writer=true"):
        s3_store.LeaseLock(lock_location(refused)).acquire(refused.url)
    assert ".plain.parquant-lock" not in s3.keys("")
    output = resolve(s3.url("plain"), {**s3.options, "unsafe_single_writer": "true"})
    first = s3_store.LeaseLock(lock_location(output))
    first.acquire(output.url)
    assert "best effort" in caplog.text and "NOT guaranteed" in caplog.text and first.conditional is False
    with pytest.raises(TemporaryFailure, match="is writing"):
        s3_store.LeaseLock(lock_location(output)).acquire(output.url)  # its lock is read back: refused
    assert first.renew() is True
    first.release()
    assert ".plain.parquant-lock" not in s3.keys("")


def test_an_endpoint_that_ignores_conditions_is_refused_unless_the_user_opts_in(
    s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: treated as safe, so two writers both exited 0. The probe: a second create must fail."""
    import fsspec.asyn

    from parquant.fs import s3_filesystem_class

    cls = s3_filesystem_class()
    real = cls._call_s3

    async def conditions_dropped(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("IfNoneMatch", None)  # what such an endpoint does with them
        kwargs.pop("IfMatch", None)
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(cls, "_call_s3", conditions_dropped)
    monkeypatch.setattr(cls, "call_s3", fsspec.asyn.sync_wrapper(conditions_dropped))
    monkeypatch.setattr(s3_store, "_CONDITIONS_HONOURED", {})
    output = resolve(s3.url("ignored/m"), s3.options)
    with pytest.raises(UnavailableError, match="ignores If-None-Match"):
        s3_store.LeaseLock(lock_location(output)).acquire(output.url)
    assert "ignored/.m.parquant-lock" not in s3.keys("ignored/")  # nothing left behind
    opted = resolve(s3.url("ignored/m"), {**s3.options, "unsafe_single_writer": "true"})
    lock = s3_store.LeaseLock(lock_location(opted))
    lock.acquire(opted.url)
    assert lock.conditional is False
    lock.release()


def test_a_writer_stopped_past_its_lease_learns_it_before_its_next_upload(
    s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat of a stopped writer has not run: the read-back before each upload finds out."""
    from parquant.outputs import OutputFolder

    monkeypatch.setattr(s3_store, "LEASE_SECONDS", 1.0)
    output = resolve(s3.url("fenced/m"), s3.options)
    folder = OutputFolder(output, force=False, marker="parquant.json")
    with folder.locked():
        held = locks._held[locks._held_key(lock_location(output))][0]
        held._stop.set()  # stopped: no renewal from here on
        held._thread.join()
        folder.write_bytes("before.txt", b"ok")
        time.sleep(2.1)
        other = s3_store.LeaseLock(lock_location(output))
        other.acquire(output.url)  # the lease ran out: another writer takes over
        assert held.lost is False  # nothing told the stopped writer yet
        with pytest.raises(TemporaryFailure, match="lost the writer lock"):
            folder.write_bytes("after.txt", b"stale")
        with pytest.raises(TemporaryFailure, match="lost the writer lock"):
            folder.commit(b"{}")
        other.release()
    assert "fenced/m/before.txt" in s3.keys("fenced/") and "fenced/m/after.txt" not in s3.keys("fenced/")
    assert "fenced/m/parquant.json" not in s3.keys("fenced/")


def test_the_marker_is_created_never_replaced_on_s3(s3: S3Env) -> None:
    from parquant.outputs import OutputFolder

    output = resolve(s3.url("once/m"), s3.options)
    folder = OutputFolder(output, force=False, marker="parquant.json")
    with folder.locked():
        folder.begin("fp")
        s3.client.put_object(Bucket=s3.bucket, Key="once/m/parquant.json", Body=b"another writer's model")
        with pytest.raises(TemporaryFailure, match="another run committed"):
            folder.commit(b"this run's model")
    body = s3.client.get_object(Bucket=s3.bucket, Key="once/m/parquant.json")["Body"].read()
    assert body == b"another writer's model"
