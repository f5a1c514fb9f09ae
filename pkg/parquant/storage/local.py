"""Local disk (and any POSIX filesystem with `rename` and working `flock`, NFSv4 included).

A file is written as `name.part`, flushed to disk while it grows, fsynced and renamed over its
name; an output folder is staged in a hidden sibling and renamed into place; the writer lock is
an exclusive `flock` on a sibling file, which the kernel drops when the holder dies (even on
`kill -9`), so a dead writer's lock is free at once and never has to be broken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from typing import IO, Any

from ..fs import Location, storage_errors
from .base import Fence, WriterLock, no_fence
from .owners import busy, owner


class LocalStore:
    renames = True
    fenced = False

    def staging_for(self, location: Location) -> Location:
        parent, name = os.path.split(location.path.rstrip("/"))
        return Location(location.fs, os.path.join(parent, f".{name}.parquant-partial"), location.url)

    def entries(self, location: Location) -> list[str] | None:
        path = location.path
        if not os.path.lexists(path):
            return None
        if not os.path.isdir(path) or os.path.islink(path):
            return [os.path.basename(path.rstrip("/"))]
        return os.listdir(path)

    def prepare(self, staging: Location) -> None:
        os.makedirs(staging.path, exist_ok=True)

    @contextlib.contextmanager
    def open_atomic(self, target: Location, native: bool = False, fence: Fence = no_fence) -> Iterator[IO[bytes]]:
        with _local_atomic(target.path, native) as handle:
            yield handle

    def put_atomic(self, target: Location, data: bytes, fence: Fence = no_fence) -> None:
        with _local_atomic(target.path) as handle:
            handle.write(data)

    def create_exclusive(self, target: Location, data: bytes) -> bool:
        # On disk the lock cannot be lost while the process lives: the marker is written like any file.
        self.put_atomic(target, data)
        return True

    def remove(self, target: Location, recursive: bool = False) -> None:
        _remove(target.path)

    def install(self, staging: Location, final: Location) -> None:
        path = final.path.rstrip("/")
        old = staging.path + "-old"
        _remove(old)
        if os.path.lexists(path):
            os.replace(path, old)  # --force: the old output stays whole until the new one is in place
        os.replace(staging.path, path)
        _fsync_dir(os.path.dirname(path) or ".")
        _remove(old)

    def abort_uploads(self, location: Location) -> None:
        """Local writes leave `.part` files inside the staging area, which is cleared or reused."""

    def staged_bytes(self, staging: Location) -> int:
        if not os.path.isdir(staging.path):
            return 0
        total = 0
        for root, _, names in os.walk(staging.path):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    def new_lock(self, where: Location) -> WriterLock:
        return FlockLock(where)

    def siblings(self, location: Location, prefix: str) -> list[str]:
        parent = os.path.dirname(location.path.rstrip("/"))
        return sorted(n for n in os.listdir(parent) if n.startswith(prefix)) if os.path.isdir(parent) else []


class FlockLock:
    def __init__(self, where: Location) -> None:
        self.where = where
        self.fd = -1

    def acquire(self, output_url: str) -> None:
        with storage_errors(self.where.url):
            os.makedirs(os.path.dirname(self.where.path) or ".", exist_ok=True)
            while True:
                fd = os.open(self.where.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    holder = _read_json_fd(fd)
                    os.close(fd)
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        raise busy(output_url, holder) from None
                    raise
                # The previous holder may have unlinked the file between our open and our flock:
                # then we locked a dead inode; start again on the current one.
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.where.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(owner()).encode())
            self.fd = fd

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.where.path)  # while still locked: a waiter then sees a new inode
        os.close(self.fd)
        self.fd = -1

    def check(self, output_url: str) -> None:
        """A kernel lock cannot be lost while the process lives."""

    def verify(self) -> None:
        """Nothing to read back: see check."""

    def probe(self) -> bool:
        try:
            fd = os.open(self.where.path, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False


def _read_json_fd(fd: int) -> dict[str, Any] | None:
    try:
        loaded = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


@contextlib.contextmanager
def _local_atomic(path: str, native: bool = False) -> Iterator[IO[bytes]]:
    """Write `path.part`, then rename it over `path`; on any failure remove the partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".part"
    try:
        with _native_file(partial) if native else open(partial, "wb") as handle, _writeback(partial):
            yield handle
        _fsync_file(partial)  # the bytes are on disk before the name says they are there
        os.replace(partial, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


@contextlib.contextmanager
def _writeback(path: str, every_seconds: float = 0.1) -> Iterator[None]:
    """Flush the file to disk in the background while it is being written, so the fsync before
    its rename waits for the last fraction of a second of writes, not for the whole file."""
    stop = threading.Event()
    fd = os.open(path, os.O_RDONLY)

    def flush() -> None:
        while not stop.wait(every_seconds):
            with contextlib.suppress(OSError):
                os.fdatasync(fd)

    thread = threading.Thread(target=flush, name="parquant-writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        os.close(fd)


def _native_file(path: str) -> Any:
    import pyarrow as pa  # only the Parquet writer asks for a native sink

    return pa.OSFile(path, "wb")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    """A folder's entries to disk (renames); best effort, as some filesystems refuse it."""
    with contextlib.suppress(OSError):
        _fsync_file(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
