"""What every stage shares: its context, "already done?" decisions, provenance, JSON results (a
stage's result type: outcomes.py)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .. import __version__
from ..errors import ParquantError
from ..fs import check_writable, resolve
from ..outputs import OutputFolder, write_file_atomically
from ..progress import ProgressCallback, no_progress
from ..store.manifest import Manifest, Provenance
from ..store.schema import MANIFEST_NAME

log = logging.getLogger("parquant")

_REPORTED_LIBRARIES = ("pyarrow", "fsspec", "s3fs", "torch", "transformers", "angelslim")


# Set by the Kubernetes executor on a stage it moved from a GPU to the CPU (why, for the manifest).
PLACEMENT_NOTE_VARIABLE = "PARQUANT_PLACEMENT_NOTE"


@dataclass(frozen=True)
class StageContext:
    """What a stage's `run(options, context)` gets besides its options: facts of the process and of
    the executor, never flags a user types (the executor's travel as environment variables)."""

    storage_options: dict[str, str] = field(default_factory=dict)
    progress: ProgressCallback = no_progress
    placement_note: str | None = None  # $PARQUANT_PLACEMENT_NOTE
    completion_index: int | None = None  # $JOB_COMPLETION_INDEX: an Indexed Job's worker

    @classmethod
    def from_environment(
        cls, storage_options: Mapping[str, str], progress: ProgressCallback, environ: Mapping[str, str]
    ) -> StageContext:
        index = environ.get("JOB_COMPLETION_INDEX", "")
        return cls(
            dict(storage_options),
            progress,
            environ.get(PLACEMENT_NOTE_VARIABLE) or None,
            int(index) if index.isdigit() else None,
        )


def finished_model(output: OutputFolder, expected_fingerprint: str) -> Manifest | None:
    """The output's manifest when this exact work is already done there; else check the output is free.

    Raises OutputExistsError (73) when something else is at the output and `--force` is not set.
    """
    manifest_location = output.location.child(MANIFEST_NAME)
    if not output.force and manifest_location.exists():
        try:
            manifest = Manifest.from_json(manifest_location.read_bytes(), manifest_location.url)
        except ParquantError:
            manifest = None
        if manifest is not None and manifest.source.get("fingerprint") == expected_fingerprint:
            problem = manifest.shard_problem(output.location.file_sizes())
            if problem is None:
                return manifest
            log.warning("%s holds this work but %s: doing it again", output.location.url, problem)
            if not output.force:
                return None  # the stage's own staging and commit replace the damaged model
    output.check_free()
    return None


def provenance(stage: str, config: dict[str, Any], backend: str | None = None) -> Provenance:
    versions = {}
    for name in _REPORTED_LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return Provenance(
        stage=stage, parquant_version=__version__, config=config, backend=backend, library_versions=versions
    )


def write_json(url: str, payload: dict[str, Any], storage_options: Mapping[str, str] | None) -> None:
    """A stage's JSON result, written whole or not at all."""
    write_file_atomically(resolve(url, storage_options), (json.dumps(payload, indent=2) + "\n").encode())


R = TypeVar("R", bound="JsonResult")


class JsonResult(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def with_json_output(output: str | None, storage_options: Mapping[str, str] | None, produce: Callable[[], R]) -> R:
    """Run a measuring stage and, when `output` is given, write its result there. The output's
    folder is checked first, so a long run never ends in an unwritable path."""
    if output:
        check_writable(resolve(output, storage_options), "--output")
    result = produce()
    if output:
        write_json(output, result.to_dict(), storage_options)
    return result
