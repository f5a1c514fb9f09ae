"""fsspec's in-memory filesystem (`memory://`): the third store, and the proof that outputs and
locks depend on the storage protocol only.

Its guarantees: an object is written whole (the bytes are collected and stored in one call), a
folder's marker is created only where none exists, and the writer lock is held within this
process, the only one that can see a `memory://` filesystem. Useful for tests and notebooks;
nothing in it outlives the process.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import threading
from collections.abc import Iterator
from typing import IO, Any

from ..fs import Location, storage_errors
from .base import Fence, ObjectStore, WriterLock, no_fence, written_whole
from .owners import busy, owner

_guard = threading.Lock()
_holders: dict[str, dict[str, Any]] = {}  # lock path -> its holder, for this process


class MemoryStore(ObjectStore):
    fenced = False  # a lock held in this process cannot be taken over

    @contextlib.contextmanager
    def open_atomic(self, target: Location, native: bool = False, fence: Fence = no_fence) -> Iterator[IO[bytes]]:
        fence()
        with written_whole(lambda data: self.put_atomic(target, data, fence)) as handle:
            yield handle

    def put_atomic(self, target: Location, data: bytes, fence: Fence = no_fence) -> None:
        fence()
        with storage_errors(target.url):
            target.fs.pipe_file(target.path, data)

    def create_exclusive(self, target: Location, data: bytes) -> bool:
        with _guard:
            if target.fs.exists(target.path):
                return False
            target.fs.pipe_file(target.path, data)
        return True

    def remove(self, target: Location, recursive: bool = False) -> None:
        if target.fs.exists(target.path):
            target.fs.rm(target.path, recursive=recursive)

    def abort_uploads(self, location: Location) -> None:
        """Writes are single calls: nothing is ever left half uploaded."""

    def new_lock(self, where: Location) -> WriterLock:
        return ProcessLock(where)

    def siblings(self, location: Location, prefix: str) -> list[str]:
        parent = posixpath.dirname(location.path.rstrip("/"))
        if not location.fs.exists(parent):
            return []
        names = (posixpath.basename(str(p).rstrip("/")) for p in location.fs.ls(parent, detail=False))
        return sorted(n for n in names if n.startswith(prefix))


class ProcessLock:
    """A lock within this process, mirrored as an object beside the output (so it can be seen)."""

    def __init__(self, where: Location) -> None:
        self.where = where
        self.held = False

    def acquire(self, output_url: str) -> None:
        with _guard:
            holder = _holders.get(self.where.path)
            if holder is not None:
                raise busy(output_url, holder)
            _holders[self.where.path] = owner()
            self.where.fs.pipe_file(self.where.path, json.dumps(_holders[self.where.path]).encode())
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        with _guard:
            _holders.pop(self.where.path, None)
            with contextlib.suppress(FileNotFoundError):
                self.where.fs.rm(self.where.path)
        self.held = False

    def check(self, output_url: str) -> None:
        """Held in this process until released: it cannot be lost."""

    def verify(self) -> None:
        """Nothing to read back: see check."""

    def probe(self) -> bool:
        with _guard:
            return self.where.path in _holders
