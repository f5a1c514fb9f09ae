"""One writer per output: a lock beside each output, taken before anything is read or removed there.

Two runs writing the same output would wipe each other's staging area or abort each other's
uploads, and both could exit 0 over a broken model. So every stage that writes an output first
takes its lock, a sibling named `.<name>.parquant-lock`, and a second writer fails at once with a
retryable error (exit 75) that names the holder.

- Local disk (and any POSIX filesystem with working `flock`, NFSv4 included): an exclusive `flock`.
  The kernel drops it when the holder dies, even on `kill -9`, so a dead writer's lock is free at
  once and never has to be broken.
- S3: an object created with a conditional write (`If-None-Match: *`), holding a lease that a
  heartbeat thread renews (`If-Match` on the lock's ETag). A lock whose lease ran out, by the
  server's own clock (its `Last-Modified` against the `Date` of the reply), belongs to a dead or
  stalled writer and is taken over with the same compare-and-swap; so is, at once, a lock whose
  holder was a process of this very machine that no longer exists (a rerun after `kill -9`).
  A writer whose renewal fails learns it lost the lock and stops before committing (exit 75).
  Fencing: a writer also reads its lock back before every upload (`check_lock_held(...,
  verify=True)`), so a writer stopped past its lease (SIGSTOP, a frozen VM) finds out before it
  writes another byte, and the manifest, the commit point, is created with `If-None-Match: *`, so
  a stale writer can never replace the model another writer committed.
- Conditional writes are probed once per bucket and process: after the lock is created, creating it
  again with `If-None-Match: *` must fail. An endpoint that answers 501 or silently ignores the
  condition cannot give one writer per output; parquant refuses to write there (69) unless the
  user takes that on (`--storage-option unsafe_single_writer=true`: then the lock is best effort,
  read back after writing, which misses two writers starting within one round trip).

Locks are re-entrant within a process (quantize imports AngelSlim's result into its own output).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import posixpath
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import fsspec.asyn

from .errors import ParquantError, TemporaryFailure, UnavailableError
from .fs import Location, storage_errors

log = logging.getLogger("parquant")

LOCK_SUFFIX = ".parquant-lock"
# S3 lease: renewed every LEASE_SECONDS / 4; a lock not renewed for LEASE_SECONDS is stale.
LEASE_SECONDS = float(os.environ.get("PARQUANT_LOCK_LEASE_SECONDS", "60"))

_held: dict[str, tuple[Any, int]] = {}
_CONDITIONS_HONOURED: dict[tuple[str, str], bool] = {}  # (endpoint, bucket) -> probed once a process
_held_guard = threading.Lock()


def lock_location(output: Location, suffix: str = "") -> Location:
    """`.../name` -> `.../.name.parquant-lock<suffix>`: beside the output, never inside it."""
    parent, name = posixpath.split(output.path.rstrip("/"))
    parent_url, _, _ = output.url.rstrip("/").rpartition("/")
    lock_name = f".{name}{LOCK_SUFFIX}{suffix}"
    return Location(output.fs, posixpath.join(parent, lock_name), f"{parent_url}/{lock_name}")


def _owner() -> dict[str, Any]:
    return {
        "owner": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "process": _process_identity(os.getpid()),
    }


def _process_identity(pid: int) -> str | None:
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


def _holder_died_here(holder: dict[str, Any] | None) -> bool:
    """A lock left by a process of this machine that is gone (killed with -9): no need to wait out
    its lease. Holders elsewhere (other pods) are judged by their lease alone."""
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False
    identity = holder.get("process")
    mine = _process_identity(os.getpid())
    if not isinstance(identity, str) or mine is None or identity.split(":")[:2] != mine.split(":")[:2]:
        return False
    pid = holder.get("pid")
    return not isinstance(pid, int) or _process_identity(pid) != identity


def _busy(output_url: str, holder: dict[str, Any] | None) -> TemporaryFailure:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
        if isinstance(holder, dict)
        else "another process"
    )
    return TemporaryFailure(
        f"another parquant run ({who}) is writing {output_url}: wait for it and rerun "
        "(a finished output is then skipped), or choose another --output"
    )


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
        lock: _LocalLock | _S3Lock = _LocalLock(where) if output.is_local else _S3Lock(where)
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
    """Before an upload or a commit: raise 75 if this process lost the lock of `output` (S3 lease
    taken over). `verify` reads the lock object back (one request) instead of trusting what the
    heartbeat last learned: a writer stopped past its lease has not heard of it yet."""
    entry = _held.get(_held_key(lock_location(output, suffix)))
    if entry is not None:
        if verify and isinstance(entry[0], _S3Lock):
            entry[0].verify()
        entry[0].check(output.url)


def is_locked(output: Location, suffix: str = "") -> bool:
    """Whether some live writer holds the lock (used to skip a fan-out worker still at work)."""
    where = lock_location(output, suffix)
    if output.is_local:
        return _LocalLock(where).probe()
    return _S3Lock(where).probe()


def live_worker_locks(output: Location) -> list[str]:
    """Names of the fan-out workers' locks of `output` that a live worker still holds."""
    return [name for name, suffix in _worker_locks(output) if is_locked(output, suffix)]


def remove_dead_worker_locks(output: Location) -> list[str]:
    """Remove the fan-out part locks of `output` whose holder is gone (a killed worker leaves its
    lock file or object behind; nothing is held by it, but it misleads whoever lists the folder)."""
    removed = []
    for name, suffix in _worker_locks(output):
        if not is_locked(output, suffix):
            where = lock_location(output, suffix)
            with storage_errors(output.url), contextlib.suppress(FileNotFoundError):
                if output.is_local:
                    os.unlink(where.path)
                else:
                    bucket, _, key = where.path.partition("/")
                    output.fs.call_s3("delete_object", Bucket=bucket, Key=key)
            removed.append(name)
    return removed


def _worker_locks(output: Location) -> list[tuple[str, str]]:
    """(name, suffix for lock_location) of every fan-out part lock beside `output`, held or not."""
    base = lock_location(output, "-part-")
    parent, prefix = posixpath.split(base.path)
    with storage_errors(output.url):
        if output.is_local:
            names = [n for n in os.listdir(parent) if n.startswith(prefix)] if os.path.isdir(parent) else []
        else:
            bucket, _, key_prefix = base.path.partition("/")
            listing = output.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key_prefix)
            names = [posixpath.basename(item["Key"]) for item in listing.get("Contents", [])]
    return [(name, name[len(prefix) - len("-part-") :]) for name in sorted(names)]


class _LocalLock:
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
                        raise _busy(output_url, holder) from None
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
            os.write(fd, json.dumps(_owner()).encode())
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


class _S3Lock:
    def __init__(self, where: Location) -> None:
        self.where = where
        self.bucket, _, self.key = where.path.partition("/")
        self.etag: str | None = None
        self.body = b""
        self.lost = False
        self.conditional = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- S3 calls -------------------------------------------------------------------------------
    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.where.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def _put(self, **condition: str) -> str:
        reply = self._call("put_object", Body=self.body, **condition)
        return str(reply.get("ETag", ""))

    def _read(self) -> tuple[dict[str, Any] | None, str, bool]:
        """(holder, etag, stale) of the lock object; raises FileNotFoundError when there is none."""
        reply, body = fsspec.asyn.sync(self.where.fs.loop, self._get_object)
        try:
            holder = json.loads(body)
        except ValueError:
            holder = None
        modified = reply.get("LastModified")
        date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        server_now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        age = (server_now - modified).total_seconds() if modified is not None else 0.0
        return (holder if isinstance(holder, dict) else None), str(reply.get("ETag", "")), age > LEASE_SECONDS

    async def _get_object(self) -> tuple[dict[str, Any], bytes]:
        reply = await self.where.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
        body = await reply["Body"].read()
        return reply, body

    # -- protocol -------------------------------------------------------------------------------
    def acquire(self, output_url: str) -> None:
        owner = _owner()
        self.body = json.dumps(owner).encode()
        with storage_errors(self.where.url):
            try:
                self.etag = self._put(IfNoneMatch="*")
            except Exception as exc:
                if _not_implemented(exc):
                    self._refuse_unless_opted_in(output_url, "answers 501 (not implemented) to conditional writes")
                    self.conditional = False
                    self._acquire_unconditional(output_url)
                elif http_status(exc) in (409, 412):
                    self._take_over_if_stale(output_url)
                else:
                    raise
            holder, etag, _ = self._read()
            if not holder or holder.get("owner") != owner["owner"]:
                raise _busy(output_url, holder)
            if self.conditional and not self._conditions_honoured():
                self.conditional = False
                try:
                    self._refuse_unless_opted_in(output_url, "ignores If-None-Match (a second create succeeded)")
                except ParquantError:
                    with contextlib.suppress(Exception):
                        self._call("delete_object")
                    raise
            self.etag = etag or self.etag
        self._thread = threading.Thread(target=self._heartbeat, name="parquant-lock-lease", daemon=True)
        self._thread.start()

    def _conditions_honoured(self) -> bool:
        """Whether this bucket's endpoint honours `If-None-Match: *`, probed once per process and
        bucket on an object of its own beside the lock (never the lock itself, which another writer
        may take over meanwhile): created once with the condition, the second create must fail."""
        key = (str(self.where.fs.storage_options.get("client_kwargs", {}).get("endpoint_url")), self.bucket)
        if key not in _CONDITIONS_HONOURED:
            probe = f"{self.key}.probe-{uuid.uuid4().hex[:12]}"
            call = self.where.fs.call_s3
            try:
                call("put_object", Bucket=self.bucket, Key=probe, Body=b"probe", IfNoneMatch="*")
                call("put_object", Bucket=self.bucket, Key=probe, Body=b"probe", IfNoneMatch="*")
            except Exception as exc:
                honoured = http_status(exc) in (409, 412)
                if not honoured and not _not_implemented(exc):
                    raise
            else:
                honoured = False
            finally:
                with contextlib.suppress(Exception):
                    call("delete_object", Bucket=self.bucket, Key=probe)
            _CONDITIONS_HONOURED[key] = honoured
        return _CONDITIONS_HONOURED[key]

    def _refuse_unless_opted_in(self, output_url: str, what: str) -> None:
        if getattr(self.where.fs, "unsafe_single_writer", False):
            log.warning(
                "the S3 endpoint of %s %s: one writer per output is NOT guaranteed (unsafe_single_writer=true)",
                output_url,
                what,
            )
            return
        raise UnavailableError(
            f"the S3 endpoint of {output_url} {what}, so parquant cannot keep two runs from writing the same "
            "output: use an endpoint with conditional writes (AWS S3, MinIO, Ceph RGW 18+), or make sure only one "
            "run writes at a time and pass --storage-option unsafe_single_writer=true"
        )

    def verify(self) -> None:
        """Read the lock back: ours (same ETag, or same owner where writes are unconditional), or lost."""
        if self.lost:
            return
        try:
            with storage_errors(self.where.url):
                try:
                    holder, etag, _ = self._read()
                except FileNotFoundError:  # released by the writer that took it over
                    holder, etag = None, ""
        except ParquantError:
            return  # the storage did not answer: the upload that follows meets the same trouble
        ours = holder is not None and holder.get("owner") == json.loads(self.body).get("owner")
        if not ours or (self.conditional and self.etag and etag and etag != self.etag):
            self.lost = True
            log.error("lost the writer lock %s: another writer took it over", self.where.url)

    def _acquire_unconditional(self, output_url: str) -> None:
        log.warning("%s does not support conditional writes: the writer lock is best effort", self.where.url)
        try:
            holder, _, stale = self._read()
        except FileNotFoundError:
            holder, stale = None, True
        if holder is not None and not stale and not _holder_died_here(holder):
            raise _busy(output_url, holder)
        self.etag = self._put()

    def _take_over_if_stale(self, output_url: str) -> None:
        try:
            holder, etag, stale = self._read()
        except FileNotFoundError:  # released in between: try once more
            self.etag = self._put(IfNoneMatch="*")
            return
        if not stale and not _holder_died_here(holder):
            raise _busy(output_url, holder)
        log.warning("taking over the writer lock of %s from a writer that is gone (%s)", output_url, holder)
        try:
            self.etag = self._put(IfMatch=etag)
        except Exception as exc:
            if http_status(exc) in (409, 412):  # somebody else took it over first
                raise _busy(output_url, None) from None
            raise

    def _heartbeat(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4) and self.renew():
            pass

    def renew(self) -> bool:
        """Extend the lease once (compare-and-swap on our ETag); False once the lock is lost."""
        try:
            self.etag = self._put(**({"IfMatch": self.etag} if self.conditional and self.etag else {}))
        except Exception as exc:
            if http_status(exc) in (404, 409, 412):
                self.lost = True
                log.error("lost the writer lock %s: another writer took it over", self.where.url)
                return False
            log.warning("could not renew the writer lock %s (%s); retrying", self.where.url, exc)
        return True

    def check(self, output_url: str) -> None:
        if self.lost:
            raise TemporaryFailure(
                f"this run lost the writer lock of {output_url} (its lease ran out and another run took it): "
                "nothing was committed; rerun"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        with contextlib.suppress(Exception):
            self._call("delete_object", **({"IfMatch": self.etag} if self.conditional and self.etag else {}))

    def probe(self) -> bool:
        try:
            with storage_errors(self.where.url):
                holder, _, stale = self._read()
        except Exception:
            return False
        return not stale and not _holder_died_here(holder)


def _response(exc: BaseException) -> dict[str, Any]:
    """botocore's error response, also when s3fs has translated the error into an OSError."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return response
    return {}


def http_status(exc: BaseException) -> int:
    return int(_response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _not_implemented(exc: BaseException) -> bool:
    """The endpoint has no conditional writes (it says 501 / NotImplemented to them)."""
    return http_status(exc) == 501 or _code(exc) == "NotImplemented"


def _code(exc: BaseException) -> str:
    return str(_response(exc).get("Error", {}).get("Code", ""))


__all__ = ["LEASE_SECONDS", "check_lock_held", "is_locked", "lock_location", "output_lock"]
