"""The storage protocol: what an output folder and a writer lock need from a store, and nothing else.

Three implementations: local disk (`local.py`: temp file + rename, a folder renamed into place,
`flock`), S3 and S3-compatible stores (`s3.py`: one PUT or a multipart upload that completes or is
aborted, conditional creates, a leased lock object), and fsspec's in-memory filesystem
(`memory.py`: whole-object writes and a lock within the one process that can see it).
`OutputFolder` (outputs.py) and the lock registry (locks.py) are written once over this protocol.

What each guarantees is in docs/reliability.md ("Stores").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

from ..errors import StorageIOError
from ..fs import Location

Fence = Callable[[], None]  # raises 75 when the writer lost its lock; called before each upload


def no_fence() -> None:
    """Stores whose locks cannot be lost while the process lives need no fencing."""


class WriterLock(Protocol):
    """One output's writer lock, as held by this process."""

    def acquire(self, output_url: str) -> None:
        """Take it, or raise 75 naming the holder."""
        ...

    def release(self) -> None: ...

    def check(self, output_url: str) -> None:
        """Raise 75 if this process lost the lock (what it last learned)."""
        ...

    def verify(self) -> None:
        """Learn whether the lock is still ours by reading it back (stores where it can be lost)."""
        ...

    def probe(self) -> bool:
        """Whether a live writer holds it (a fresh object, not the holder's)."""
        ...


class Store(Protocol):
    @property
    def renames(self) -> bool:
        """Whether a folder can be renamed into place (local disk). Otherwise every object appears
        whole when its write completes, and the marker, written last, makes the folder complete."""
        ...

    @property
    def fenced(self) -> bool:
        """Whether a writer must read its lock back before each write (its lock can be lost)."""
        ...

    def staging_for(self, location: Location) -> Location:
        """Where an output is written before it is complete."""
        ...

    def entries(self, location: Location) -> list[str] | None:
        """What an output holds: names below it (top level on disk, every object on a store), or
        None when nothing is there, or a plain file stands at its name (`[location name]`)."""
        ...

    def prepare(self, staging: Location) -> None:
        """Make the staging area exist (a folder on disk; nothing on an object store)."""
        ...

    def open_atomic(self, target: Location, native: bool = False, fence: Fence = no_fence) -> Any:
        """A context manager giving a writable handle; the file appears whole on success, never
        otherwise. `native`: an Arrow sink where the store has one (local disk)."""
        ...

    def put_atomic(self, target: Location, data: bytes, fence: Fence = no_fence) -> None: ...

    def create_exclusive(self, target: Location, data: bytes) -> bool:
        """Create `target` unless it exists (False then): the commit point of a folder on an
        object store, where two writers may both believe they hold the lock."""
        ...

    def remove(self, target: Location, recursive: bool = False) -> None:
        """Remove a file or (recursive) a folder; a missing one is no error."""
        ...

    def install(self, staging: Location, final: Location) -> None:
        """Make the staged folder the output (a rename on disk; nothing on an object store)."""
        ...

    def abort_uploads(self, location: Location) -> None:
        """Abort the unfinished uploads below `location` (a killed writer cannot abort its own)."""
        ...

    def staged_bytes(self, staging: Location) -> int:
        """Bytes already in a local staging area (a rerun reuses or frees them; 0 elsewhere)."""
        ...

    def new_lock(self, where: Location) -> WriterLock: ...

    def siblings(self, location: Location, prefix: str) -> list[str]:
        """Names beside `location` (in its parent) that start with `prefix` (fan-out part locks)."""
        ...


class ObjectStore:
    """What every store without rename shares (S3, memory://): objects are written in place and
    appear whole when their write completes; the marker, created last, makes a folder complete."""

    renames = False

    def staging_for(self, location: Location) -> Location:
        return location

    def entries(self, location: Location) -> list[str] | None:
        if not location.fs.exists(location.path):
            return None
        return location.list_files()

    def prepare(self, staging: Location) -> None:
        """Objects need no folder."""

    def install(self, staging: Location, final: Location) -> None:
        """Nothing to move: the marker, created last, made the folder complete."""

    def staged_bytes(self, staging: Location) -> int:
        return 0


@contextlib.contextmanager
def written_whole(write: Callable[[bytes], None]) -> Iterator[IO[bytes]]:
    """A handle collecting the bytes, handed to `write` at once on success: how a store without
    multipart uploads makes a streamed file appear whole or not at all."""
    import io

    buffer = io.BytesIO()
    yield buffer
    write(buffer.getvalue())


@contextlib.contextmanager
def lost_upload_is_retryable(url: str) -> Iterator[None]:
    """A write or a size check whose object vanished (aborted by a cleanup, lost by the server) is
    worth a retry (74), not "input not found" (66, which would also make the stage discard the
    whole output)."""
    try:
        yield
    except FileNotFoundError as exc:
        raise StorageIOError(
            f"the upload of {url} was lost ({' '.join(str(exc).split())[:160]}): rerun the same command"
        ) from None
