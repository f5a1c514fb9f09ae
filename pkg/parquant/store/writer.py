"""Streaming writer of Parquet models (format v2), shard by shard, resumable, manifest last.

Memory stays at one chunk: each chunk becomes its own row group, written as soon as it is read, so
row groups are aligned to tensors and a reader fetches one tensor as a contiguous byte range.
Format v1 is read (store/legacy_v1.py) but no longer written.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import crc32c
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InternalError, InvalidInputError, UsageError
from ..outputs import OutputFolder
from ..prefetch import prefetched
from ..progress import ProgressCallback, ProgressEvent, no_progress
from .crc import crc32c_combine
from .items import ModelItem
from .manifest import FileEntry, Manifest, Provenance, TensorEntry
from .schema import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_SHARD_BYTES,
    DEFAULT_VERSION,
    FORMAT_NAME,
    FORMAT_VERSIONS,
    MAX_CHUNK_BYTES,
    META_FORMAT,
    META_VERSION,
    V1,
    V2,
    shard_name,
)

log = logging.getLogger("parquant")
COMPRESSIONS = ("none", "zstd", "snappy", "lz4", "gzip", "brotli")

# The Arrow schema of the layout (docs/FORMAT.md); only writing needs pyarrow's view of it.
V2_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("name", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("num_chunks", pa.int32(), nullable=False),
        pa.field("dtype", pa.dictionary(pa.int32(), pa.string())),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("data", pa.binary(), nullable=False),
        pa.field("crc32c", pa.uint32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class WriteOptions:
    """How a model is laid out; part of a stage's fingerprint, since it changes the bytes."""

    version: int = DEFAULT_VERSION
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    shard_bytes: int = DEFAULT_SHARD_BYTES
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.version == V1:
            raise UsageError(
                "--format-version 1 is read but no longer written (its files travel in the footer, in memory, and "
                "its tensors in one value each): use 2, the default; parquant reads v1 models as before"
            )
        if self.version != V2:
            raise UsageError(f"--format-version {self.version} is unknown: use 2 (the default)")
        if not 0 < self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise UsageError(f"--chunk-size must be between 1 byte and {MAX_CHUNK_BYTES} (64 MiB)")
        if self.shard_bytes <= 0:
            raise UsageError("--shard-size must be positive")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression {self.compression!r} is unknown: use one of {', '.join(COMPRESSIONS)}")


@dataclass
class ModelDescription:
    """Everything the manifest says besides the index the writer builds."""

    source: dict[str, str]
    created_by: Provenance
    safetensors_layout: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # When the stage that makes the model started (this process's monotonic clock): the manifest
    # records `stage_seconds`, how long making the model took (quantize time in reports).
    started: float = field(default_factory=time.monotonic)


def plan_shards(items: list[ModelItem], shard_bytes: int) -> list[list[ModelItem]]:
    """Greedy packing in the given order; a shard holds at least one item, whatever its size."""
    shards: list[list[ModelItem]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def write_model(
    output: OutputFolder,
    items: list[ModelItem],
    options: WriteOptions,
    description: ModelDescription,
    fingerprint: str,
    progress: ProgressCallback = no_progress,
    part: tuple[int, int] | None = None,
) -> Manifest | None:
    """Write all shards (skipping those a previous run finished), then the manifest.

    `part=(i, n)`: be fan-out worker i of n: write only the shards whose number is i modulo n,
    record each for the final run, and write no manifest (returns None). The shard plan depends
    only on the checkpoint and the options, so every worker and the final run agree on it.
    """
    started = time.monotonic()
    plan = plan_shards(items, options.shard_bytes)
    names = [shard_name(i, len(plan)) for i in range(len(plan))]
    work = fingerprint + f"|shards={len(plan)}"
    if part is not None:
        _write_part(output, plan, names, options, work, part, progress)
        return None
    done = output.begin(work)
    resumed = [name for name in names if name in done]
    if resumed:
        log.info("resuming: %d of %d shards already written by an earlier run", len(resumed), len(plan))
    total_bytes = sum(item.nbytes for item in items)
    tracker = _Tracker(progress, len(items), total_bytes)
    tensors: dict[str, TensorEntry] = {}
    files: dict[str, FileEntry] = {}
    sizes: dict[str, int | None] = {}
    for index, (name, shard_items) in enumerate(zip(names, plan, strict=True)):
        entries = _reusable(output, name, done.get(name))
        if entries is not None:
            tracker.skip(shard_items, name)
        else:
            with output.open_file(name, native=True) as handle:
                entries = _write_shard(handle, index, shard_items, options, tracker)
            entries["size"] = output.staged_size(name)
            output.record(name, entries)
        sizes[name] = entries.get("size")
        tensors.update({k: msgspec.convert(v, TensorEntry) for k, v in entries["tensors"].items()})
        files.update({k: msgspec.convert(v, FileEntry) for k, v in entries["files"].items()})
    manifest = Manifest(
        format_version=FORMAT_VERSIONS[options.version],
        shards=[output.published(name) for name in names],
        tensors=dict(sorted(tensors.items())),
        files=dict(sorted(files.items())),
        source=description.source,
        created_by=description.created_by,
        safetensors_layout=description.safetensors_layout,
        timings={
            **description.timings,
            "write_seconds": round(time.monotonic() - started, 3),
            "stage_seconds": round(time.monotonic() - description.started, 3),
        },
    )
    output.verify(sizes, parquet=True)
    output.commit(manifest.to_json().encode())
    return manifest


def _reusable(output: OutputFolder, name: str, entries: Any) -> dict[str, Any] | None:
    """A shard an earlier run recorded as finished, if it is still whole; else None (write it again)."""
    if not isinstance(entries, dict):
        return None
    if not output.intact(name, entries.get("size"), parquet=True):
        log.warning("%s was recorded as finished but is missing or truncated: writing it again", name)
        return None
    return entries


def _write_part(
    output: OutputFolder,
    plan: list[list[ModelItem]],
    names: list[str],
    options: WriteOptions,
    work: str,
    part: tuple[int, int],
    progress: ProgressCallback,
) -> None:
    index, count = part
    output.begin_worker(work)
    done = output.worker_records(work)
    mine = [i for i in range(len(plan)) if i % count == index]
    items = [item for i in mine for item in plan[i]]
    tracker = _Tracker(progress, len(items), sum(item.nbytes for item in items))
    log.info("fan-out worker %d of %d: shards %s of %d", index, count, [i + 1 for i in mine], len(plan))
    for i in mine:
        if _reusable(output, names[i], done.get(names[i])) is not None:
            tracker.skip(plan[i], names[i])
            continue
        with output.open_file(names[i], native=True) as handle:
            entries = _write_shard(handle, i, plan[i], options, tracker)
        entries["size"] = output.staged_size(names[i])
        output.record_worker_file(names[i], work, entries)


class _Tracker:
    def __init__(self, progress: ProgressCallback, total_items: int, total_bytes: int) -> None:
        self.progress = progress
        self.total_items = total_items
        self.total_bytes = total_bytes
        self.items = 0
        self.bytes = 0

    def advance(self, item: ModelItem, note: str = "") -> None:
        self.items += 1
        self.bytes += item.nbytes
        self.progress(
            ProgressEvent("write", item.name, self.items, self.total_items, self.bytes, self.total_bytes, note)
        )

    def skip(self, items: list[ModelItem], shard: str) -> None:
        for item in items:
            self.advance(item, note=f"already in {shard}")


def _write_shard(
    handle: IO[bytes], index: int, items: list[ModelItem], options: WriteOptions, tracker: _Tracker
) -> dict[str, Any]:
    metadata = {META_FORMAT: FORMAT_NAME.encode(), META_VERSION: FORMAT_VERSIONS[V2].encode()}
    writer = pq.ParquetWriter(
        handle,
        V2_SCHEMA.with_metadata(metadata),
        compression=options.compression,
        write_statistics=["kind", "name", "chunk", "num_chunks", "dtype"],
        use_dictionary=["kind", "name", "dtype"],
    )
    tensors: dict[str, Any] = {}
    files: dict[str, Any] = {}
    chunks: list[tuple[int, int]] = []  # (length, CRC32C) of each row group's chunk
    row_group = first = 0
    try:
        for piece in prefetched(_pieces(items, options.chunk_bytes)):
            item = piece.item
            first = row_group if piece.index == 0 else first
            writer.write_table(_v2_row(item, piece.index, piece.count, piece.data, piece.crc), row_group_size=1)
            chunks.append((len(piece.data), piece.crc))
            row_group += 1
            if piece.index < piece.count - 1:
                continue
            entry = {
                "shard": index,
                "row_groups": [first, row_group - 1],
                "nbytes": piece.written,
                "crc32c": piece.running_crc,
            }
            if item.spec is not None:
                tensors[item.name] = {**entry, "dtype": item.spec.dtype, "shape": list(item.spec.shape)}
            else:
                files[item.name] = entry
            tracker.advance(item)
    finally:
        writer.close()
    if options.compression == "none":
        pages = _data_pages(writer.writer.metadata, chunks)
        for entry in [*tensors.values(), *files.values()]:
            entry["data_pages"] = pages[entry["row_groups"][0] : entry["row_groups"][1] + 1]
    return {"tensors": tensors, "files": files}


def _data_pages(metadata: pq.FileMetaData, chunks: list[tuple[int, int]]) -> list[list[int]]:
    """[offset, length, crc] of the chunk value in every row group (the manifest's data_pages).

    The `data` column chunk of a row group is one uncompressed PLAIN page holding one value, and a
    page's values come last in it: the value is the last `length` bytes of the column chunk."""
    column = metadata.schema.to_arrow_schema().get_field_index("data")
    pages = []
    for group, (length, crc) in enumerate(chunks):
        chunk = metadata.row_group(group).column(column)
        pages.append([chunk.data_page_offset + chunk.total_compressed_size - length, length, crc])
    return pages


@dataclass(frozen=True)
class _Piece:
    """One chunk ready to write, with its checksums computed on the reading thread."""

    item: ModelItem
    index: int
    count: int
    data: bytes | memoryview | bytearray
    crc: int
    running_crc: int  # of the item's bytes up to and including this chunk
    written: int  # the item's bytes up to and including this chunk


def _pieces(items: list[ModelItem], chunk_bytes: int) -> Iterator[_Piece]:
    for item in items:
        count = max(1, -(-item.nbytes // chunk_bytes))
        running, written = 0, 0
        for index, data in enumerate(_chunks_of(item, chunk_bytes, count)):
            crc = crc32c.crc32c(data)
            running = crc32c_combine(running, crc, len(data))
            written += len(data)
            yield _Piece(item, index, count, data, crc, running, written)


def _chunks_of(item: ModelItem, chunk_bytes: int, count: int) -> Iterator[bytes | memoryview | bytearray]:
    """The item's `count` pieces, checked against the ModelItem contract before each is yielded."""
    source = iter(item.chunks(chunk_bytes))
    for index in range(count):
        expected = chunk_bytes if index < count - 1 else item.nbytes - chunk_bytes * (count - 1)
        piece = next(source, None)
        if piece is None and item.nbytes == 0:
            piece = b""
        if piece is None or len(piece) < expected:
            got = 0 if piece is None else len(piece)
            raise InvalidInputError(f"{item.name}: chunk {index} has {got} of {expected} bytes; the input is truncated")
        if len(piece) > expected or (index == count - 1 and next(source, None) is not None):
            raise InternalError(f"{item.name}: source yielded a {len(piece)}-byte piece as chunk {index} of {count}")
        yield piece


def _v2_row(item: ModelItem, chunk: int, num_chunks: int, data: bytes | memoryview | bytearray, crc: int) -> pa.Table:
    """One row, built from buffers: `pa.array` on Python values imports pandas on first use (0.2 s of
    every import run, measured), and nothing here needs it."""
    spec = item.spec
    if spec is None:
        dtype = pa.DictionaryArray.from_buffers(_DICT, 1, [_NULL, _ZERO_INDEX], _strings(b""), null_count=1)
        shape = pa.Array.from_buffers(_SHAPE, 1, [_NULL, _offsets(0)], null_count=1, children=[_int64s([])])
    else:
        dtype = _dictionary(spec.dtype.encode())
        shape = pa.Array.from_buffers(_SHAPE, 1, [None, _offsets(len(spec.shape))], children=[_int64s(spec.shape)])
    return pa.Table.from_arrays(
        [
            _dictionary(item.kind.encode()),
            _dictionary(item.name.encode()),
            pa.Array.from_buffers(pa.int32(), 1, [None, pa.py_buffer(struct.pack("<i", chunk))]),
            pa.Array.from_buffers(pa.int32(), 1, [None, pa.py_buffer(struct.pack("<i", num_chunks))]),
            dtype,
            shape,
            pa.Array.from_buffers(pa.binary(), 1, [None, _offsets(len(data)), pa.py_buffer(data)]),
            pa.Array.from_buffers(pa.uint32(), 1, [None, pa.py_buffer(struct.pack("<I", crc))]),
        ],
        schema=V2_SCHEMA,
    )


_DICT = pa.dictionary(pa.int32(), pa.string())
_SHAPE = pa.list_(pa.int64())
_NULL = pa.py_buffer(b"\x00")  # validity bitmap of one null value
_ZERO_INDEX = pa.py_buffer(struct.pack("<i", 0))


def _offsets(length: int) -> pa.Buffer:
    return pa.py_buffer(struct.pack("<ii", 0, length))


def _strings(value: bytes) -> pa.Array:
    return pa.Array.from_buffers(pa.string(), 1, [None, _offsets(len(value)), pa.py_buffer(value)])


def _dictionary(value: bytes) -> pa.Array:
    return pa.DictionaryArray.from_buffers(_DICT, 1, [None, _ZERO_INDEX], _strings(value))


def _int64s(values: Sequence[int]) -> pa.Array:
    return pa.Array.from_buffers(
        pa.int64(), len(values), [None, pa.py_buffer(struct.pack(f"<{len(values)}q", *values))]
    )


def _check_length(item: ModelItem, written: int) -> None:
    if written != item.nbytes:
        raise InvalidInputError(
            f"{item.name}: expected {item.nbytes} bytes from the source, got {written}; the input is truncated"
        )
