"""`parquant.json`: the manifest written last, whose presence means the model is complete.

It indexes every tensor and file (which shard, which row groups, checksum), so a reader fetches one
tensor with one range read and never scans a shard; and it records provenance (source fingerprint,
stage, config, backend, fallbacks, timings) so a stage can tell whether its output is already done.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInputError, UnavailableError
from .schema import FORMAT_NAME, FORMAT_VERSIONS, SUPPORTED_MAJOR_VERSIONS, TensorSpec, major_version


@dataclass(frozen=True)
class TensorEntry:
    shard: int
    row_groups: tuple[int, int]  # first and last row group (inclusive) in that shard
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    crc32c: int

    def spec(self, name: str) -> TensorSpec:
        return TensorSpec(name, self.dtype, self.shape)


@dataclass(frozen=True)
class FileEntry:
    shard: int
    row_groups: tuple[int, int] | None  # None in v1: the file lives in the footer metadata
    nbytes: int
    crc32c: int


@dataclass
class Provenance:
    """How the model was made: enough to decide 'already done' and to audit it later."""

    stage: str
    parquant_version: str
    config: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    library_versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    format_version: str
    shards: list[str]
    tensors: dict[str, TensorEntry]
    files: dict[str, FileEntry]
    source: dict[str, str]
    created_by: Provenance
    # Which safetensors file held which tensors in the source checkpoint, so export can rebuild
    # the same files (and a verbatim model.safetensors.index.json stays true).
    safetensors_layout: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    format: str = FORMAT_NAME

    @property
    def major_version(self) -> int:
        return major_version(self.format_version)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and check a manifest; refuse unknown formats and major versions clearly."""
        try:
            raw = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(
                f"{where} is not valid JSON ({exc}); the model is damaged: re-run the stage that wrote it"
            ) from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise InvalidInputError(f"{where} is not a parquant manifest (no 'format: {FORMAT_NAME}')")
        version = str(raw.get("format_version", ""))
        if major_version(version) not in SUPPORTED_MAJOR_VERSIONS:
            known = ", ".join(FORMAT_VERSIONS.values())
            raise UnavailableError(
                f"{where} has format version {version!r}, this parquant reads {known}: upgrade parquant to read it"
            )
        try:
            return cls(
                format_version=version,
                shards=list(raw["shards"]),
                tensors={k: tensor_entry(v) for k, v in raw["tensors"].items()},
                files={k: file_entry(v) for k, v in raw["files"].items()},
                source=dict(raw.get("source", {})),
                created_by=Provenance(**raw["created_by"]),
                safetensors_layout=dict(raw.get("safetensors_layout", {})),
                timings=dict(raw.get("timings", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"{where} is missing or has a malformed field ({exc!r}); re-run the stage that wrote it"
            ) from None


def tensor_entry(raw: dict[str, Any]) -> TensorEntry:
    first, last = raw["row_groups"]
    return TensorEntry(
        shard=int(raw["shard"]),
        row_groups=(int(first), int(last)),
        dtype=str(raw["dtype"]),
        shape=tuple(int(d) for d in raw["shape"]),
        nbytes=int(raw["nbytes"]),
        crc32c=int(raw["crc32c"]),
    )


def file_entry(raw: dict[str, Any]) -> FileEntry:
    groups = raw.get("row_groups")
    return FileEntry(
        shard=int(raw["shard"]),
        row_groups=None if groups is None else (int(groups[0]), int(groups[1])),
        nbytes=int(raw["nbytes"]),
        crc32c=int(raw["crc32c"]),
    )
