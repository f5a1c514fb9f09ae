"""Stage `import`: a Hugging Face checkpoint folder -> a Parquet model, streaming tensor by tensor."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..errors import InvalidInputError
from ..fs import check_separate, ensure_free_space, resolve
from ..hf import HFCheckpoint
from ..numerics import count_nonfinite
from ..outcomes import WriteResult
from ..outputs import OutputFolder, cleanup_on_bad_input, fingerprint
from ..progress import ProgressCallback, no_progress
from ..store.schema import MANIFEST_NAME, TensorSpec
from ..store.writer import ModelDescription, WriteOptions, write_model
from .common import StageContext, finished_model, log, provenance
from .fanout import check_part, fan_out_part, run_local_workers
from .options import ImportOptions


@dataclass
class ImportResult(WriteResult):
    tensors: int | None = None
    files: int | None = None
    shards: int | None = None
    bytes: int | None = None


def run(options: ImportOptions, context: StageContext) -> ImportResult:
    """`parquant import`: the options as typed, the context as the process found it."""
    part = fan_out_part(options, context)
    started = time.monotonic()
    if options.workers > 1:
        run_local_workers("import", options, options.workers, resolve(options.output, context.storage_options))
    return import_checkpoint(
        options.source,
        options.output,
        write=WriteOptions(options.format_version, options.chunk_size, options.shard_size, options.compression),
        strict=options.strict,
        force=options.force,
        storage_options=context.storage_options,
        progress=context.progress,
        part=part,
        started=started,
    )


# Room for Parquet framing on top of the raw bytes (fs.ensure_free_space adds the manifest's).
_OVERHEAD = 1.02


class _NonFiniteCounter:
    """Sees every chunk during import: counts NaN/Inf per tensor, or refuses at once in strict mode."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.found: dict[str, int] = {}

    def __call__(self, spec: TensorSpec, data: bytes | memoryview) -> None:
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
    started: float | None = None,
) -> ImportResult:
    """Convert a Hugging Face checkpoint folder into a Parquet model, streaming tensor by tensor.

    `description` lets another stage (quantize) import its intermediate HF folder under its own
    provenance and fingerprint. `part=(i, n)` makes this run fan-out worker i of n (an Indexed
    Job's pod): it writes its share of the shards, and a last run without `part` adds the manifest.
    `started` (monotonic) is when the stage began, before its local workers ran (`--workers`).
    """
    check_part(part, force)
    started = time.monotonic() if started is None else started
    write = write or WriteOptions()
    source_location = resolve(source, storage_options)
    folder = OutputFolder(resolve(output, storage_options), force=force, marker=MANIFEST_NAME)
    check_separate(source_location, folder.location, "checkpoint")
    checkpoint = HFCheckpoint.open(source_location)
    config = {**asdict(write), "strict": strict}
    with folder.locked(part):
        identity = (
            description.source["fingerprint"]
            if description
            else fingerprint("import", checkpoint.fingerprint(), config)
        )
        done = finished_model(folder, identity)
        if done is not None:
            log.info("%s already holds this import; skipping (use --force to redo it)", output)
            return ImportResult("import", output, True, time.monotonic() - started)
        for name in checkpoint.skipped:
            log.warning("skipping pickle file %s: parquant never unpickles", name)
        counter = _NonFiniteCounter(strict)
        items = checkpoint.items(counter)
        needed = int(sum(i.nbytes for i in items) * _OVERHEAD)
        ensure_free_space(folder.staging, needed, folder.staged_bytes())
        description = description or ModelDescription(
            source={"url": source, "fingerprint": identity, "kind": "huggingface"},
            created_by=provenance("import", config),
        )
        description.safetensors_layout = checkpoint.layout()
        with cleanup_on_bad_input(folder):
            manifest = write_model(folder, items, write, description, identity, progress, part)
    if manifest is None:
        return ImportResult("import", output, False, time.monotonic() - started, [], part)
    warnings = [f"tensor {name} has {count} NaN/Inf values" for name, count in sorted(counter.found.items())]
    for warning in warnings:
        log.warning("%s (use --strict to refuse such checkpoints)", warning)
    return ImportResult(
        "import",
        output,
        False,
        time.monotonic() - started,
        warnings,
        tensors=len(manifest.tensors),
        files=len(manifest.files),
        shards=len(manifest.shards),
        bytes=sum(t.nbytes for t in manifest.tensors.values()),
    )
