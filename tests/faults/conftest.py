"""The fault campaign (`make test-faults`): seeded kills, a dying/frozen S3 server, concurrent writers,
disk full and fuzzed inputs, each try classified and counted in one table at the end.

Every try ends as one of: recovered (the documented outcome: a clean exit code, and after the
rerun a result bit-identical to a clean run), corrupt (a wrong or broken result, or a damaged
previous output), hung (no exit within its bound), traceback (an exit 70 or a Python traceback),
escape (a file written outside the output). Only the first two may be non-zero.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..conftest import REPO, _free_port

SEED = int(os.environ.get("PARQUANT_FAULT_SEED", "20261201"))
OUTCOMES = ("recovered", "corrupt", "hung", "traceback", "escape")


@dataclass
class Campaign:
    """Outcomes of every try, by scenario; printed as the campaign table."""

    tries: dict[str, Counter[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, scenario: str, outcome: str, note: str = "") -> str:
        assert outcome in OUTCOMES, outcome
        self.tries.setdefault(scenario, Counter())[outcome] += 1
        if outcome != "recovered":
            self.notes.append(f"{scenario}: {outcome}: {note}")
        return outcome

    def table(self) -> str:
        lines = [
            f"fault campaign (seed {SEED})",
            f"{'scenario':<34}{'tries':>6}{'recovered':>10}{'corrupt':>8}{'hung':>6}{'traceback':>10}{'escape':>7}",
        ]
        total: Counter[str] = Counter()
        for scenario, counts in sorted(self.tries.items()):
            total.update(counts)
            lines.append(_row(scenario, counts))
        lines.append(_row("total", total))
        return "\n".join(lines + self.notes)


def _row(name: str, counts: Counter[str]) -> str:
    return (
        f"{name:<34}{sum(counts.values()):>6}{counts['recovered']:>10}{counts['corrupt']:>8}"
        f"{counts['hung']:>6}{counts['traceback']:>10}{counts['escape']:>7}"
    )


_CAMPAIGN = Campaign()


@pytest.fixture(scope="session")
def campaign() -> Campaign:
    return _CAMPAIGN


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """One seeded generator per test, so a failing try reproduces with the same seed."""
    return random.Random(f"{SEED}:{request.node.nodeid}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _CAMPAIGN.tries:
        return
    table = _CAMPAIGN.table()
    terminalreporter.write_sep("=", "fault campaign")
    terminalreporter.write_line(table)
    out = REPO / "out" / "faults"
    out.mkdir(parents=True, exist_ok=True)
    (out / "campaign.txt").write_text(table + "\n")
    (out / "campaign.json").write_text(json.dumps({k: dict(v) for k, v in _CAMPAIGN.tries.items()}, indent=1))


@dataclass
class Run:
    code: int | None  # None: killed because it did not exit in time (hung)
    err: str
    seconds: float


def parquant(*args: object, timeout: float = 120, env: dict[str, str] | None = None) -> Run:
    """Run the real CLI in its own process; a run past `timeout` is killed and reported as hung."""
    proc = start(*args, env=env)
    return finish(proc, timeout)


def start(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "parquant_cli", *(str(a) for a in args), "--log-format", "json"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float) -> Run:
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
        return Run(proc.returncode, err.decode(errors="replace"), time.monotonic() - started)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return Run(None, err.decode(errors="replace"), time.monotonic() - started)


def exported_equals_source(model: str, source: Path, work: Path, options: tuple[str, ...] = ()) -> bool:
    """Whether `model`, exported into `work`, gives the source checkpoint's weights and config back
    byte for byte (the rerun-after-a-fault check of every scenario)."""
    shutil.rmtree(work, ignore_errors=True)
    run = parquant("export", model, "-o", work, *options, timeout=120)
    if run.code != 0:
        return False
    return all((work / n).read_bytes() == (source / n).read_bytes() for n in ("model.safetensors", "config.json"))


def has_traceback(run: Run) -> bool:
    return run.code == 70 or "Traceback (most recent call last)" in run.err


class S3Server:
    """A moto server of the campaign's own, which it kills, restarts and freezes."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart, on the same port) the server; a port still held by the killed one's
        last connections makes the first attempts fail to bind, so those are retried."""
        deadline = time.monotonic() + 60
        while True:
            # its request log goes to a file: a pipe nobody reads would fill and block the server
            log = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the server runs
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            while self.proc.poll() is None:
                try:
                    self.client().create_bucket(Bucket="faults")
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError("moto server did not answer") from None
                    time.sleep(0.2)
            log.seek(0)
            reason = log.read().decode(errors="replace")[-300:]
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {reason}")
            time.sleep(1.0)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, prefix: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket="faults", Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def uploads(self) -> list[Any]:
        return list(self.client().list_multipart_uploads(Bucket="faults").get("Uploads", []))

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session", autouse=True)
def aws_environment() -> None:
    """Fake credentials for the campaign's own loopback servers; no lookups beyond loopback."""
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull,
        }
    )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.kill()


def snapshot(root: Path, ignore: tuple[Path, ...] = ()) -> set[str]:
    """Every path under `root` except those under `ignore` (to find writes outside the output)."""
    found = set()
    for path in root.rglob("*"):
        if not any(path == i or i in path.parents for i in ignore):
            found.add(str(path.relative_to(root)))
    return found
