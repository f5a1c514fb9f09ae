"""One writer per output: a lock beside each output, taken before anything is read or removed there.

Two runs writing the same output would wipe each other's staging area or abort each other's
uploads, and both could exit 0 over a broken model. So every stage that writes an output first
takes its lock, a sibling named `.<name>.parquant-lock`, and a second writer fails at once with a
retryable error (exit 75) that names the holder.

How a lock is held is the store's business (storage/): an exclusive `flock` on local disk, a
leased object with conditional writes on S3, a lock within the process for memory://. This module
is the part every store shares: re-entrance within a process, the fencing check before writes,
and the fan-out workers' part locks. Locks are re-entrant within a process (quantize writes
through its own output's lock while it holds it).
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
from collections.abc import Iterator

from .fs import Location, storage_errors
from .storage import LEASE_SECONDS, WriterLock, http_status, store_for

LOCK_SUFFIX = ".parquant-lock"

_held: dict[str, tuple[WriterLock, int]] = {}
_held_guard = threading.Lock()


def lock_location(output: Location, suffix: str = "") -> Location:
    """`.../name` -> `.../.name.parquant-lock<suffix>`: beside the output, never inside it."""
    parent, name = posixpath.split(output.path.rstrip("/"))
    parent_url, _, _ = output.url.rstrip("/").rpartition("/")
    lock_name = f".{name}{LOCK_SUFFIX}{suffix}"
    return Location(output.fs, posixpath.join(parent, lock_name), f"{parent_url}/{lock_name}")


@contextlib.contextmanager
def output_lock(output: Location, suffix: str = "") -> Iterator[None]:
    """Hold the writer lock of `output` for the duration of the block (re-entrant in a process)."""
    where = lock_location(output, suffix)
    key = _held_key(where)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            _held[key] = (entry[0], entry[1] + 1)
    if entry is None:
        lock = store_for(output).new_lock(where)
        lock.acquire(output.url)
        with _held_guard:
            _held[key] = (lock, 1)
    try:
        yield
    finally:
        with _held_guard:
            held, count = _held[key]
            if count > 1:
                _held[key] = (held, count - 1)
            else:
                del _held[key]
        if count == 1:
            held.release()


def _held_key(where: Location) -> str:
    return f"{type(where.fs).__name__}:{where.path}"


def check_lock_held(output: Location, suffix: str = "", verify: bool = False) -> None:
    """Before a write or a commit: raise 75 if this process lost the lock of `output` (a lease taken
    over). `verify` reads the lock back (one request on stores where it can be lost) instead of
    trusting what was last learned: a writer stopped past its lease has not heard of it yet."""
    entry = _held.get(_held_key(lock_location(output, suffix)))
    if entry is not None:
        if verify:
            entry[0].verify()
        entry[0].check(output.url)


def is_locked(output: Location, suffix: str = "") -> bool:
    """Whether some live writer holds the lock (used to skip a fan-out worker still at work)."""
    return store_for(output).new_lock(lock_location(output, suffix)).probe()


def live_worker_locks(output: Location) -> list[str]:
    """Names of the fan-out workers' locks of `output` that a live worker still holds."""
    return [name for name, suffix in _worker_locks(output) if is_locked(output, suffix)]


def remove_dead_worker_locks(output: Location) -> list[str]:
    """Remove the fan-out part locks of `output` whose holder is gone (a killed worker leaves its
    lock file or object behind; nothing is held by it, but it misleads whoever lists the folder)."""
    removed = []
    for name, suffix in _worker_locks(output):
        if not is_locked(output, suffix):
            with storage_errors(output.url):
                store_for(output).remove(lock_location(output, suffix))
            removed.append(name)
    return removed


def _worker_locks(output: Location) -> list[tuple[str, str]]:
    """(name, suffix for lock_location) of every fan-out part lock beside `output`, held or not."""
    prefix = posixpath.basename(lock_location(output, "-part-").path)
    with storage_errors(output.url):
        names = store_for(output).siblings(output, prefix)
    return [(name, name[len(prefix) - len("-part-") :]) for name in names]


__all__ = ["LEASE_SECONDS", "check_lock_held", "http_status", "is_locked", "lock_location", "output_lock"]
