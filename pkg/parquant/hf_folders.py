"""The one HF-folder writer: a Parquet model -> a Hugging Face checkpoint folder, and its cache.

`write_hf_folder` is what `parquant export` runs (atomic, resumable, idempotent). `cached_hf_folder`
keeps one local copy per model *content* (the manifest digest) in the cache, for the readers that
need a folder on disk: transformers' `from_pretrained` (validate, benchmark) and AngelSlim. So
`quantize --compare` with N methods exports the reference model once, not once per reader.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import mmap
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import crc32c

from .cache import cache_dir
from .errors import OutputExistsError, StorageIOError, TemporaryFailure
from .fs import ensure_free_space, resolve
from .hf import (
    DEFAULT_EXPORT_SHARD_BYTES,
    INDEX_NAME,
    index_json,
    plan_export_files,
    safetensors_header,
    write_safetensors,
)
from .locks import is_locked, output_lock
from .outputs import EXPORT_RECORD_NAME, OutputFolder, cleanup_on_bad_input, fingerprint
from .prefetch import prefetched
from .progress import ProgressCallback, ProgressEvent, no_progress
from .store.reader import ModelReader
from .store.schema import TensorSpec

log = logging.getLogger("parquant")
# Cached folders beyond this total are removed, least recently used first (PARQUANT_HF_CACHE_BYTES).
DEFAULT_CACHE_BYTES = 64 * 2**30
# A folder used this recently may still be open in another process: never removed.
_IN_USE_SECONDS = 3600.0


@dataclass(frozen=True)
class HFExport:
    skipped: bool  # the folder already held this exact export
    safetensors_files: int
    files: int
    bytes: int


def write_hf_folder(
    reader: ModelReader,
    folder: OutputFolder,
    *,
    source: str,
    shard_bytes: int = DEFAULT_EXPORT_SHARD_BYTES,
    progress: ProgressCallback = no_progress,
) -> HFExport:
    """Write the model `reader` holds into `folder` (whose marker must be `marker_for(reader)`):
    every file recorded as it finishes (a rerun resumes), then committed at once."""
    specs = [reader.tensor_spec(n) for n in reader.tensor_names()]
    plan, kept_layout = plan_export_files(specs, reader.manifest.safetensors_layout, shard_bytes)
    files = [n for n in reader.file_names() if kept_layout or n != INDEX_NAME]
    identity = fingerprint("export", reader.manifest.digest(), shard_bytes)
    total = sum(s.nbytes for s in specs) + sum(reader.manifest.files[n].nbytes for n in files)
    summary = HFExport(False, len(plan), len(files), total)
    with folder.locked():
        if not folder.force and _exported(folder, identity):
            return HFExport(True, len(plan), len(files), total)
        folder.check_free()
        done = folder.begin(identity)
        ensure_free_space(folder.staging, total, folder.staged_bytes())
        with cleanup_on_bad_input(folder):
            _write_files(folder, reader, plan, kept_layout, files, done, progress)
            folder.write_bytes(EXPORT_RECORD_NAME, json.dumps({"fingerprint": identity, "source": source}).encode())
            folder.commit(reader.read_file(folder.marker) if folder.marker else None)
    return summary


def marker_for(reader: ModelReader) -> str | None:
    """The file an exported folder is recognised by (written last): config.json when there is one."""
    return "config.json" if "config.json" in reader.file_names() else None


def cached_hf_folder(reader: ModelReader) -> Path:
    """A local HF folder of this model's content, exported on first use, shared by every later one.

    Nothing in the cache is trusted: before first use in a process an entry is checked against
    the model's manifest (every file there with its size, every tensor's and file's CRC32C), and
    a damaged one (a flipped byte, a removed file) is rebuilt. Concurrent processes are safe: an
    entry is written under its lock and committed atomically, and a second process filling the
    same entry waits for the first, then finds it done.
    """
    root = cache_dir() / "hf"
    path = root / reader.manifest.digest()[:32]
    started = time.monotonic()
    result = _fill(path, reader)
    if not result.skipped:
        _VERIFIED.add(str(path))  # written (and its files verified) by this very call
    if str(path) not in _VERIFIED:
        problem = entry_problem(path, reader)
        if problem is not None:
            log.warning("the HF-folder cache entry %s is damaged (%s): rebuilding it", path.name, problem)
            _remove_entry(path)
            result = _fill(path, reader)
            problem = entry_problem(path, reader)
            if problem is not None:
                raise StorageIOError(f"the HF-folder cache entry {path} is damaged again after a rebuild ({problem})")
        _VERIFIED.add(str(path))
    if not result.skipped:
        log.info("exported %s to the HF-folder cache in %.1f s", reader.location.url, time.monotonic() - started)
        _evict(root, keep=path)
    os.utime(path)  # last use, for eviction
    return path


# Entries checked in this process (once an entry per run: the check reads the whole entry).
_VERIFIED: set[str] = set()
_WAIT_SECONDS = 0.2


def _fill(path: Path, reader: ModelReader) -> HFExport:
    """Export into the cache entry, waiting while another process fills the same entry."""
    waited = False
    while True:
        try:
            return write_hf_folder(reader, _cache_entry(path, reader), source=reader.location.url)
        except OutputExistsError:
            # An entry this version did not write (an older parquant's, or a damaged one): the
            # cache owns the folder, so it is replaced, never a reason to fail.
            log.info("replacing the stale HF-folder cache entry %s", path.name)
            _remove_entry(path)
        except TemporaryFailure:
            if not is_locked(resolve(str(path))):
                raise
            if not waited:
                log.info("another process is filling the HF-folder cache entry %s: waiting for it", path.name)
                waited = True
            time.sleep(_WAIT_SECONDS)


def _remove_entry(path: Path) -> None:
    """The cache owns its entries: one it cannot use is removed, under the entry's lock."""
    with output_lock(resolve(str(path))):
        shutil.rmtree(path, ignore_errors=True)


def entry_problem(path: Path, reader: ModelReader) -> str | None:
    """Why a cached folder is not exactly the model (a missing or resized file, a CRC that differs),
    or None. Reads the entry once: CRC32C runs at memory speed, far below an export's cost."""
    specs = [reader.tensor_spec(n) for n in reader.tensor_names()]
    plan, kept_layout = plan_export_files(specs, reader.manifest.safetensors_layout, DEFAULT_EXPORT_SHARD_BYTES)
    for name in reader.file_names():
        if name == INDEX_NAME and not kept_layout:
            continue
        entry = reader.manifest.files[name]
        problem = _file_problem(path / name, entry.nbytes, entry.crc32c)
        if problem:
            return problem
    tensors = reader.manifest.tensors
    for file_name, (file_specs, metadata) in plan.items():
        offset = len(safetensors_header(file_specs, metadata))  # the first tensor's byte
        target = path / file_name
        problem = _file_problem(target, offset + sum(s.nbytes for s in file_specs), None)
        if problem:
            return problem
        with open(target, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)  # slices of a view are not copies: a 1 GB tensor costs no 1 GB
            try:
                for spec in file_specs:
                    if crc32c.crc32c(view[offset : offset + spec.nbytes]) != tensors[spec.name].crc32c:
                        return f"tensor {spec.name} in {file_name} differs from the model"
                    offset += spec.nbytes
            finally:
                view.release()
    return None


def _file_problem(target: Path, size: int, crc: int | None) -> str | None:
    try:
        actual = target.stat().st_size
    except OSError:
        return f"{target.name} is missing"
    if actual != size:
        return f"{target.name} has {actual} bytes, the model {size}"
    if crc is not None and crc32c.crc32c(target.read_bytes()) != crc:
        return f"{target.name} differs from the model"
    return None


def _cache_entry(path: Path, reader: ModelReader) -> OutputFolder:
    return OutputFolder(resolve(str(path)), force=False, marker=marker_for(reader))


def _evict(root: Path, keep: Path) -> None:
    """Remove least-recently-used cached folders while the cache is over its budget."""
    budget = int(os.environ.get("PARQUANT_HF_CACHE_BYTES") or DEFAULT_CACHE_BYTES)
    entries = []
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith(".") and entry != keep:
            with contextlib.suppress(OSError):
                size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                entries.append((entry.stat().st_mtime, size, entry))
    used = sum(size for _, size, _ in entries) + sum(f.stat().st_size for f in keep.rglob("*") if f.is_file())
    for mtime, size, entry in sorted(entries, key=lambda item: item[0]):
        if used <= budget:
            break
        if time.time() - mtime < _IN_USE_SECONDS:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        used -= size
        log.info("removed %s from the HF-folder cache (over %d bytes)", entry.name, budget)


def _exported(folder: OutputFolder, expected: str) -> bool:
    """Whether the output already holds this exact export (its record and its marker are there)."""
    record = folder.location.child(EXPORT_RECORD_NAME)
    marker = folder.location.child(folder.marker) if folder.marker else record
    if not (record.exists() and marker.exists()):
        return False
    try:
        loaded = json.loads(record.read_bytes())
    except ValueError:
        return False
    return isinstance(loaded, dict) and loaded.get("fingerprint") == expected


def _write_files(
    folder: OutputFolder,
    reader: ModelReader,
    plan: dict[str, tuple[list[TensorSpec], dict[str, str] | None]],
    kept_layout: bool,
    files: list[str],
    done: dict[str, object],
    progress: ProgressCallback,
) -> None:
    """Every file but the marker, each recorded when finished so that a rerun resumes."""
    steps = len(files) + len(plan) + (0 if kept_layout or len(plan) == 1 else 1)
    count = 0
    written: dict[str, int | None] = {}
    for name in files:
        count += 1
        if name != folder.marker:
            if name not in done or not folder.intact(name, reader.manifest.files[name].nbytes):
                with folder.open_file(name) as handle:
                    for chunk in reader.iter_file_chunks(name):
                        handle.write(chunk)
                folder.record(name, True)
            written[name] = reader.manifest.files[name].nbytes
        progress(ProgressEvent("export", name, count, steps))
    if not kept_layout and len(plan) > 1:
        count += 1
        folder.write_bytes(INDEX_NAME, index_json(plan))
        progress(ProgressEvent("export", INDEX_NAME, count, steps))
    for file_name, (file_specs, metadata) in plan.items():
        count += 1
        size = len(safetensors_header(file_specs, metadata)) + sum(s.nbytes for s in file_specs)
        if file_name not in done or not folder.intact(file_name, size):
            with folder.open_file(file_name) as handle:
                chunks = itertools.chain.from_iterable(reader.iter_tensor_chunks(s.name) for s in file_specs)
                write_safetensors(handle, file_specs, metadata, prefetched(chunks))
            folder.record(file_name, True)
        written[file_name] = size
        progress(ProgressEvent("export", file_name, count, steps))
    folder.verify(written)
