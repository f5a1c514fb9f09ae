"""Atomic, resumable output folders.

A reader must never see half a model, and a killed run must resume instead of restarting. Local
disk: files are written into a hidden sibling folder and the folder is renamed into place at the
end. S3 (no rename): each object appears only when its upload completes (a failed upload is
aborted, never completed), and the marker file (the manifest) is written last. In both cases a
progress record lists the files already finished, keyed by a fingerprint of the input and config,
so a rerun of the same work skips them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from typing import IO, Any

from .errors import OutputExistsError, ParquantError, StorageIOError, TemporaryFailure
from .fs import Location, storage_errors
from .locks import check_lock_held, http_status, is_locked, live_worker_locks, output_lock

PROGRESS_NAME = ".parquant-progress.json"
# Inside an exported HF folder: what was exported (a hidden name, so a later import ignores it).
EXPORT_RECORD_NAME = ".parquant-export.json"
_PARQUET_MAGIC = b"PAR1"
# Files that only parquant writes at the top of an output: what makes a folder safe to --force over.
_OUTPUT_MARKERS = frozenset({"parquant.json", EXPORT_RECORD_NAME, "report.json", PROGRESS_NAME})
MANIFEST_OR_RECORD = "parquant.json, .parquant-export.json or report.json"
# One record per file written by a fan-out worker (import --shard-index): workers run in parallel,
# so each records its own files instead of sharing the progress record.
WORKER_RECORD_PREFIX = ".parquant-part-"
# On object stores a Parquet model's shards live in a folder named after the work's fingerprint
# (`data-<16 hex>/`): a stale writer of other work (its lock taken over while it was stopped) can
# only ever write into its own folder, never over the shards of the model another writer
# committed; writers of the same work write the same bytes. The manifest names the shards with it.
MODEL_MARKER = "parquant.json"
DATA_FOLDER_PREFIX = "data-"


class OutputFolder:
    """One output folder of one stage run; see the module docstring for the protocol."""

    def __init__(self, location: Location, *, force: bool, marker: str | None) -> None:
        self.location = location
        self.force = force
        self.marker = marker
        if location.is_local:
            parent, name = os.path.split(location.path.rstrip("/"))
            self.staging = Location(location.fs, os.path.join(parent, f".{name}.parquant-partial"), location.url)
        else:
            self.staging = location
        self._progress: dict[str, Any] = {}
        self._worker = False  # a fan-out worker's view (begin_worker): never clears shared staging
        self._data_folder = ""  # object stores, Parquet models: data-<fingerprint>/ (MODEL_MARKER)
        self._lock_suffix = ""  # the lock this run holds: the output's, or a fan-out worker's part

    # -- one writer ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, part: tuple[int, int] | None = None) -> Iterator[OutputFolder]:
        """Hold this output's writer lock (exit 75 if another run holds it); fan-out workers lock
        only their own part, since the workers of one import write into the same output at once."""
        suffix = "" if part is None else f"-part-{part[0]}-of-{part[1]}"
        self._lock_suffix = suffix
        with output_lock(self.location, suffix):
            if part is not None and is_locked(self.location):
                # A commit holds the main lock (and, having taken it, refuses while a part lock is
                # held): a worker that starts now, e.g. a retried Indexed-Job pod, waits its turn.
                raise TemporaryFailure(
                    f"another run is committing {self.location.url}: fan-out worker {part[0]} of {part[1]} "
                    "starts after it (rerun: a committed output is skipped)"
                )
            yield self

    # -- before writing -------------------------------------------------------------------------
    def check_free(self) -> None:
        """Refuse (exit 73) when the output holds something that is not ours to overwrite.

        `--force` replaces an earlier parquant output (a model, an export, a report, an unfinished
        run), never a folder of files parquant did not write.
        """
        if self.force:
            self._check_replaceable()
            return
        with storage_errors(self.location.url):
            if self.location.is_local:
                taken = os.path.exists(self.location.path) and (
                    not os.path.isdir(self.location.path) or bool(os.listdir(self.location.path))
                )
            else:
                names = self._remote_names()
                taken = any(name != PROGRESS_NAME for name in names)
                ours = any(_unfinished_run_file(name) for name in names)
                if taken and ours and not self._marker_exists():
                    taken = False  # our own unfinished run (or fan-out workers' files): resume it
        if taken:
            raise OutputExistsError(
                f"output {self.location.url} already exists: pass --force to overwrite it, or choose another --output"
            )

    def _check_replaceable(self) -> None:
        with storage_errors(self.location.url):
            if self.location.is_local:
                path = self.location.path
                if not os.path.lexists(path):
                    return
                names = os.listdir(path) if os.path.isdir(path) and not os.path.islink(path) else None
            else:
                names = self._remote_names()
        if names is not None and (not names or any(n in _OUTPUT_MARKERS or _unfinished_run_file(n) for n in names)):
            return
        raise OutputExistsError(
            f"output {self.location.url} holds files that parquant did not write (no {MANIFEST_OR_RECORD}): "
            "--force only replaces parquant outputs; remove them yourself or choose another --output"
        )

    def published(self, relpath: str) -> str:
        """Where a file written with `open_file(relpath)` lies relative to the output (what a
        manifest names): in the work's data folder for a Parquet model on an object store."""
        return f"{self._data_folder}/{relpath}" if self._data_folder else relpath

    def _stage_for(self, fingerprint: str) -> None:
        if not self.location.is_local and self.marker == MODEL_MARKER:
            self._data_folder = DATA_FOLDER_PREFIX + hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
            self.staging = self.location.child(self._data_folder)

    def begin(self, fingerprint: str) -> dict[str, Any]:
        """Prepare the staging area; returns what a previous run of the same work already finished."""
        self._stage_for(fingerprint)
        busy = live_worker_locks(self.location)
        if busy:
            raise TemporaryFailure(
                f"fan-out workers are still writing {self.location.url} ({', '.join(busy)}): "
                "wait for them to finish, then rerun"
            )
        with storage_errors(self.location.url):
            if not self.location.is_local:
                self._fence()  # a stale writer never aborts the uploads of the run that took over
                self._abort_dangling_uploads()
            previous = self._read_progress()
            workers = self.worker_records(fingerprint)
            if previous.get("fingerprint") == fingerprint and not (self.force and self._marker_exists()):
                self._progress = previous
                self._progress["done"].update(workers)
            elif workers and not self._marker_exists():
                self._progress = {"fingerprint": fingerprint, "done": workers}
            else:
                self._clear_staging()
                self._progress = {"fingerprint": fingerprint, "done": {}}
                if self.location.is_local:
                    os.makedirs(self.staging.path, exist_ok=True)
        done: dict[str, Any] = self._progress["done"]
        return done

    def begin_worker(self, fingerprint: str) -> None:
        """A fan-out worker's start: make the staging area, never clear it (other workers write there)."""
        self._stage_for(fingerprint)
        self._worker = True
        with storage_errors(self.location.url):
            if self.location.is_local:
                os.makedirs(self.staging.path, exist_ok=True)

    def record_worker_file(self, relpath: str, fingerprint: str, info: Any) -> None:
        """A fan-out worker's record of one finished file, for the run that writes the marker."""
        payload = json.dumps({"fingerprint": fingerprint, "file": relpath, "info": info}).encode()
        self.write_bytes(WORKER_RECORD_PREFIX + relpath + ".json", payload)

    def worker_records(self, fingerprint: str) -> dict[str, Any]:
        """Files that fan-out workers finished for this exact work (records of other work are ignored)."""
        found: dict[str, Any] = {}
        with storage_errors(self.location.url):
            for name in self._staged_worker_records():
                try:
                    record = json.loads(self.staging.child(name).read_bytes())
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
                    found[str(record["file"])] = record["info"]
        return found

    # -- writing ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_file(self, relpath: str, native: bool = False) -> Iterator[IO[bytes]]:
        """Write one file so that it appears whole or not at all.

        `native`: on local disk, hand out an Arrow OSFile (fastest sink for pyarrow's Parquet writer;
        slower than a Python file for plain big writes, measured).
        """
        target = self.staging.child(relpath)
        with storage_errors(target.url):
            if self.location.is_local:
                with _local_atomic(target.path, native) as handle:
                    yield handle
            else:
                self._fence()
                with _lost_upload_is_retryable(target.url):
                    remote = self.location.fs.open(target.path, "wb", autocommit=False)
                    try:
                        yield remote
                        remote.close()
                        self._fence()  # the object becomes visible with the commit: only while ours
                        remote.commit()
                    except BaseException:
                        _abandon(remote)
                        raise

    def write_bytes(self, relpath: str, data: bytes) -> None:
        if self.location.is_local:
            with self.open_file(relpath) as handle:
                handle.write(data)
            return
        # One PUT, atomic on S3: a file opened for writing would take three calls (start, part,
        # complete), and small records (progress after every shard) are written often.
        target = self.staging.child(relpath)
        self._fence()
        with storage_errors(target.url), _lost_upload_is_retryable(target.url):
            self.location.fs.pipe_file(target.path, data)

    def _fence(self) -> None:
        """Before an upload to an object store: this run still holds its lock (read back, one
        request), else exit 75 without writing. A writer stopped past its lease never writes into
        the output of the run that took the lock over (locks.py)."""
        check_lock_held(self.location, self._lock_suffix, verify=True)

    def record(self, relpath: str, info: Any) -> None:
        """Mark `relpath` finished so a rerun of the same work skips it."""
        self._progress["done"][relpath] = info
        self._save_progress()

    def _save_progress(self) -> None:
        self.write_bytes(PROGRESS_NAME, json.dumps(self._progress).encode())

    def staged_size(self, relpath: str) -> int:
        """Size of a file written into the staging area (recorded, so a resume can check it)."""
        if not self.location.is_local:
            self._fence()  # a file gone because another writer took over: 75, not "not found"
        target = self.staging.child(relpath)
        with storage_errors(target.url), _lost_upload_is_retryable(target.url):
            return int(self.location.fs.size(target.path))

    def intact(self, relpath: str, size: int | None, parquet: bool = False) -> bool:
        """Whether a file a previous run recorded as finished is still whole (size, Parquet footer).

        The cheapest check that catches a file truncated or lost after it was recorded: one
        listing entry, plus the 4-byte magic at the end of a Parquet file.
        """
        target = self.staging.child(relpath)
        with storage_errors(target.url):
            self.location.fs.invalidate_cache(target.path)
            try:
                actual = int(self.location.fs.info(target.path)["size"])
            except FileNotFoundError:
                return False
            if size is not None and actual != size:
                return False
            return not parquet or (actual >= 8 and target.read_range(actual - 4, actual) == _PARQUET_MAGIC)

    def verify(self, expected: dict[str, int | None], parquet: bool = False) -> None:
        """Before the marker: every file it will name is present and whole, else exit 74 (retryable)."""
        for relpath, size in expected.items():
            if not self.intact(relpath, size, parquet):
                self._progress.get("done", {}).pop(relpath, None)
                with contextlib.suppress(Exception):
                    self._save_progress()
                raise StorageIOError(
                    f"{self.staging.child(relpath).url} is missing or incomplete after it was written "
                    "(the storage lost it): rerun the same command; the other finished files are kept"
                )

    def staged_bytes(self) -> int:
        """Bytes already in the local staging area: a rerun either reuses them or frees them."""
        if not self.location.is_local or not os.path.isdir(self.staging.path):
            return 0
        total = 0
        for root, _, names in os.walk(self.staging.path):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    # -- finishing --------------------------------------------------------------------------------
    def commit(self, marker_bytes: bytes | None = None) -> None:
        """Write the marker last and make the folder visible at its final URL."""
        check_lock_held(self.location)
        if self.marker is not None and marker_bytes is not None:
            if self.location.is_local:
                self.write_bytes(self.marker, marker_bytes)
            else:
                self._create_marker(marker_bytes)
        with storage_errors(self.location.url):
            progress = self.staging.child(PROGRESS_NAME)
            if progress.exists():
                self.location.fs.rm(progress.path)
            for name in self._staged_worker_records():
                self.location.fs.rm(self.staging.child(name).path)
            if self.location.is_local:
                self._swap_into_place()
            elif self._data_folder:
                self._remove_other_data_folders()

    def _create_marker(self, data: bytes) -> None:
        """The commit on an object store: the marker is created, never replaced (`If-None-Match:
        *`; any earlier marker was removed when this run began), so of two writers that both
        believe they hold the lock, the second finds the first's model and stops (75)."""
        self._fence()
        target = self.location.child(self.marker or "")
        bucket, _, key = target.path.partition("/")
        with storage_errors(target.url):
            try:
                self.location.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:
                if http_status(exc) not in (409, 412):
                    raise
                raise TemporaryFailure(
                    f"another run committed {self.location.url} while this one was writing (its lock was taken "
                    "over): nothing of this run was committed; rerun (a finished output is then skipped or refused)"
                ) from None
        self.location.fs.invalidate_cache(self.location.path)

    def _remove_other_data_folders(self) -> None:
        """What the committed manifest does not name: other works' data folders (a writer whose
        lock was taken over, an abandoned run of other input) and an older layout's shards."""
        keep = (self._data_folder + "/", self.marker or "")
        others = [n for n in self._remote_names() if not n.startswith(keep) and n != self.marker]
        folders = sorted({n.split("/", 1)[0] for n in others if n.startswith(DATA_FOLDER_PREFIX) and "/" in n})
        files = [n for n in others if not (n.startswith(DATA_FOLDER_PREFIX) and "/" in n)]
        for name in folders:
            with contextlib.suppress(FileNotFoundError):
                self.location.fs.rm(self.location.child(name).path, recursive=True)
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                self.location.fs.rm(self.location.child(name).path)

    def _swap_into_place(self) -> None:
        final = self.location.path.rstrip("/")
        old = self.staging.path + "-old"
        _remove(old)
        if os.path.lexists(final):
            os.replace(final, old)  # --force: the old output stays whole until the new one is in place
        os.replace(self.staging.path, final)
        _fsync_dir(os.path.dirname(final) or ".")
        _remove(old)

    def discard(self) -> None:
        """Remove what this run wrote, after a failure that a rerun cannot fix (bad input). A
        fan-out worker removes nothing: the staging area holds the other workers' finished files,
        and its own are whole (each appears atomically) and belong to the same work."""
        if self._worker:
            return
        with storage_errors(self.location.url):
            if self.location.is_local:
                _remove(self.staging.path)
            elif not self._marker_exists():
                self._clear_staging()

    # -- helpers ----------------------------------------------------------------------------------
    def _marker_exists(self) -> bool:
        return self.marker is not None and self.location.child(self.marker).exists()

    def _read_progress(self) -> dict[str, Any]:
        progress = self.staging.child(PROGRESS_NAME)
        if not progress.exists():
            return {}
        try:
            loaded = json.loads(progress.read_bytes())
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) and "done" in loaded else {}

    def _clear_staging(self) -> None:
        if self.location.is_local:
            if os.path.isdir(self.staging.path):
                shutil.rmtree(self.staging.path)
            return
        self._fence()  # a writer stopped past its lease deletes nothing of the run that took over
        if self._marker_exists():
            # Remove the marker first: from here on readers see "incomplete", never a mix.
            self.location.fs.rm(self.location.child(self.marker or "").path)
        # a model's own data folder only: other objects (another work's folder, an older layout's
        # shards) go after this run's commit, never before it
        target = self.staging if self._data_folder else self.location
        if self.location.fs.exists(target.path):
            self.location.fs.rm(target.path, recursive=True)
        self.location.fs.invalidate_cache(self.location.path)

    def _staged_worker_records(self) -> list[str]:
        """Names of the fan-out workers' records in the staging area."""
        if self.location.is_local:
            names = os.listdir(self.staging.path) if os.path.isdir(self.staging.path) else []
        elif self._data_folder:
            prefix = self._data_folder + "/"
            names = [n[len(prefix) :] for n in self._remote_names() if n.startswith(prefix)]
        else:
            names = self._remote_names()
        return [name for name in names if _is_worker_record(name)]

    def _remote_names(self) -> list[str]:
        if not self.location.fs.exists(self.location.path):
            return []
        return self.location.list_files()

    def _abort_dangling_uploads(self) -> None:
        """A SIGKILLed run cannot abort its multipart uploads; the next run does it for them."""
        bucket, _, key = self.location.path.partition("/")
        # The trailing slash matters: `models/m` must not match the uploads of `models/m-int8/...`.
        prefix = key.rstrip("/") + "/" if key else ""
        listing = self.location.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        for upload in listing.get("Uploads", []):
            self.location.fs.call_s3(
                "abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


def _unfinished_run_file(name: str) -> bool:
    """A file only parquant's own unfinished run leaves in an output (resumable, replaceable)."""
    leaf = name.rsplit("/", 1)[-1]
    return name == PROGRESS_NAME or _is_worker_record(leaf) or name.startswith(DATA_FOLDER_PREFIX)


def _is_worker_record(name: str) -> bool:
    return name.startswith(WORKER_RECORD_PREFIX) and name.endswith(".json")


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


@contextlib.contextmanager
def _lost_upload_is_retryable(url: str) -> Iterator[None]:
    """An upload that vanished (aborted by a cleanup, lost by the server) is worth a retry (74),
    not "input not found" (66, which would also make the stage discard the whole output)."""
    try:
        yield
    except FileNotFoundError as exc:
        raise StorageIOError(
            f"the upload of {url} was lost ({' '.join(str(exc).split())[:160]}): rerun the same command"
        ) from None


def _fsync_dir(path: str) -> None:
    """A folder's entries to disk (renames); best effort, as some filesystems refuse it."""
    with contextlib.suppress(OSError):
        _fsync_file(path)


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


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def write_file_atomically(location: Location, data: bytes) -> None:
    """One file, whole or not at all: local temp file + rename; S3 PUTs are atomic already."""
    with storage_errors(location.url):
        if location.is_local:
            with _local_atomic(location.path) as handle:
                handle.write(data)
        else:
            location.fs.pipe_file(location.path, data)


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


def fingerprint(*parts: object) -> str:
    """A stable hash of a piece of work: its input's identity and its settings. An output records
    it, so a rerun of the same work finds it done, and different work never resumes it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def cleanup_on_bad_input(output: OutputFolder) -> Iterator[None]:
    """Keep partial work after retryable failures (so a rerun resumes); drop it after bad input."""
    try:
        yield
    except ParquantError as exc:
        if not exc.retryable:
            with contextlib.suppress(ParquantError):
                output.discard()
        raise
