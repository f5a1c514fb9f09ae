"""Stage `export`: a Parquet model -> a Hugging Face checkpoint folder (hf_folders.py writes it)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..fs import check_separate, resolve
from ..hf import DEFAULT_EXPORT_SHARD_BYTES
from ..hf_folders import marker_for, write_hf_folder
from ..outcomes import WriteResult
from ..outputs import OutputFolder
from ..progress import ProgressCallback, no_progress
from ..quant.runtimes import loads_in
from ..store.reader import ModelReader
from .common import StageContext, log
from .options import ExportOptions


@dataclass
class ExportResult(WriteResult):
    safetensors_files: int | None = None
    files: int | None = None
    bytes: int | None = None
    loads_in: dict[str, str] | None = None  # which runtimes load it (quant/runtimes.py)


def run(options: ExportOptions, context: StageContext) -> ExportResult:
    return export_checkpoint(
        options.model,
        options.output,
        force=options.force,
        shard_bytes=options.max_shard_size,
        storage_options=context.storage_options,
        progress=context.progress,
    )


def export_checkpoint(
    model: str,
    output: str,
    *,
    force: bool = False,
    shard_bytes: int = DEFAULT_EXPORT_SHARD_BYTES,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> ExportResult:
    """Write a Parquet model back as a Hugging Face checkpoint folder (safetensors + its files)."""
    started = time.monotonic()
    model_location = resolve(model, storage_options)
    with ModelReader(model_location) as reader:
        folder = OutputFolder(resolve(output, storage_options), force=force, marker=marker_for(reader))
        check_separate(model_location, folder.location, "model")
        export = write_hf_folder(reader, folder, source=model, shard_bytes=shard_bytes, progress=progress)
        runtimes = loads_in(reader.config(), reader.tensor_names())
    warnings = []
    if runtimes["transformers_cpu"] != "yes":
        warnings.append(
            f"transformers cannot load {output} on a CPU ({runtimes['transformers_cpu'].removeprefix('no: ')}): "
            "serve it with a runtime that has the kernels (vLLM on a GPU); parquant validate and benchmark "
            "dequantize it themselves"
        )
        log.warning("%s", warnings[0])
    if export.skipped:
        log.info("%s already holds this export; skipping (use --force to redo it)", output)
        return ExportResult("export", output, True, time.monotonic() - started, warnings, loads_in=runtimes)
    return ExportResult(
        "export",
        output,
        False,
        time.monotonic() - started,
        warnings,
        safetensors_files=export.safetensors_files,
        files=export.files,
        bytes=export.bytes,
        loads_in=runtimes,
    )
