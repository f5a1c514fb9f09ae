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
from collections.abc import Iterator
from typing import IO, Any

from .errors import OutputExistsError, ParquantError, StorageIOError, TemporaryFailure
from .fs import Location, storage_errors
from .locks import check_lock_held, is_locked, live_worker_locks, output_lock
from .storage import lost_upload_is_retryable, store_for

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
    """One output folder of one stage run, over the storage protocol (storage/); see the module
    docstring for the protocol."""

    def __init__(self, location: Location, *, force: bool, marker: str | None) -> None:
        self.location = location
        self.store = store_for(location)
        self.force = force
        self.marker = marker
        self.staging = self.store.staging_for(location)
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
            names = self.store.entries(self.location) or []
            taken = bool(names)
            if taken and not self.store.renames:
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
            names = self.store.entries(self.location)
        if names is None or not names or any(n in _OUTPUT_MARKERS or _unfinished_run_file(n) for n in names):
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
        if not self.store.renames and self.marker == MODEL_MARKER:
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
            self._fence()  # a stale writer never aborts the uploads of the run that took over
            self.store.abort_uploads(self.location)
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
                self.store.prepare(self.staging)
        done: dict[str, Any] = self._progress["done"]
        return done

    def begin_worker(self, fingerprint: str) -> None:
        """A fan-out worker's start: make the staging area, never clear it (other workers write there)."""
        self._stage_for(fingerprint)
        self._worker = True
        with storage_errors(self.location.url):
            self.store.prepare(self.staging)

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
        with storage_errors(target.url), self.store.open_atomic(target, native, self._fence) as handle:
            yield handle

    def write_bytes(self, relpath: str, data: bytes) -> None:
        target = self.staging.child(relpath)
        with storage_errors(target.url):
            self.store.put_atomic(target, data, self._fence)

    def _fence(self) -> None:
        """Before a write to a store where a lock can be lost: this run still holds its lock (read
        back, one request), else exit 75 without writing. A writer stopped past its lease never
        writes into the output of the run that took the lock over (locks.py)."""
        if self.store.fenced:
            check_lock_held(self.location, self._lock_suffix, verify=True)

    def record(self, relpath: str, info: Any) -> None:
        """Mark `relpath` finished so a rerun of the same work skips it."""
        self._progress["done"][relpath] = info
        self._save_progress()

    def _save_progress(self) -> None:
        self.write_bytes(PROGRESS_NAME, json.dumps(self._progress).encode())

    def staged_size(self, relpath: str) -> int:
        """Size of a file written into the staging area (recorded, so a resume can check it)."""
        self._fence()  # a file gone because another writer took over: 75, not "not found"
        target = self.staging.child(relpath)
        with storage_errors(target.url), lost_upload_is_retryable(target.url):
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
        return self.store.staged_bytes(self.staging)

    # -- finishing --------------------------------------------------------------------------------
    def commit(self, marker_bytes: bytes | None = None) -> None:
        """Write the marker last and make the folder visible at its final URL."""
        check_lock_held(self.location)
        if self.marker is not None and marker_bytes is not None:
            if self.store.renames:
                self.write_bytes(self.marker, marker_bytes)
            else:
                self._create_marker(marker_bytes)
        with storage_errors(self.location.url):
            progress = self.staging.child(PROGRESS_NAME)
            if progress.exists():
                self.store.remove(progress)
            for name in self._staged_worker_records():
                self.store.remove(self.staging.child(name))
            self.store.install(self.staging, self.location)
            if self._data_folder:
                self._remove_other_data_folders()

    def _create_marker(self, data: bytes) -> None:
        """The commit where nothing is renamed: the marker is created, never replaced (any earlier
        marker was removed when this run began), so of two writers that both believe they hold the
        lock, the second finds the first's model and stops (75)."""
        self._fence()
        target = self.location.child(self.marker or "")
        if not self.store.create_exclusive(target, data):
            raise TemporaryFailure(
                f"another run committed {self.location.url} while this one was writing (its lock was taken "
                "over): nothing of this run was committed; rerun (a finished output is then skipped or refused)"
            )
        self.location.fs.invalidate_cache(self.location.path)

    def _remove_other_data_folders(self) -> None:
        """What the committed manifest does not name: other works' data folders (a writer whose
        lock was taken over, an abandoned run of other input) and an older layout's shards."""
        keep = (self._data_folder + "/", self.marker or "")
        others = [n for n in self._remote_names() if not n.startswith(keep) and n != self.marker]
        folders = sorted({n.split("/", 1)[0] for n in others if n.startswith(DATA_FOLDER_PREFIX) and "/" in n})
        files = [n for n in others if not (n.startswith(DATA_FOLDER_PREFIX) and "/" in n)]
        for name in folders:
            self.store.remove(self.location.child(name), recursive=True)
        for name in files:
            self.store.remove(self.location.child(name))

    def discard(self) -> None:
        """Remove what this run wrote, after a failure that a rerun cannot fix (bad input). A
        fan-out worker removes nothing: the staging area holds the other workers' finished files,
        and its own are whole (each appears atomically) and belong to the same work."""
        if self._worker:
            return
        with storage_errors(self.location.url):
            if self.store.renames:
                self.store.remove(self.staging, recursive=True)
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
        if self.store.renames:
            self.store.remove(self.staging, recursive=True)
            return
        self._fence()  # a writer stopped past its lease deletes nothing of the run that took over
        if self._marker_exists():
            # Remove the marker first: from here on readers see "incomplete", never a mix.
            self.store.remove(self.location.child(self.marker or ""))
        # a model's own data folder only: other objects (another work's folder, an older layout's
        # shards) go after this run's commit, never before it
        self.store.remove(self.staging if self._data_folder else self.location, recursive=True)
        self.location.fs.invalidate_cache(self.location.path)

    def _staged_worker_records(self) -> list[str]:
        """Names of the fan-out workers' records in the staging area."""
        if self.store.renames:
            names = self.store.entries(self.staging) or []
        elif self._data_folder:
            prefix = self._data_folder + "/"
            names = [n[len(prefix) :] for n in self._remote_names() if n.startswith(prefix)]
        else:
            names = self._remote_names()
        return [name for name in names if _is_worker_record(name)]

    def _remote_names(self) -> list[str]:
        return self.store.entries(self.location) or []


def _unfinished_run_file(name: str) -> bool:
    """A file only parquant's own unfinished run leaves in an output (resumable, replaceable)."""
    leaf = name.rsplit("/", 1)[-1]
    return name == PROGRESS_NAME or _is_worker_record(leaf) or name.startswith(DATA_FOLDER_PREFIX)


def _is_worker_record(name: str) -> bool:
    return name.startswith(WORKER_RECORD_PREFIX) and name.endswith(".json")


def write_file_atomically(location: Location, data: bytes) -> None:
    """One file, whole or not at all (the store's atomic put)."""
    with storage_errors(location.url):
        store_for(location).put_atomic(location, data)


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
