"""S3 and S3-compatible stores (MinIO, Ceph RGW): no rename, so nothing is ever half visible.

An object appears only when its upload completes: small files are one PUT, big ones a multipart
upload that is completed, or aborted (a killed writer's uploads are aborted by the next run). The
commit point of a folder, its marker, is created with `If-None-Match: *`, never replaced.

The writer lock is an object created with a conditional write, holding a lease that a heartbeat
thread renews (`If-Match` on the lock's ETag). A lock whose lease ran out, by the server's own
clock (its `Last-Modified` against the `Date` of the reply), belongs to a dead or stalled writer
and is taken over with the same compare-and-swap; so is, at once, a lock whose holder was a
process of this very machine that no longer exists (a rerun after `kill -9`). A writer whose
renewal fails learns it lost the lock and stops before committing (exit 75). Fencing: a writer
reads its lock back before every upload (`WriterLock.verify`), so a writer stopped past its
lease (SIGSTOP, a frozen VM) finds out before it writes another byte.

Conditional writes are probed once per bucket and process: after the lock is created, creating a
probe object twice with `If-None-Match: *` must fail the second time. An endpoint that answers
501 or silently ignores the condition cannot give one writer per output; parquant refuses to
write there (69) unless the user takes that on (`--storage-option unsafe_single_writer=true`:
then the lock is best effort, read back after writing, which misses two writers starting within
one round trip).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import IO, Any

import fsspec.asyn

from ..errors import ParquantError, TemporaryFailure, UnavailableError
from ..fs import Location, storage_errors
from .base import Fence, ObjectStore, WriterLock, lost_upload_is_retryable, no_fence
from .owners import busy, holder_died_here, owner

log = logging.getLogger("parquant")

# The lease: renewed every LEASE_SECONDS / 4; a lock not renewed for LEASE_SECONDS is stale.
LEASE_SECONDS = float(os.environ.get("PARQUANT_LOCK_LEASE_SECONDS", "60"))
_CONDITIONS_HONOURED: dict[tuple[str, str], bool] = {}  # (endpoint, bucket) -> probed once a process


class S3Store(ObjectStore):
    fenced = True

    @contextlib.contextmanager
    def open_atomic(self, target: Location, native: bool = False, fence: Fence = no_fence) -> Iterator[IO[bytes]]:
        fence()
        with lost_upload_is_retryable(target.url):
            remote = target.fs.open(target.path, "wb", autocommit=False)
            try:
                yield remote
                remote.close()
                fence()  # the object becomes visible with the commit: only while ours
                remote.commit()
            except BaseException:
                _abandon(remote)
                raise

    def put_atomic(self, target: Location, data: bytes, fence: Fence = no_fence) -> None:
        # One PUT, atomic on S3: a file opened for writing would take three calls (start, part,
        # complete), and small records (progress after every shard) are written often.
        fence()
        with storage_errors(target.url), lost_upload_is_retryable(target.url):
            target.fs.pipe_file(target.path, data)

    def create_exclusive(self, target: Location, data: bytes) -> bool:
        bucket, _, key = target.path.partition("/")
        with storage_errors(target.url):
            try:
                target.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:
                if http_status(exc) not in (409, 412):
                    raise
                return False
        target.fs.invalidate_cache(posixpath.dirname(target.path))
        return True

    def remove(self, target: Location, recursive: bool = False) -> None:
        if recursive and not target.fs.exists(target.path):
            return
        with contextlib.suppress(FileNotFoundError):
            target.fs.rm(target.path, recursive=recursive)

    def abort_uploads(self, location: Location) -> None:
        bucket, _, key = location.path.partition("/")
        # The trailing slash matters: `models/m` must not match the uploads of `models/m-int8/...`.
        prefix = key.rstrip("/") + "/" if key else ""
        listing = location.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        for upload in listing.get("Uploads", []):
            location.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])

    def new_lock(self, where: Location) -> WriterLock:
        return LeaseLock(where)

    def siblings(self, location: Location, prefix: str) -> list[str]:
        parent = posixpath.dirname(location.path.rstrip("/"))
        bucket, _, key_prefix = posixpath.join(parent, prefix).partition("/")
        listing = location.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key_prefix)
        return sorted(posixpath.basename(item["Key"]) for item in listing.get("Contents", []))


class LeaseLock:
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
        me = owner()
        self.body = json.dumps(me).encode()
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
            if not holder or holder.get("owner") != me["owner"]:
                raise busy(output_url, holder)
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
        if holder is not None and not stale and not holder_died_here(holder):
            raise busy(output_url, holder)
        self.etag = self._put()

    def _take_over_if_stale(self, output_url: str) -> None:
        try:
            holder, etag, stale = self._read()
        except FileNotFoundError:  # released in between: try once more
            self.etag = self._put(IfNoneMatch="*")
            return
        if not stale and not holder_died_here(holder):
            raise busy(output_url, holder)
        log.warning("taking over the writer lock of %s from a writer that is gone (%s)", output_url, holder)
        try:
            self.etag = self._put(IfMatch=etag)
        except Exception as exc:
            if http_status(exc) in (409, 412):  # somebody else took it over first
                raise busy(output_url, None) from None
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
        return not stale and not holder_died_here(holder)


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


def _abandon(remote: Any) -> None:
    """Drop a failed upload without ever leaving it open: an open s3fs file retries its upload at
    garbage collection, which hangs the process at exit when the event loop is already gone."""
    try:
        remote.discard()
    except Exception:  # the server may be gone; the next run aborts what is left
        pass
    finally:
        remote.closed = True
        remote.buffer = None
