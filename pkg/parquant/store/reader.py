"""Streaming reader of Parquet models: one tensor by name with range reads, checksums verified.

The reader trusts nothing it has not checked: the manifest's version, each chunk's position and
CRC32C, each tensor's length and whole-tensor CRC32C. A damaged byte anywhere is an
`InvalidInputError` naming the tensor and the shard, never silently wrong weights.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import os
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import crc32c

from ..errors import InputNotFoundError, InvalidInputError, UnavailableError
from ..fs import Location, storage_errors
from ..names import safe_relative_path
from . import legacy_v1
from .config_json import parse_config
from .crc import crc32c_combine
from .manifest import MAX_MANIFEST_BYTES, DataPages, FileEntry, Manifest, Provenance, TensorEntry
from .schema import (
    DTYPE_SIZES,
    FORMAT_VERSIONS,
    KIND_FILE,
    MANIFEST_NAME,
    MAX_CHUNK_BYTES,
    META_VERSION,
    SUPPORTED_MAJOR_VERSIONS,
    V1,
    V2,
    TensorSpec,
    major_version,
)

if TYPE_CHECKING:  # imported where used: opening a model and reading by data_pages needs neither
    import pyarrow as pa
    import pyarrow.parquet as pq

_V2_READ_COLUMNS = ["name", "chunk", "num_chunks", "data", "crc32c"]
_UNKNOWN_CRC = -1  # bare Parquet files (no manifest) carry no whole-tensor checksum


class ModelReader:
    """Open a Parquet model folder (with `parquant.json`) or a bare `.parquet` file."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._shards: dict[int, tuple[IO[bytes], pq.ParquetFile]] = {}
        self._v1_files: dict[int, dict[str, bytes]] = {}
        self._descriptors: dict[int, int] = {}  # local shards read through data_pages
        self._page_overlaps: dict[int, set[str]] = {}  # shard -> entries whose data_pages overlap
        self._maps: dict[int, tuple[mmap.mmap, memoryview]] = {}  # local shards mapped by mapped_tensor
        if _is_file(location):
            self.folder = Location(location.fs, location.path.rsplit("/", 1)[0], location.url)
            self.manifest = self._scan_bare_file()
        else:
            self.folder = location
            self.manifest = self._load_manifest()
        self._check_entries()

    # -- public API -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.manifest.major_version

    def tensor_names(self) -> list[str]:
        return list(self.manifest.tensors)

    def tensor_spec(self, name: str) -> TensorSpec:
        return self._tensor_entry(name).spec(name)

    def file_names(self) -> list[str]:
        return list(self.manifest.files)

    def config(self) -> dict[str, Any]:
        """The checkpoint's config.json (empty when the model carries none)."""
        if "config.json" not in self.manifest.files:
            return {}
        return parse_config(self.read_file("config.json"), f"config.json in {self.location.url}")

    def iter_tensor_chunks(self, name: str) -> Iterator[bytes | memoryview]:
        """Yield a tensor's bytes chunk by chunk; checks every chunk and the whole at the end."""
        entry = self._tensor_entry(name)
        yield from self._verified_chunks(name, entry)

    def read_tensor(self, name: str) -> bytes:
        return b"".join(self.iter_tensor_chunks(name))

    def read_tensor_into(self, name: str, target: memoryview) -> None:
        """A tensor's bytes, checked, into `target` (exactly its size)."""
        entry = self._tensor_entry(name)
        if len(target) != entry.nbytes:
            raise ValueError(f"{name} has {entry.nbytes} bytes, the target {len(target)}")
        position, target = 0, target.cast("B")
        for piece in self._verified_chunks(name, entry):
            target[position : position + len(piece)] = memoryview(piece).cast("B")
            position += len(piece)

    def mapped_tensor(self, name: str) -> MappedTensor:
        """`with reader.mapped_tensor(name) as views:` a local tensor's chunks as checked views of the
        memory-mapped shard (no copy made here: the caller copies them where it wants them, e.g. with
        torch's multi-threaded copy), or None where that does not apply (remote, older models, a
        range that does not check out: then read it with `read_tensor_into`, which judges it).

        On leaving the block the pages of a big tensor leave this process's resident set (the page
        cache keeps them), so reading a whole model through the map does not grow the RSS by the
        model's size; a view used later reads the file again."""
        entry = self._tensor_entry(name)
        views = self._checked_views(entry) if self._pages_trusted(name, entry) else None
        mapped = self._maps[entry.shard][0] if views is not None else None
        return MappedTensor(views, mapped, entry.data_pages if entry.nbytes >= _RELEASE_BYTES else None)

    def _checked_views(self, entry: TensorEntry) -> list[memoryview] | None:
        pages = entry.data_pages
        if not self.folder.is_local or self.version != V2 or pages is None:
            return None
        mapped = self._mapped(entry.shard)
        views = []
        for offset, length, chunk_crc in pages:  # their sum and whole CRC: _pages_trusted
            view = mapped[offset : offset + length]
            if len(view) != length or crc32c.crc32c(view) != chunk_crc:
                return None
            views.append(view)
        return views

    def read_file(self, name: str) -> bytes:
        return b"".join(self.iter_file_chunks(name))

    def iter_file_chunks(self, name: str) -> Iterator[bytes | memoryview]:
        """A stored file's bytes chunk by chunk (a big non-tensor file never sits in memory whole)."""
        entry = self.manifest.files.get(name)
        if entry is None:
            raise InvalidInputError(f"{self.location.url} has no file {name!r}")
        if entry.row_groups is None:
            data = self._v1_file_blob(entry.shard, name)
            _check_crc(name, data, entry.crc32c, self._shard_url(entry.shard))
            yield data
            return
        yield from self._verified_chunks(name, entry)

    def close(self) -> None:
        for handle, _ in self._shards.values():
            handle.close()
        self._shards.clear()
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()
        for mapped, view in self._maps.values():
            with contextlib.suppress(BufferError):  # a caller still holds a view: the map goes with it
                view.release()
                mapped.close()
        self._maps.clear()

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifest ---------------------------------------------------------------------------------
    def _load_manifest(self) -> Manifest:
        manifest_location = self.folder.child(MANIFEST_NAME)
        if not manifest_location.exists():
            if self.folder.child("config.json").exists() and any(
                n.endswith(".safetensors") for n in self.folder.list_files()
            ):
                raise InputNotFoundError(
                    f"{self.location.url} is a Hugging Face checkpoint folder, not a Parquet model: convert it "
                    f"first with `parquant import {self.location.url} -o MODEL`, then pass MODEL"
                )
            if self.folder.exists():
                raise InputNotFoundError(
                    f"{self.location.url} is not a complete parquant model (no {MANIFEST_NAME}): "
                    "the stage that wrote it did not finish; re-run it"
                )
            raise InputNotFoundError(f"model {self.location.url} not found: check the URL")
        if manifest_location.size() > MAX_MANIFEST_BYTES:
            raise InvalidInputError(
                f"{manifest_location.url} is larger than the {MAX_MANIFEST_BYTES} bytes a manifest may have: "
                "the model is damaged or not a parquant model"
            )
        return Manifest.from_json(manifest_location.read_bytes(), manifest_location.url)

    def _check_entries(self) -> None:
        """Every entry is checked before any is used (a loop of plain operations: it runs over every
        tensor of the model each time one is opened)."""
        for name, file in self.manifest.files.items():
            safe_relative_path(name, self.location.url)
            _check_pages(name, file)
        v2, shards, sizes = self.version == V2, len(self.manifest.shards), DTYPE_SIZES
        for name, entry in self.manifest.tensors.items():
            size = sizes.get(entry.dtype)
            if size is None:
                raise UnavailableError(f"tensor {name} has dtype {entry.dtype!r}, which parquant does not know")
            if math.prod(entry.shape) * size != entry.nbytes:
                raise InvalidInputError(f"tensor {name}: shape {list(entry.shape)} and {entry.nbytes} bytes disagree")
            if not 0 <= entry.shard < shards:
                raise InvalidInputError(f"tensor {name} points at shard {entry.shard}, which the manifest lacks")
            first, last = entry.row_groups
            # A v2 chunk holds at most 64 MiB: more bytes than the row groups can hold is a lie
            # (e.g. a 2^40 x 2^40 tensor in one row group), and invalid input, not a space problem.
            if first > last or (v2 and entry.nbytes > (last - first + 1) * MAX_CHUNK_BYTES):
                raise InvalidInputError(
                    f"tensor {name}: {entry.nbytes} bytes cannot be stored in row groups {first}-{last}; "
                    "the manifest is damaged: re-create the model"
                )
            _check_pages(name, entry)

    def _tensor_entry(self, name: str) -> TensorEntry:
        entry = self.manifest.tensors.get(name)
        if entry is None:
            raise InvalidInputError(f"{self.location.url} has no tensor {name!r}")
        return entry

    # -- shards -----------------------------------------------------------------------------------
    def _shard_url(self, shard: int) -> str:
        return self.folder.child(self.manifest.shards[shard]).url

    def _parquet(self, shard: int) -> pq.ParquetFile:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if shard not in self._shards:
            location = self.folder.child(self.manifest.shards[shard])
            if not location.exists():
                raise InvalidInputError(f"shard {location.url} listed in the manifest is missing: re-create the model")
            # Local: a native Arrow file (no Python in the read path). Remote: coalesced range reads.
            handle = pa.OSFile(location.path) if location.is_local else location.open_read()
            try:
                with _corrupt_is_invalid(location.url):
                    parquet = pq.ParquetFile(handle, pre_buffer=not location.is_local)
            except BaseException:
                handle.close()
                raise
            self._shards[shard] = (handle, parquet)
        return self._shards[shard][1]

    def _verified_chunks(self, name: str, entry: TensorEntry | FileEntry) -> Iterator[bytes | memoryview]:
        if self.version == V2 and self._pages_trusted(name, entry):  # one per row group: _check_entries
            yield from self._paged_chunks(name, entry)
            return
        yield from self._decoded_chunks(name, entry)

    def _pages_trusted(self, name: str, entry: TensorEntry | FileEntry) -> bool:
        """Whether an entry's data_pages may be read instead of the footer: they must add up to
        the entry's own length and whole CRC, and claim no byte another entry's pages claim. A
        manifest edited to point one tensor at another's bytes fails one of these, and the read
        goes through the footer, whose rows name their tensor."""
        pages = entry.data_pages
        if pages is None:
            return False
        running, total = 0, 0
        for _, length, chunk_crc in pages:
            running = crc32c_combine(running, chunk_crc, length)
            total += length
        if total != entry.nbytes or running != entry.crc32c:
            return False
        return name not in self._shared_pages(entry.shard)

    def _shared_pages(self, shard: int) -> set[str]:
        """The entries of a shard whose data_pages overlap another entry's (worked out once a shard)."""
        if shard not in self._page_overlaps:
            ranges = sorted(
                (offset, offset + length, name)
                for section in (self.manifest.tensors, self.manifest.files)
                for name, entry in section.items()
                if entry.shard == shard
                for offset, length, _ in entry.data_pages or ()
            )
            shared: set[str] = set()
            reach, owner = -1, ""
            for start, end, name in ranges:
                if start < reach and name != owner:
                    shared.update((name, owner))
                if end > reach:
                    reach, owner = end, name
            self._page_overlaps[shard] = shared
        return self._page_overlaps[shard]

    def _decoded_chunks(self, name: str, entry: TensorEntry | FileEntry) -> Iterator[bytes | memoryview]:
        """Chunks found through the shard's Parquet footer, each row's chunk number and CRC checked."""
        shard, nbytes, crc = entry.shard, entry.nbytes, entry.crc32c
        assert entry.row_groups is not None
        first, last = entry.row_groups
        url = self._shard_url(shard)
        parquet = self._parquet(shard)
        if not 0 <= first <= last < parquet.num_row_groups:
            raise InvalidInputError(f"{name}: row groups {first}-{last} are outside {url}; the model is damaged")
        if self.version == V1:
            with _corrupt_is_invalid(url), storage_errors(url):
                table = parquet.read_row_group(first, columns=["name", "data"])
            value = legacy_v1.tensor_value(table, first, name, url)
            _check_length(name, len(value), nbytes, url)
            _check_crc(name, value, crc, url)
            yield value
            return
        total, running, expected_chunk, count = 0, 0, 0, -1
        for row_name, chunk, chunks, data, stored_crc, verified in self._rows(shard, first, last, url):
            if row_name != name:
                raise InvalidInputError(
                    f"{name}: row groups {first}-{last} of {url} hold {row_name!r}; the manifest is damaged: "
                    "re-create the model"
                )
            count = chunks if count < 0 else count
            if chunk != expected_chunk or chunk >= count:
                raise InvalidInputError(f"{name}: chunk {expected_chunk} is missing in {url}; the model is damaged")
            if not verified and crc32c.crc32c(data) != stored_crc:
                raise InvalidInputError(
                    f"checksum mismatch in {name} (chunk {chunk}) in {url}: the file is corrupt; re-create it"
                )
            expected_chunk += 1
            total += len(data)
            running = crc32c_combine(running, stored_crc, len(data))  # stored_crc was checked above
            yield data
        if expected_chunk != count:
            raise InvalidInputError(f"{name}: {expected_chunk} of {count} chunks found in {url}; the model is damaged")
        _check_length(name, total, nbytes, url)
        if crc != _UNKNOWN_CRC and running != crc:
            raise InvalidInputError(f"checksum mismatch in {name} in {url}: the file is corrupt; re-create it")

    def _paged_chunks(self, name: str, entry: TensorEntry | FileEntry) -> Iterator[bytes | memoryview]:
        """Chunks read by their manifest byte ranges (one range read each, no footer); a chunk whose
        page does not parse or match its CRC is decoded by pyarrow instead, which judges it."""
        assert entry.row_groups is not None and entry.data_pages is not None
        url = self._shard_url(entry.shard)
        total, running = 0, 0
        for index, (offset, length, chunk_crc) in enumerate(entry.data_pages):
            data = self._read_page(entry.shard, offset, length, url)
            if len(data) != length or crc32c.crc32c(data) != chunk_crc:
                # the footer's view of the shard judges it, from this chunk on
                yield from itertools.islice(self._decoded_chunks(name, entry), index, None)
                return
            total += len(data)
            running = crc32c_combine(running, chunk_crc, len(data))
            yield data
        _check_length(name, total, entry.nbytes, url)
        if running != entry.crc32c:
            raise InvalidInputError(f"checksum mismatch in {name} in {url}: the file is corrupt; re-create it")

    def _read_page(self, shard: int, offset: int, size: int, url: str) -> bytes:
        if size > MAX_CHUNK_BYTES:
            raise InvalidInputError(f"{url}: a chunk of {size} bytes in the manifest; the manifest is damaged")
        if not self.folder.is_local:
            location = self.folder.child(self.manifest.shards[shard])
            try:
                return location.read_range(offset, offset + size)
            except InputNotFoundError:
                raise InvalidInputError(f"shard {url} listed in the manifest is missing: re-create the model") from None
        with storage_errors(url):
            return os.pread(self._descriptor(shard, url), size, offset)

    def _descriptor(self, shard: int, url: str) -> int:
        if shard not in self._descriptors:
            path = self.folder.child(self.manifest.shards[shard]).path
            try:
                self._descriptors[shard] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise InvalidInputError(f"shard {url} listed in the manifest is missing: re-create the model") from None
        return self._descriptors[shard]

    def _mapped(self, shard: int) -> memoryview:
        if shard not in self._maps:
            url = self._shard_url(shard)
            with storage_errors(url):
                descriptor = self._descriptor(shard, url)
                # ACCESS_COPY: a private, writable view (torch wants one), never written back
                mapped = mmap.mmap(descriptor, 0, access=mmap.ACCESS_COPY)
                self._maps[shard] = (mapped, memoryview(mapped))
        return self._maps[shard][1]

    def _rows(
        self, shard: int, first: int, last: int, url: str
    ) -> Iterator[tuple[str, int, int, memoryview, int, bool]]:
        """(name, chunk, num_chunks, data, stored crc, crc already verified) of each row in row groups first..last."""
        import pyarrow as pa

        parquet = self._parquet(shard)
        handle = self._shards[shard][0]
        raw = self.folder.is_local and isinstance(handle, pa.NativeFile)
        if not raw:
            for group in range(first, last + 1):
                yield from self._decoded_rows(parquet, group, url)
            return
        with _corrupt_is_invalid(url), storage_errors(url):
            small = parquet.read_row_groups(
                list(range(first, last + 1)), columns=["name", "chunk", "num_chunks", "crc32c"]
            )
        if small.num_rows != last - first + 1:
            for group in range(first, last + 1):
                yield from self._decoded_rows(parquet, group, url)
            return
        names, chunks, counts, crcs = (small.column(c).to_pylist() for c in ("name", "chunk", "num_chunks", "crc32c"))
        for offset, group in enumerate(range(first, last + 1)):
            data = _raw_value(parquet, handle, group, crcs[offset])
            if data is None:  # an unexpected page layout: let pyarrow decode it (and judge it)
                yield from self._decoded_rows(parquet, group, url)
            else:
                yield names[offset], chunks[offset], counts[offset], data, crcs[offset], True

    @staticmethod
    def _decoded_rows(
        parquet: pq.ParquetFile, group: int, url: str
    ) -> Iterator[tuple[str, int, int, memoryview, int, bool]]:
        with _corrupt_is_invalid(url), storage_errors(url):
            table = parquet.read_row_group(group, columns=_V2_READ_COLUMNS)
        values = _binary_values(table.column("data"))
        for row in range(table.num_rows):
            yield (
                table.column("name")[row].as_py(),
                table.column("chunk")[row].as_py(),
                table.column("num_chunks")[row].as_py(),
                values[row],
                table.column("crc32c")[row].as_py(),
                False,
            )

    def _v1_file_blob(self, shard: int, name: str) -> bytes:
        if shard not in self._v1_files:
            self._v1_files[shard] = legacy_v1.footer_files(self._parquet(shard).schema_arrow.metadata)
        if name not in self._v1_files[shard]:
            raise InvalidInputError(f"file {name!r} is missing from {self._shard_url(shard)}; the model is damaged")
        return self._v1_files[shard][name]

    # -- bare .parquet files (no manifest): index them by scanning the small columns -------------
    def _scan_bare_file(self) -> Manifest:
        shard_file = self.location.path.rsplit("/", 1)[-1]
        self.manifest = Manifest(FORMAT_VERSIONS[V2], [shard_file], {}, {}, {}, Provenance("external", ""))
        parquet = self._parquet(0)
        metadata = parquet.schema_arrow.metadata or {}
        version = major_version(metadata.get(META_VERSION, b"").decode() or self._guess_version(parquet))
        if version not in SUPPORTED_MAJOR_VERSIONS:
            raise UnavailableError(
                f"{self.location.url} has format version {metadata.get(META_VERSION, b'?').decode()}: "
                "upgrade parquant to read it"
            )
        tensors: dict[str, TensorEntry] = {}
        files: dict[str, FileEntry] = {}
        columns = legacy_v1.COLUMNS if version == V1 else ["kind", "name", "dtype", "shape"]
        for group in range(parquet.num_row_groups):
            with _corrupt_is_invalid(self.location.url):
                rows = parquet.read_row_group(group, columns=columns).to_pylist()
            for row in rows:
                _index_bare_row(row, group, version, tensors, files, parquet)
        if version == V1:
            for name, blob in legacy_v1.footer_files(metadata).items():
                files[name] = FileEntry(shard=0, row_groups=None, nbytes=len(blob), crc32c=_UNKNOWN_CRC)
        return Manifest(
            FORMAT_VERSIONS[version],
            [shard_file],
            tensors,
            files,
            {"url": self.location.url},
            Provenance("external", ""),
        )

    @staticmethod
    def _guess_version(parquet: pq.ParquetFile) -> str:
        names = set(parquet.schema_arrow.names)
        v1 = legacy_v1.looks_like_v1(parquet)
        if v1 is not None:
            return v1
        if {"kind", "name", "chunk", "data", "crc32c"} <= names:
            return FORMAT_VERSIONS[V2]
        return "0"


_MAX_PAGE_HEADER = 256
_RELEASE_BYTES = 2**20  # tensors from this size on leave the resident set after use (mapped_tensor)


class MappedTensor:
    """The context manager `ModelReader.mapped_tensor` returns (a class: it runs for every tensor)."""

    __slots__ = ("_mapped", "_pages", "views")

    def __init__(self, views: list[memoryview] | None, mapped: mmap.mmap | None, pages: DataPages | None) -> None:
        self.views, self._mapped, self._pages = views, mapped, pages

    def __enter__(self) -> list[memoryview] | None:
        return self.views

    def __exit__(self, *exc: object) -> None:
        if self._mapped is None or self._pages is None:
            return
        for offset, length, _ in self._pages:
            start = offset - offset % mmap.PAGESIZE
            with contextlib.suppress(OSError, ValueError):
                self._mapped.madvise(mmap.MADV_DONTNEED, start, offset + length - start)


def _raw_value(parquet: pq.ParquetFile, handle: pa.NativeFile, group: int, crc: int) -> memoryview | None:
    """A chunk's bytes read straight from its uncompressed PLAIN data page, or None to fall back.

    parquant writes one value per row group, so the `data` column chunk is a single page:
    [page header][4-byte length][value]. Reading it into a fresh buffer skips pyarrow's decode
    copy; the stored CRC32C must match, else the decoding path takes over (and judges the bytes).
    """
    metadata = parquet.metadata.row_group(group)
    column = metadata.column(parquet.schema_arrow.get_field_index("data"))
    if column.compression != "UNCOMPRESSED" or column.has_dictionary_page or column.num_values != 1:
        return None
    total = column.total_compressed_size
    handle.seek(column.data_page_offset)
    # Arrow's pool hands back recently freed memory, uninitialised: no zero-fill and no fresh page
    # faults per chunk (a new bytearray costs both, more than the read itself).
    buffer = handle.read_buffer(total)
    if buffer.size != total:
        return None
    view = memoryview(buffer)
    start = _value_start(view[: _MAX_PAGE_HEADER + 4], total)
    if start < 0:
        return None
    value = view[start:]
    return value if crc32c.crc32c(value) == crc else None


def _value_start(head: bytes | memoryview, size: int) -> int:
    """Where the value starts in a one-value PLAIN page of `size` bytes whose first bytes are `head`
    ([page header][4-byte length][value]); -1 when no length field fits."""
    for header in range(2, min(_MAX_PAGE_HEADER, len(head) - 4)):
        if int.from_bytes(head[header : header + 4], "little") == size - header - 4:
            return header + 4
    return -1


def _binary_values(column: pa.ChunkedArray) -> list[memoryview]:
    """Zero-copy views of a (large_)binary column's values (a scalar's as_buffer() copies)."""
    import numpy as np
    import pyarrow as pa

    views: list[memoryview] = []
    for array in column.chunks:
        _, offsets_buffer, data_buffer = array.buffers()
        width = np.int64 if pa.types.is_large_binary(array.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, dtype=width)[array.offset : array.offset + len(array) + 1]
        data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
        views += [data[int(start) : int(end)] for start, end in itertools.pairwise(offsets)]
    return views


def _is_file(location: Location) -> bool:
    with storage_errors(location.url):
        return bool(location.fs.isfile(location.path))


def _index_bare_row(
    row: dict[str, Any],
    group: int,
    version: int,
    tensors: dict[str, TensorEntry],
    files: dict[str, FileEntry],
    parquet: pq.ParquetFile,
) -> None:
    name = row["name"]
    if version == V2 and row["kind"] == KIND_FILE:
        previous = files.get(name)
        start = previous.row_groups[0] if previous and previous.row_groups else group
        files[name] = FileEntry(shard=0, row_groups=(start, group), nbytes=-1, crc32c=_UNKNOWN_CRC)
        return
    shape = tuple(row["shape"] or ())
    previous_tensor = tensors.get(name)
    start = previous_tensor.row_groups[0] if previous_tensor else group
    tensors[name] = TensorEntry(
        shard=0,
        row_groups=(start, group),
        dtype=row["dtype"],
        shape=shape,
        nbytes=TensorSpec(name, row["dtype"], shape).nbytes if row["dtype"] in DTYPE_SIZES else -1,
        crc32c=_UNKNOWN_CRC,
    )


def _check_pages(name: str, entry: TensorEntry | FileEntry) -> None:
    """data_pages, where present, hold one range per row group of the entry."""
    if entry.data_pages is None:
        return
    first, last = entry.row_groups or (0, -1)
    if len(entry.data_pages) != last - first + 1:
        raise InvalidInputError(f"{name}: data_pages do not match its row groups; the manifest is damaged")


def _check_length(name: str, got: int, expected: int, url: str) -> None:
    if expected >= 0 and got != expected:
        raise InvalidInputError(f"{name}: {got} bytes in {url}, the manifest says {expected}; the model is damaged")


def _check_crc(name: str, data: bytes, crc: int, url: str) -> None:
    if crc != _UNKNOWN_CRC and crc32c.crc32c(data) != crc:
        raise InvalidInputError(f"checksum mismatch in {name} in {url}: the file is corrupt; re-create it")


@contextlib.contextmanager
def _corrupt_is_invalid(url: str) -> Iterator[None]:
    """pyarrow's complaints about bytes it cannot parse mean a corrupt or truncated shard (exit 65)."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        if isinstance(exc, OSError) and "parquet" not in str(exc).lower():
            raise
        reason = " ".join(str(exc).split())[:160]
        raise InvalidInputError(
            f"{url} is corrupt or truncated ({reason}): re-create it with the stage that wrote it"
        ) from None


__all__ = ["V1", "V2", "ModelReader"]
