"""The fault campaign: kill -9 at seeded points, a killed/restarted/frozen S3 server, two writers, disk full.

Each scenario records every try in the campaign table (conftest.py) and asserts that none ended
corrupt, hung, with a traceback, or with a write outside its output.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from parquant.fs import resolve
from parquant.store.reader import ModelReader

from .conftest import Campaign, Run, S3Server, exported_equals_source, finish, has_traceback, parquant, start

pytestmark = pytest.mark.faults
IMPORT_FLAGS = ("--shard-size", "1MiB", "--chunk-size", "256KiB")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MiB of float32 in 24 tensors: 24 shards of 1 MiB, so a kill lands inside a run."""
    folder = tmp_path_factory.mktemp("faults") / "hf"
    folder.mkdir()
    rng = np.random.default_rng(7)
    save_file(
        {
            f"model.layers.{i:02d}.mlp.up_proj.weight": rng.standard_normal((512, 512), dtype=np.float32)
            for i in range(24)
        },
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "README.md").write_text("fault campaign model\n")
    return folder


def _s3(server: S3Server) -> tuple[str, ...]:
    return ("--storage-option", f"endpoint_url={server.endpoint}")


def _kill_at(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL after `delay` seconds; False when the run had already finished by then."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _judge_rerun(campaign: Campaign, scenario: str, rerun: Run, correct: bool) -> str:
    if rerun.code is None:
        return campaign.record(scenario, "hung", rerun.err[-300:])
    if has_traceback(rerun):
        return campaign.record(scenario, "traceback", rerun.err[-500:])
    if rerun.code != 0 or not correct:
        return campaign.record(scenario, "corrupt", f"rerun exit {rerun.code}, correct={correct}: {rerun.err[-300:]}")
    return campaign.record(scenario, "recovered")


def _clean_seconds(*args: object) -> float:
    run = parquant(*args)
    assert run.code == 0, run.err
    return run.seconds


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill9_during_import(
    where: str, checkpoint: Path, tmp_path: Path, campaign: Campaign, rng: random.Random, s3_server: S3Server
) -> None:
    scenario = f"kill -9 import ({where})"
    options = _s3(s3_server) if where == "s3" else ()
    clean = _clean_seconds("import", checkpoint, "-o", tmp_path / "clean", *IMPORT_FLAGS)
    outcomes = []
    for attempt in range(5 if where == "local" else 4):
        output = str(tmp_path / f"out{attempt}") if where == "local" else f"s3://faults/kill{attempt}-{rng.random()}"
        before = set(os.listdir(tmp_path))
        proc = start("import", checkpoint, "-o", output, *IMPORT_FLAGS, *options)
        _kill_at(proc, rng.uniform(0.2, clean * 1.2))
        rerun = parquant("import", checkpoint, "-o", output, *IMPORT_FLAGS, *options)
        correct = exported_equals_source(output, checkpoint, tmp_path / "check", options)
        outcomes.append(_judge_rerun(campaign, scenario, rerun, correct))
        extra = set(os.listdir(tmp_path)) - before - {"check", f"out{attempt}"}
        if extra - {f".out{attempt}.parquant-lock"}:
            outcomes.append(campaign.record(scenario, "escape", str(extra)))
        if where == "s3" and s3_server.uploads():
            outcomes.append(campaign.record(scenario, "corrupt", f"open uploads left: {s3_server.uploads()}"))
    assert set(outcomes) == {"recovered"}, campaign.notes


def test_kill9_during_forced_reimport_keeps_the_previous_output(
    checkpoint: Path, tmp_path: Path, campaign: Campaign, rng: random.Random
) -> None:
    scenario = "kill -9 --force over good output"
    output = tmp_path / "good"
    clean = _clean_seconds("import", checkpoint, "-o", output, *IMPORT_FLAGS)
    outcomes = []
    for attempt in range(3):
        chunk = ("--chunk-size", f"{64 * (attempt + 1)}KiB")
        proc = start("import", checkpoint, "-o", output, "--shard-size", "1MiB", *chunk, "--force")
        _kill_at(proc, rng.uniform(0.2, clean * 1.2))
        # Whatever the moment of the kill, a reader sees a whole model: the old one or the new one.
        whole = exported_equals_source(str(output), checkpoint, tmp_path / "check")
        if not whole:
            outcomes.append(campaign.record(scenario, "corrupt", "the previous good output was damaged"))
            continue
        rerun = parquant("import", checkpoint, "-o", output, "--shard-size", "1MiB", *chunk, "--force")
        outcomes.append(
            _judge_rerun(campaign, scenario, rerun, exported_equals_source(str(output), checkpoint, tmp_path / "c2"))
        )
    assert set(outcomes) == {"recovered"}, campaign.notes


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill9_during_export(
    where: str, checkpoint: Path, tmp_path: Path, campaign: Campaign, rng: random.Random, s3_server: S3Server
) -> None:
    scenario = f"kill -9 export ({where})"
    options = _s3(s3_server) if where == "s3" else ()
    model = tmp_path / "pq"
    assert parquant("import", checkpoint, "-o", model, *IMPORT_FLAGS).code == 0
    clean = _clean_seconds("export", model, "-o", tmp_path / "clean")
    outcomes = []
    for attempt in range(4 if where == "local" else 2):
        output = str(tmp_path / f"hf{attempt}") if where == "local" else f"s3://faults/hf{attempt}-{rng.random()}"
        proc = start("export", model, "-o", output, *options)
        _kill_at(proc, rng.uniform(0.2, clean * 1.2))
        if where == "local":  # never a half folder at the output's name
            assert not Path(output).exists() or (Path(output) / "config.json").exists()
        else:  # the marker (config.json) only once every other file is there
            key = output.removeprefix("s3://faults/")
            present = s3_server.keys(key + "/")
            assert f"{key}/config.json" not in present or f"{key}/model.safetensors" in present
        rerun = parquant("export", model, "-o", output, *options)
        if where == "s3":
            back = tmp_path / "download"
            shutil.rmtree(back, ignore_errors=True)
            back.mkdir()
            for name in ("model.safetensors", "config.json", "README.md"):
                key = f"{output.removeprefix('s3://faults/')}/{name}"
                s3_server.client().download_file("faults", key, str(back / name))
        else:
            back = Path(output)
        correct = rerun.code == 0 and all(
            (back / n).exists() and (back / n).read_bytes() == (checkpoint / n).read_bytes()
            for n in ("model.safetensors", "config.json", "README.md")
        )
        outcomes.append(_judge_rerun(campaign, scenario, rerun, correct))
    assert set(outcomes) == {"recovered"}, campaign.notes


def _tensors(model: str, options: tuple[str, ...] = ()) -> dict[str, bytes]:
    storage = dict(o.split("=", 1) for o in options[1::2])
    with ModelReader(resolve(model, storage)) as reader:
        return {name: reader.read_tensor(name) for name in reader.tensor_names()}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill9_during_quantize(
    where: str, checkpoint: Path, tmp_path: Path, campaign: Campaign, rng: random.Random, s3_server: S3Server
) -> None:
    scenario = f"kill -9 quantize ({where})"
    options = _s3(s3_server) if where == "s3" else ()
    model = tmp_path / "pq"
    assert parquant("import", checkpoint, "-o", model, *IMPORT_FLAGS).code == 0
    flags = ("--method", "int8-weight", "--shard-size", "1MiB")
    clean = _clean_seconds("quantize", model, "-o", tmp_path / "clean", *flags)
    expected = _tensors(str(tmp_path / "clean"))
    outcomes = []
    for attempt in range(3 if where == "local" else 2):
        output = str(tmp_path / f"q{attempt}") if where == "local" else f"s3://faults/q{attempt}-{rng.random()}"
        proc = start("quantize", model, "-o", output, *flags, *options)
        _kill_at(proc, rng.uniform(1.0, clean * 1.1))
        rerun = parquant("quantize", model, "-o", output, *flags, *options)
        correct = rerun.code == 0 and _tensors(output, options) == expected
        outcomes.append(_judge_rerun(campaign, scenario, rerun, correct))
    assert set(outcomes) == {"recovered"}, campaign.notes


def test_s3_server_killed_then_restarted(checkpoint: Path, tmp_path: Path, campaign: Campaign) -> None:
    scenario = "S3 server killed mid-upload"
    outcomes = []
    for attempt in range(2):
        server = S3Server()
        server.start()
        output = f"s3://faults/dies{attempt}"
        proc = start("import", checkpoint, "-o", output, *IMPORT_FLAGS, *_s3(server))
        deadline = time.monotonic() + 60
        while len(server.keys(f"dies{attempt}/")) < 3 + attempt * 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        run = finish(proc, timeout=60)
        if run.code is None:
            outcomes.append(campaign.record(scenario, "hung", run.err[-300:]))
        elif has_traceback(run):
            outcomes.append(campaign.record(scenario, "traceback", run.err[-500:]))
        elif run.code not in (74, 75):
            outcomes.append(campaign.record(scenario, "corrupt", f"exit {run.code}, not retryable"))
        else:
            server.start()  # a fresh server: everything is uploaded again
            rerun = parquant("import", checkpoint, "-o", output, *IMPORT_FLAGS, *_s3(server))
            correct = exported_equals_source(output, checkpoint, tmp_path / "check", _s3(server))
            outcomes.append(_judge_rerun(campaign, scenario, rerun, correct))
        server.kill()
    assert set(outcomes) == {"recovered"}, campaign.notes


def test_s3_server_frozen_mid_upload(
    checkpoint: Path, tmp_path: Path, campaign: Campaign, rng: random.Random, s3_server: S3Server
) -> None:
    """The server stops (SIGSTOP) with connections open: its kernel still completes handshakes and
    buffers bodies, nobody answers. Three tries at seeded points (a request waiting for the server's
    `100 Continue` once hung here for ever, in one try of three)."""
    scenario = "S3 server frozen mid-upload"
    fast = ("--storage-option", "read_timeout=3", "--storage-option", "max_attempts=1")
    outcomes = []
    seconds: list[float] = []  # from the freeze to the exit: docs/reliability.md quotes them
    for attempt in range(3):
        output = f"s3://faults/frozen{attempt}"
        proc = start("import", checkpoint, "-o", output, *IMPORT_FLAGS, *_s3(s3_server), *fast)
        freeze_after = rng.randint(3, 12)  # objects written (shards, progress records) before the freeze
        deadline = time.monotonic() + 60
        while len(s3_server.keys(f"frozen{attempt}/")) < freeze_after and time.monotonic() < deadline:
            time.sleep(0.01)
        s3_server.freeze()
        try:
            run = finish(proc, timeout=90)
        finally:
            s3_server.thaw()
        seconds.append(run.seconds)
        if run.code is None:
            outcomes.append(campaign.record(scenario, "hung", run.err[-300:]))
        elif has_traceback(run):
            outcomes.append(campaign.record(scenario, "traceback", run.err[-500:]))
        elif run.code not in (74, 75):
            outcomes.append(campaign.record(scenario, "corrupt", f"exit {run.code}"))
        else:
            rerun = parquant("import", checkpoint, "-o", output, *IMPORT_FLAGS, *_s3(s3_server))
            correct = exported_equals_source(output, checkpoint, tmp_path / "check", _s3(s3_server))
            outcomes.append(_judge_rerun(campaign, scenario, rerun, correct))
    campaign.notes.append(
        f"(figure) frozen S3 server: the run exits {', '.join(f'{s:.0f}' for s in seconds)} s after the freeze"
    )
    assert set(outcomes) == {"recovered"}, campaign.notes


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_concurrent_writers(
    where: str, checkpoint: Path, tmp_path: Path, campaign: Campaign, rng: random.Random, s3_server: S3Server
) -> None:
    scenario = f"two writers, one output ({where})"
    options = _s3(s3_server) if where == "s3" else ()
    outcomes = []
    for attempt in range(3):
        output = str(tmp_path / f"both{attempt}") if where == "local" else f"s3://faults/both{attempt}-{rng.random()}"
        first = start("import", checkpoint, "-o", output, *IMPORT_FLAGS, *options)
        time.sleep(rng.uniform(0.0, 1.5))
        second = start("import", checkpoint, "-o", output, *IMPORT_FLAGS, *options)
        runs = [finish(first, 120), finish(second, 120)]
        if any(r.code is None for r in runs):
            outcomes.append(campaign.record(scenario, "hung", ""))
            continue
        if any(has_traceback(r) for r in runs):
            outcomes.append(campaign.record(scenario, "traceback", runs[0].err[-300:] + runs[1].err[-300:]))
            continue
        codes = sorted(r.code or 0 for r in runs)
        # One writes; the other is refused (75, retryable) or, if it came after, finds it done (0).
        if codes not in ([0, 0], [0, 75]):
            outcomes.append(campaign.record(scenario, "corrupt", f"exit codes {codes}"))
            continue
        rerun = parquant("import", checkpoint, "-o", output, *IMPORT_FLAGS, *options)
        correct = exported_equals_source(output, checkpoint, tmp_path / "check", options)
        outcomes.append(_judge_rerun(campaign, scenario, rerun, correct and "skipping" in rerun.err))
    assert set(outcomes) == {"recovered"}, campaign.notes


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()}): disk-full tries skipped")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full(checkpoint: Path, small_disk: Path, tmp_path: Path, campaign: Campaign) -> None:
    scenario = "disk full (tmpfs)"
    outcomes = []
    # 1. Too small from the start: refused before writing anything.
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 30 * 2**20)
    run = parquant("import", checkpoint, "-o", small_disk / "pq", *IMPORT_FLAGS)
    ok = run.code == 74 and "not enough disk space" in run.err and not (small_disk / "pq").exists()
    outcomes.append(campaign.record(scenario, "recovered" if ok else "corrupt", run.err[-300:]))
    filler.unlink()
    # 2. The disk fills up during the run (another writer takes the space after the check).
    proc = start("import", checkpoint, "-o", small_disk / "pq", *IMPORT_FLAGS)
    time.sleep(0.6)
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 2**20)
        except OSError:
            pass
    run = finish(proc, 120)
    if run.code is None:
        outcomes.append(campaign.record(scenario, "hung", ""))
    elif has_traceback(run):
        outcomes.append(campaign.record(scenario, "traceback", run.err[-500:]))
    elif run.code not in (0, 74):
        outcomes.append(campaign.record(scenario, "corrupt", f"exit {run.code}: {run.err[-300:]}"))
    else:
        filler.unlink()
        rerun = parquant("import", checkpoint, "-o", small_disk / "pq", *IMPORT_FLAGS)
        correct = exported_equals_source(str(small_disk / "pq"), checkpoint, tmp_path / "check")
        outcomes.append(_judge_rerun(campaign, scenario, rerun, correct))
    assert set(outcomes) == {"recovered"}, campaign.notes
