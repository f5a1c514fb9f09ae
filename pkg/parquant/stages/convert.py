"""Stages `import` (HF checkpoint -> Parquet model) and `export` (Parquet model -> HF checkpoint)."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import asdict

from ..errors import InvalidInputError, UsageError
from ..fs import check_separate, ensure_free_space, resolve
from ..hf import (
    DEFAULT_EXPORT_SHARD_BYTES,
    INDEX_NAME,
    HFCheckpoint,
    index_json,
    plan_export_files,
    safetensors_header,
    write_safetensors,
)
from ..numerics import count_nonfinite
from ..outputs import EXPORT_RECORD_NAME, OutputFolder
from ..prefetch import prefetched
from ..progress import ProgressCallback, ProgressEvent, no_progress
from ..store.reader import ModelReader
from ..store.schema import MANIFEST_NAME, TensorSpec
from ..store.writer import ModelDescription, WriteOptions, write_model
from .common import StageResult, cleanup_on_bad_input, fingerprint, finished_model, log, provenance

# Room for Parquet framing and the manifest on top of the raw bytes.
_OVERHEAD = 1.02
_SLACK_BYTES = 4 * 1024 * 1024


class _NonFiniteCounter:
    """Sees every chunk during import: counts NaN/Inf per tensor, or refuses at once in strict mode."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.found: dict[str, int] = {}

    def __call__(self, spec: TensorSpec, data: bytes) -> None:
        bad = count_nonfinite(data, spec.dtype)
        if bad:
            if self.strict:
                raise InvalidInputError(
                    f"tensor {spec.name} contains NaN/Inf values: fix the checkpoint, or import without --strict"
                )
            self.found[spec.name] = self.found.get(spec.name, 0) + bad


def import_checkpoint(
    source: str,
    output: str,
    *,
    write: WriteOptions | None = None,
    strict: bool = False,
    force: bool = False,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
    description: ModelDescription | None = None,
    part: tuple[int, int] | None = None,
) -> StageResult:
    """Convert a Hugging Face checkpoint folder into a Parquet model, streaming tensor by tensor.

    `description` lets another stage (quantize) import its intermediate HF folder under its own
    provenance and fingerprint. `part=(i, n)` makes this run fan-out worker i of n (an Indexed
    Job's pod): it writes its share of the shards, and a last run without `part` adds the manifest.
    """
    if part is not None and (force or not 0 <= part[0] < part[1]):
        raise UsageError(
            "--shard-index must be in 0..--shard-count-1, and --force cannot be used with a fan-out "
            "(workers never delete each other's files): remove the output first"
        )
    started = time.monotonic()
    write = write or WriteOptions()
    source_location = resolve(source, storage_options)
    folder = OutputFolder(resolve(output, storage_options), force=force, marker=MANIFEST_NAME)
    check_separate(source_location, folder.location, "checkpoint")
    checkpoint = HFCheckpoint.open(source_location)
    config = {**asdict(write), "strict": strict}
    with folder.locked(part):
        print_ = (
            description.source["fingerprint"]
            if description
            else fingerprint("import", checkpoint.fingerprint(), config)
        )
        done = finished_model(folder, print_)
        if done is not None:
            log.info("%s already holds this import; skipping (use --force to redo it)", output)
            return StageResult("import", output, True, time.monotonic() - started)
        for name in checkpoint.skipped:
            log.warning("skipping pickle file %s: parquant never unpickles", name)
        counter = _NonFiniteCounter(strict)
        items = checkpoint.items(counter)
        needed = int(sum(i.nbytes for i in items) * _OVERHEAD) + _SLACK_BYTES
        ensure_free_space(folder.staging, needed, folder.staged_bytes())
        description = description or ModelDescription(
            source={"url": source, "fingerprint": print_, "kind": "huggingface"},
            created_by=provenance("import", config),
        )
        description.safetensors_layout = checkpoint.layout()
        with cleanup_on_bad_input(folder):
            manifest = write_model(folder, items, write, description, print_, progress, part)
    if manifest is None:
        return StageResult("import", output, False, time.monotonic() - started, [], {"part": list(part or ())})
    warnings = [f"tensor {name} has {count} NaN/Inf values" for name, count in sorted(counter.found.items())]
    for warning in warnings:
        log.warning("%s (use --strict to refuse such checkpoints)", warning)
    return StageResult(
        "import",
        output,
        False,
        time.monotonic() - started,
        warnings,
        {
            "tensors": len(manifest.tensors),
            "files": len(manifest.files),
            "shards": len(manifest.shards),
            "bytes": sum(t.nbytes for t in manifest.tensors.values()),
        },
    )


def export_checkpoint(
    model: str,
    output: str,
    *,
    force: bool = False,
    shard_bytes: int = DEFAULT_EXPORT_SHARD_BYTES,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> StageResult:
    """Write a Parquet model back as a Hugging Face checkpoint folder (safetensors + its files)."""
    started = time.monotonic()
    model_location = resolve(model, storage_options)
    with ModelReader(model_location) as reader:
        specs = [reader.tensor_spec(n) for n in reader.tensor_names()]
        plan, kept_layout = plan_export_files(specs, reader.manifest.safetensors_layout, shard_bytes)
        files = [n for n in reader.file_names() if kept_layout or n != INDEX_NAME]
        marker = "config.json" if "config.json" in files else None
        folder = OutputFolder(resolve(output, storage_options), force=force, marker=marker)
        check_separate(model_location, folder.location, "model")
        manifest_digest = hashlib.sha256(reader.manifest.to_json().encode()).hexdigest()
        print_ = fingerprint("export", manifest_digest, shard_bytes)
        total = sum(s.nbytes for s in specs) + sum(reader.manifest.files[n].nbytes for n in files)
        with folder.locked():
            if not force and _exported(folder, print_):
                log.info("%s already holds this export; skipping (use --force to redo it)", output)
                return StageResult("export", output, True, time.monotonic() - started)
            folder.check_free()
            done = folder.begin(print_)
            ensure_free_space(folder.staging, total + _SLACK_BYTES, folder.staged_bytes())
            with cleanup_on_bad_input(folder):
                _write_export(folder, reader, plan, kept_layout, files, marker, done, progress)
                folder.write_bytes(EXPORT_RECORD_NAME, json.dumps({"fingerprint": print_, "source": model}).encode())
                folder.commit(reader.read_file(marker) if marker else None)
    return StageResult(
        "export",
        output,
        False,
        time.monotonic() - started,
        [],
        {"safetensors_files": len(plan), "files": len(files), "bytes": total},
    )


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


def _write_export(
    folder: OutputFolder,
    reader: ModelReader,
    plan: dict[str, tuple[list[TensorSpec], dict[str, str] | None]],
    kept_layout: bool,
    files: list[str],
    marker: str | None,
    done: dict[str, object],
    progress: ProgressCallback,
) -> None:
    """Every file but the marker, each recorded when finished so that a rerun resumes."""
    steps = len(files) + len(plan) + (0 if kept_layout or len(plan) == 1 else 1)
    count = 0
    written: dict[str, int | None] = {}
    for name in files:
        count += 1
        if name != marker:
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
