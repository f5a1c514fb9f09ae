"""`parquant.json`: the manifest written last, whose presence means the model is complete.

It indexes every tensor and file (which shard, which row groups, checksum), so a reader fetches one
tensor with one range read and never scans a shard; and it records provenance (source fingerprint,
stage, config, backend, fallbacks, timings) so a stage can tell whether its output is already done.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

import msgspec

from ..errors import InvalidInputError, UnavailableError
from ..names import safe_relative_path
from .schema import FORMAT_NAME, FORMAT_VERSIONS, SUPPORTED_MAJOR_VERSIONS, TensorSpec, major_version

# A 700B-parameter model's manifest is tens of MB; anything far bigger is not one.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


_U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_CRC32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
# Where each chunk's value lies in its shard: (byte offset, length, the chunk's CRC32C), one per
# row group. With it a reader fetches exactly one tensor's bytes (one range read per chunk) without
# parsing the shard's Parquet footer, which for a shard of thousands of small tensors is larger
# than most of them. Absent (None) in older or compressed models.
DataPages = tuple[tuple[_U63, _U63, _CRC32], ...]


# The index entries are msgspec Structs, decoded and range-checked in one pass of compiled code:
# opening a model of thousands of tensors was dominated by building them in Python (measured
# in bench/read_bench.py). Their constraints are the same as MANIFEST_SCHEMA's.
class TensorEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    shard: _U63
    row_groups: tuple[_U63, _U63]  # first and last row group (inclusive) in that shard
    dtype: Annotated[str, msgspec.Meta(max_length=16)]
    shape: Annotated[tuple[_U63, ...], msgspec.Meta(max_length=16)]
    nbytes: _U63
    crc32c: _CRC32
    data_pages: DataPages | None = None

    def spec(self, name: str) -> TensorSpec:
        return TensorSpec(name, self.dtype, self.shape)


class FileEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    shard: _U63
    row_groups: tuple[_U63, _U63] | None = None  # None in v1: the file lives in the footer metadata
    nbytes: _U63
    crc32c: _CRC32
    data_pages: DataPages | None = None


@dataclass
class Provenance:
    """How the model was made: enough to decide 'already done' and to audit it later."""

    stage: str
    parquant_version: str
    config: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    library_versions: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The method that made the model ("none" unless it was quantized)."""
        return str(self.config.get("effective_method", "none")) if self.stage == "quantize" else "none"

    @property
    def note(self) -> str:
        """The fallbacks taken on the way (GPU -> CPU, AngelSlim -> PTQ) and, for a calibrated MoE
        model, the experts calibration reached, for results and reports."""
        if self.stage != "quantize":
            return ""
        share = self.config.get("quantized_share")
        left = (
            [
                f"quantized {share['fraction']:.1%} of the parameters asked for "
                f"({len(share.get('left', []))} modules left in full precision)"
            ]
            if isinstance(share, dict) and isinstance(share.get("fraction"), int | float) and share["fraction"] < 1
            else []
        )
        return "; ".join([*self.fallbacks, *_coverage_note(self.config.get("expert_coverage")), *left])


def _coverage_note(coverage: Any) -> list[str]:
    if not isinstance(coverage, dict) or not isinstance(coverage.get("tokens"), dict):
        return []
    experts = sum(len(counts) for counts in coverage["tokens"].values() if isinstance(counts, list))
    missed = [str(name) for name in coverage.get("uncovered") or []]
    if not missed:
        return [f"calibration reached all {experts} experts"]
    return [
        f"calibration reached {experts - len(missed)} of {experts} experts; no token for {', '.join(missed)} "
        "(their activation scales were set from their siblings')"
    ]


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

    @property
    def quantize_seconds(self) -> float | None:
        """How long quantizing took, for a model `quantize` made (None for others, or older manifests)."""
        seconds = self.timings.get("stage_seconds")
        return float(seconds) if seconds is not None and self.created_by.stage == "quantize" else None

    def digest(self) -> str:
        """The model's content identity: equal digests, equal model (every tensor's CRC is in it).

        Hashed over the text format 2.0 wrote (indented, and without `data_pages` where an entry has
        none), so a model written by an older parquant keeps its identity: the outputs made from it
        are still recognised as done, instead of being refused as someone else's (exit 73)."""
        canonical = self._builtins()
        return hashlib.sha256((json.dumps(canonical, indent=1, sort_keys=True) + "\n").encode()).hexdigest()

    def _builtins(self) -> dict[str, Any]:
        """The manifest as JSON values; an entry without data_pages has no such key (FORMAT.md:
        absent, not null, in 2.0 models and compressed ones)."""
        canonical: dict[str, Any] = msgspec.to_builtins(self)
        for section in ("tensors", "files"):
            for entry in canonical[section].values():
                if entry.get("data_pages") is None:
                    entry.pop("data_pages", None)
        return canonical

    def shard_problem(self, sizes: Mapping[str, int]) -> str | None:
        """Why the shards at hand (name -> size in bytes) cannot hold this model, or None: every
        shard must be there and reach past the last chunk the index places in it (plus Parquet's
        8-byte tail), so a deleted or truncated shard is found from a listing, without a read."""
        ends = dict.fromkeys(range(len(self.shards)), 0)
        entries: list[TensorEntry | FileEntry] = [*self.tensors.values(), *self.files.values()]
        for entry in entries:
            for offset, length, _ in entry.data_pages or ():
                ends[entry.shard] = max(ends.get(entry.shard, 0), offset + length)
        for index, shard in enumerate(self.shards):
            if shard not in sizes:
                return f"shard {shard} is missing"
            if sizes[shard] < ends.get(index, 0) + 8:
                return f"shard {shard} is {sizes[shard]} bytes, shorter than its index says (truncated)"
        return None

    def to_json(self) -> str:
        """Compact, keys sorted: one text per model (its digest), quick to parse for big models."""
        return json.dumps(self._builtins(), separators=(",", ":"), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and check a manifest against MANIFEST_SCHEMA; refuse unknown formats and versions clearly.

        Nothing in a manifest is trusted: types, ranges and sizes are checked before any value is
        used, and every name in it (files, shards, layout files) must stay inside the model folder.
        """
        if len(text) > MAX_MANIFEST_BYTES:
            raise InvalidInputError(
                f"{where} is {len(text)} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have: "
                "the model is damaged or not a parquant model"
            )
        raw, entries = _decode(text, where)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise InvalidInputError(f"{where} is not a parquant manifest (no 'format: {FORMAT_NAME}')")
        version = str(raw.get("format_version", ""))
        if major_version(version) not in SUPPORTED_MAJOR_VERSIONS:
            known = ", ".join(FORMAT_VERSIONS.values())
            raise UnavailableError(
                f"{where} has format version {version!r}, this parquant reads {known}: upgrade parquant to read it"
            )
        problem = _schema_problem(raw)
        if problem is not None:
            raise InvalidInputError(f"{where}: {problem}; the model is damaged: re-run the stage that wrote it")
        tensors, files = entries if entries is not None else _entries(raw, where)
        for name in [*raw["shards"], *files, *raw.get("safetensors_layout", {})]:
            safe_relative_path(name, where)
        known_provenance = {f.name for f in fields(Provenance)}
        return cls(
            format_version=version,
            shards=list(raw["shards"]),
            tensors=tensors,
            files=files,
            source=dict(raw.get("source", {})),
            created_by=Provenance(**{k: v for k, v in raw["created_by"].items() if k in known_provenance}),
            safetensors_layout=dict(raw.get("safetensors_layout", {})),
            timings=dict(raw.get("timings", {})),
        )


class _TypedManifest(msgspec.Struct):
    """The typed reading of a manifest: the index decoded straight into entries, the rest as plain
    values (checked against MANIFEST_SCHEMA afterwards, like any manifest)."""

    tensors: dict[str, TensorEntry]
    files: dict[str, FileEntry]
    format: Any = None
    format_version: Any = None
    shards: Any = None
    source: Any = None
    created_by: Any = None
    safetensors_layout: Any = None
    timings: Any = None


_TYPED_DECODER = msgspec.json.Decoder(_TypedManifest)


def _decode(text: str | bytes, where: str) -> tuple[Any, tuple[dict[str, TensorEntry], dict[str, FileEntry]] | None]:
    """(the manifest without its index, (tensors, files)) when the typed reading accepts it; else
    (the whole manifest as plain JSON, None), so the schema check names the first problem."""
    try:
        typed = _TYPED_DECODER.decode(text)
    except (msgspec.DecodeError, RecursionError):  # malformed, out of range, too deep: the plain path explains it
        return strict_json(text, where), None
    raw = {
        f: getattr(typed, f)
        for f in ("format", "format_version", "shards", "source", "created_by", "safetensors_layout", "timings")
        if getattr(typed, f) is not None
    }
    return {**raw, "tensors": {}, "files": {}}, (typed.tensors, typed.files)


def _entries(raw: dict[str, Any], where: str) -> tuple[dict[str, TensorEntry], dict[str, FileEntry]]:
    """The index of a manifest that passed MANIFEST_SCHEMA on the plain path. JSON Schema counts
    1.0 as an integer; parquant never writes one, and an entry msgspec cannot type is damage (65)."""
    try:
        tensors = {k: msgspec.convert(v, TensorEntry) for k, v in raw["tensors"].items()}
        return tensors, {k: msgspec.convert(v, FileEntry) for k, v in raw["files"].items()}
    except msgspec.ValidationError as exc:
        raise InvalidInputError(
            f"{where}: an index entry is invalid ({' '.join(str(exc).split())[:120]}); the model is damaged: "
            "re-run the stage that wrote it"
        ) from None


def strict_json(text: str | bytes, where: str) -> Any:
    """JSON as parquant writes it: no NaN/Infinity, no nesting deep enough to exhaust the stack."""
    try:
        return json.loads(text, parse_constant=refuse_non_finite)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise InvalidInputError(
            f"{where} is not valid JSON ({reason}); the model is damaged: re-run the stage that wrote it"
        ) from None
    except RecursionError:
        raise InvalidInputError(
            f"{where} is nested too deeply to be a parquant manifest; the model is damaged"
        ) from None


def refuse_non_finite(name: str) -> Any:
    """`parse_constant` for json.loads: parquant never writes NaN or Infinity, so none is valid."""
    raise ValueError(f"non-finite number {name}")


_UINT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_RANGE = {"type": "array", "items": _UINT, "minItems": 2, "maxItems": 2}
_PAGES = {
    "oneOf": [
        {"type": "null"},
        {"type": "array", "items": {"type": "array", "items": _UINT, "minItems": 3, "maxItems": 3}},
    ]
}
_TENSOR_SCHEMA = {
    "type": "object",
    "required": ["shard", "row_groups", "dtype", "shape", "nbytes", "crc32c"],
    "properties": {
        "shard": _UINT,
        "row_groups": _RANGE,
        "dtype": {"type": "string", "maxLength": 16},
        "shape": {"type": "array", "items": _UINT, "maxItems": 16},
        "nbytes": _UINT,
        "crc32c": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "data_pages": _PAGES,
    },
}
_FILE_SCHEMA = {
    "type": "object",
    "required": ["shard", "nbytes", "crc32c"],
    "properties": {
        "shard": _UINT,
        "row_groups": {"oneOf": [_RANGE, {"type": "null"}]},
        "nbytes": _UINT,
        "crc32c": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "data_pages": _PAGES,
    },
}
_STRINGS = {"type": "array", "items": {"type": "string"}}
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "parquant.json",
    "type": "object",
    "required": ["format", "format_version", "shards", "tensors", "files", "created_by"],
    "properties": {
        "format": {"const": FORMAT_NAME},
        "format_version": {"type": "string", "maxLength": 16},
        "shards": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4096}},
        "tensors": {"type": "object", "additionalProperties": _TENSOR_SCHEMA},
        "files": {"type": "object", "additionalProperties": _FILE_SCHEMA},
        "source": {"type": "object"},
        "created_by": {
            "type": "object",
            "required": ["stage", "parquant_version"],
            "properties": {
                "stage": {"type": "string"},
                "parquant_version": {"type": "string"},
                "config": {"type": "object"},
                "backend": {"type": ["string", "null"]},
                "fallbacks": _STRINGS,
                "library_versions": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "safetensors_layout": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["tensors"],
                "properties": {
                    "tensors": _STRINGS,
                    "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
                },
            },
        },
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}


def _schema_problem(raw: dict[str, Any]) -> str | None:
    """The first place where `raw` breaks MANIFEST_SCHEMA, in words; None when it conforms."""
    error = next(iter(_validator().iter_errors(raw)), None)
    if error is None:
        return None
    path = "/".join(str(p) for p in error.instance_path) or "(top level)"
    return f"field {path} is invalid ({' '.join(error.message.split())[:120]})"


@functools.cache
def _validator() -> Any:
    """jsonschema-rs: the same JSON Schema semantics as the `jsonschema` package, at a tenth of its
    start-up cost (27 ms against 220 ms, measured), which every stage that reads a model pays."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(MANIFEST_SCHEMA)
