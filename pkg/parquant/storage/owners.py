"""Who holds a writer lock: the record every lock carries, and the message a second writer gets."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from ..errors import TemporaryFailure


def owner() -> dict[str, Any]:
    return {
        "owner": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "process": process_identity(os.getpid()),
    }


def process_identity(pid: int) -> str | None:
    """Boot, PID namespace and start time of a process: equal only for that very process (a PID
    alone is reused), and comparable only on the same machine and namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        with open(f"/proc/{pid}/stat") as handle:
            started = handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}:{namespace}:{pid}:{started}"


def holder_died_here(holder: dict[str, Any] | None) -> bool:
    """A lock left by a process of this machine that is gone (killed with -9): no need to wait out
    its lease. Holders elsewhere (other pods) are judged by their lease alone."""
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False
    identity = holder.get("process")
    mine = process_identity(os.getpid())
    if not isinstance(identity, str) or mine is None or identity.split(":")[:2] != mine.split(":")[:2]:
        return False
    pid = holder.get("pid")
    return not isinstance(pid, int) or process_identity(pid) != identity


def busy(output_url: str, holder: dict[str, Any] | None) -> TemporaryFailure:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
        if isinstance(holder, dict)
        else "another process"
    )
    return TemporaryFailure(
        f"another parquant run ({who}) is writing {output_url}: wait for it and rerun "
        "(a finished output is then skipped), or choose another --output"
    )
