"""Hugging Face checkpoint folders <-> streams of tensors and files.

safetensors is read and written here directly (8-byte header length, JSON header, raw bytes), so a
tensor is a byte range: conversion streams it in chunks through range reads on any fsspec store,
never loads a whole file, never imports torch, and keeps tensors bit-exact. Pickle checkpoints
(`*.bin`, `*.pt`) are refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import InputNotFoundError, InvalidInputError, UnavailableError
from .fs import Location, storage_errors
from .names import safe_relative_path
from .store.config_json import parse_config
from .store.items import ModelItem
from .store.manifest import refuse_non_finite
from .store.schema import DTYPE_SIZES, KIND_FILE, KIND_TENSOR, TensorSpec

INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Non-tensor files up to this size are hashed whole for the fingerprint; bigger ones by version.
_HASHED_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_EXPORT_SHARD_BYTES = 5 * 10**9  # "5GB", as transformers' save_pretrained splits
PICKLE_HINT = (
    "parquant never unpickles (it can run arbitrary code). Convert it once, in an environment you "
    'trust: python -c "from transformers import AutoModelForCausalLM as M; '
    "M.from_pretrained('IN').save_pretrained('OUT', safe_serialization=True)\" and import OUT"
)


@dataclass(frozen=True)
class StoredTensor:
    spec: TensorSpec
    start: int  # absolute byte offset in the file
    end: int


@dataclass
class SafetensorsFile:
    name: str  # relative to the checkpoint folder
    location: Location
    tensors: dict[str, StoredTensor]
    metadata: dict[str, str] | None
    header: bytes


def read_safetensors_header(location: Location, name: str) -> SafetensorsFile:
    """Parse and validate a safetensors header; every offset is checked against the file size."""
    size = location.size()
    if size < 8:
        raise InvalidInputError(f"{location.url} is too short to be safetensors (truncated?)")
    (header_len,) = struct.unpack("<Q", location.read_range(0, 8))
    if header_len > min(MAX_HEADER_BYTES, size - 8):
        raise InvalidInputError(
            f"{location.url} has an impossible header length {header_len} (truncated or not safetensors)"
        )
    header = location.read_range(8, 8 + header_len)
    try:
        raw = json.loads(header, parse_constant=refuse_non_finite, object_pairs_hook=_unique_keys)
        json.dumps(raw, ensure_ascii=False).encode()  # a lone surrogate (`"\ud800"`) is no UTF-8 name
    except (UnicodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise InvalidInputError(f"{location.url} has a malformed safetensors header ({reason})") from None
    except RecursionError:
        raise InvalidInputError(
            f"{location.url} has a safetensors header nested too deeply (not safetensors)"
        ) from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{location.url} has a malformed safetensors header (not an object)")
    metadata = raw.pop("__metadata__", None)
    data_start = 8 + header_len
    tensors: dict[str, StoredTensor] = {}
    for tensor_name, info in raw.items():
        tensors[tensor_name] = _stored_tensor(location.url, tensor_name, info, data_start, size)
    _check_no_overlap(location.url, tensors)
    return SafetensorsFile(name, location, tensors, metadata, header)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a header naming one tensor twice is ambiguous
    (each reader would keep another one), so it is refused instead of the last one winning."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the name {key!r} appears twice")
        found[key] = value
    return found


def _stored_tensor(url: str, name: str, info: Any, data_start: int, size: int) -> StoredTensor:
    try:
        dtype = info["dtype"]
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        numbers = [*shape, begin, end]
        if not isinstance(dtype, str) or not all(isinstance(x, int) and not isinstance(x, bool) for x in numbers):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise InvalidInputError(f"{url}: tensor {name} has a malformed header entry") from None
    if dtype not in DTYPE_SIZES:
        raise UnavailableError(f"{url}: tensor {name} has dtype {dtype}, which parquant does not support")
    spec = TensorSpec(name, dtype, shape)
    if any(d < 0 for d in shape) or end - begin != spec.nbytes or begin < 0:
        raise InvalidInputError(f"{url}: tensor {name} offsets {begin}-{end} do not match shape {list(shape)} {dtype}")
    if data_start + end > size:
        raise InvalidInputError(f"{url}: tensor {name} ends past the end of the file (truncated)")
    return StoredTensor(spec, data_start + begin, data_start + end)


def _check_no_overlap(url: str, tensors: dict[str, StoredTensor]) -> None:
    ordered = sorted(tensors.values(), key=lambda t: t.start)
    for left, right in itertools.pairwise(ordered):
        if left.end > right.start:
            raise InvalidInputError(f"{url}: tensors {left.spec.name} and {right.spec.name} overlap")


@dataclass
class HFCheckpoint:
    """A checkpoint folder, opened and validated, ready to be streamed."""

    location: Location
    files: list[str]
    weights: list[SafetensorsFile]
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, location: Location) -> HFCheckpoint:
        if not location.exists():
            raise InputNotFoundError(f"checkpoint {location.url} not found: check the URL")
        names = [n for n in location.list_files() if not any(p.startswith(".") for p in n.split("/"))]
        if not names:
            raise InputNotFoundError(
                f"{location.url} is empty or not a folder: point at a Hugging Face checkpoint folder"
            )
        _check_contained(location, names)
        _check_regular_files(location, names)
        weight_names = [n for n in names if n.endswith(".safetensors")]
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if not weight_names:
            if pickles:
                raise UnavailableError(f"{location.url} holds only pickle weights ({pickles[0]}): {PICKLE_HINT}")
            raise InvalidInputError(f"{location.url} has no *.safetensors weights: is it a Hugging Face checkpoint?")
        weights = [read_safetensors_header(location.child(n), n) for n in weight_names]
        _check_unique_tensors(location.url, weights)
        files = [safe_relative_path(n, location.url) for n in names if n not in weight_names and n not in pickles]
        checkpoint = cls(location, files, weights, skipped=pickles)
        checkpoint.config()  # refused at the door (65) rather than by every later stage
        return checkpoint

    def config(self) -> dict[str, Any]:
        if "config.json" not in self.files:
            return {}
        return parse_config(self.location.child("config.json").read_bytes(), f"{self.location.url}/config.json")

    def fingerprint(self) -> str:
        """Changes whenever any byte of the checkpoint does, without reading the weights.

        Weights: their header plus the storage's own version of the file (`version_token`: the
        object's ETag on S3; size, mtime, ctime and inode on local disk), so a retrained checkpoint
        with the same shapes is never taken for the old one. Small files are hashed whole.
        """
        digest = hashlib.sha256()
        for weight in self.weights:
            digest.update(f"{weight.name}\0{version_token(weight.location)}\0".encode() + weight.header)
        for name in self.files:
            child = self.location.child(name)
            size = child.size()
            if size <= _HASHED_FILE_BYTES:
                token = hashlib.sha256(child.read_bytes()).hexdigest()
            else:
                token = version_token(child)
            digest.update(f"{name}\0{token}\0".encode())
        return digest.hexdigest()

    def layout(self) -> dict[str, dict[str, Any]]:
        return {w.name: {"tensors": list(w.tensors), "metadata": w.metadata} for w in self.weights}

    def items(self, tensor_filter: Callable[[TensorSpec, bytes | memoryview], None] | None = None) -> list[ModelItem]:
        """Files first, then tensors sorted by name; `tensor_filter` sees every chunk (NaN checks)."""
        items = []
        for name in self.files:
            child = self.location.child(name)
            size = child.size()
            items.append(ModelItem(KIND_FILE, name, size, _file_chunks(child, size)))
        stored = {t.spec.name: (w, t) for w in self.weights for t in w.tensors.values()}
        for name in sorted(stored):
            weight, tensor = stored[name]
            items.append(
                ModelItem(
                    KIND_TENSOR,
                    name,
                    tensor.spec.nbytes,
                    _range_chunks(weight.location, tensor, tensor_filter),
                    tensor.spec,
                )
            )
        return items


def _check_unique_tensors(url: str, weights: list[SafetensorsFile]) -> None:
    seen: dict[str, str] = {}
    for weight in weights:
        for name in weight.tensors:
            if name in seen:
                raise InvalidInputError(f"{url}: tensor {name} is in both {seen[name]} and {weight.name}")
            seen[name] = weight.name


def _file_chunks(location: Location, size: int) -> Callable[[int], Iterator[bytes | memoryview]]:
    """A non-tensor file streamed like a tensor: a 1 GB file never sits in memory whole."""
    return _range_chunks(location, StoredTensor(TensorSpec(location.url, "U8", (size,)), 0, size), None)


def version_token(location: Location) -> str:
    """What the storage says about a file's current content, without reading it.

    Local: size, mtime, ctime and inode. The kernel sets ctime on every write and no tool can set
    it back (unlike mtime, which `cp -p`, rsync and tar restore), and a file replaced by a new one
    (how transformers saves) gets a new inode. S3 and other object stores: the ETag (or checksum,
    or generation), which changes with the content.
    """
    with storage_errors(location.url):
        if location.is_local:
            st = os.stat(location.path)
            return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
        location.fs.invalidate_cache(location.path)
        info = location.fs.info(location.path)
    for key in ("ETag", "etag", "md5Hash", "crc32c", "generation", "LastModified", "mtime"):
        if info.get(key):
            return f"{info.get('size')}:{key}={info[key]}"
    return f"{info.get('size')}:unversioned"


def _check_contained(location: Location, names: list[str]) -> None:
    """Refuse (65) files that are symlinks to places outside the checkpoint folder.

    Allowed: targets inside the folder, and the layout of a Hugging Face cache snapshot, whose
    files link to `../../blobs/<hash>` of the same repository.
    """
    if not location.is_local:
        return
    root = os.path.realpath(location.path)
    allowed = [root]
    parent = os.path.dirname(root)
    if os.path.basename(parent) == "snapshots":
        allowed.append(os.path.join(os.path.dirname(parent), "blobs"))
    for name in names:
        real = os.path.realpath(os.path.join(location.path, name))
        if not any(real == base or real.startswith(base + os.sep) for base in allowed):
            raise InvalidInputError(
                f"{location.url}/{name} is a symbolic link to a file outside the checkpoint folder: refusing to "
                "read it; copy the file into the folder if it belongs to the model"
            )


def _check_regular_files(location: Location, names: list[str]) -> None:
    """Refuse (65) FIFOs, sockets and device files before opening anything: reading a FIFO that no
    process writes to blocks for ever, and a device file has no end. Object stores hold only files."""
    if not location.is_local:
        return
    for name in names:
        path = os.path.join(location.path, name)
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise InvalidInputError(
                f"{location.url}/{name} cannot be read ({exc.strerror}): fix or remove it"
            ) from None
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
            )
            raise InvalidInputError(
                f"{location.url}/{name} is {kind}, not a regular file: remove it from the checkpoint folder "
                "(parquant reads only regular files)"
            )


def _range_chunks(
    location: Location,
    tensor: StoredTensor,
    tensor_filter: Callable[[TensorSpec, bytes | memoryview], None] | None,
) -> Callable[[int], Iterator[bytes | memoryview]]:
    def chunks(size: int) -> Iterator[bytes | memoryview]:
        remaining = tensor.end - tensor.start
        what = f"{location.url}: {tensor.spec.name}"
        # Remote: fewer, larger range requests (each costs a round trip and, on some servers, more)
        block = size if location.is_local else max(size, REMOTE_READ_BYTES)
        with _open_for_chunks(location) as handle:
            handle.seek(tensor.start)
            while remaining > 0:
                read = _read_exactly(handle, min(block, remaining), what)
                remaining -= len(read)
                view = memoryview(read)
                for start in range(0, len(read), size):
                    piece = view[start : start + size]
                    if tensor_filter is not None:
                        tensor_filter(tensor.spec, piece)
                    yield piece

    return chunks


# One range request per 64 MiB of a remote tensor, cut into chunks here: each request costs S3 a
# round trip (~20-50 ms to the first byte), and the loopback test server ~0.4 s whatever its size
# (it re-reads the whole object); with 16 MiB requests an import from it ran at 0.36x of
# `s3fs.get`, with 64 MiB at 0.57x, with 256 MiB no better (bench/s3_bench.py). A read is never
# larger than its tensor, so memory stays within the budget.
REMOTE_READ_BYTES = 64 * 2**20


def _open_for_chunks(location: Location) -> Any:
    """Local files through Arrow: its pool reuses freed chunk buffers, where a fresh bytes object
    per chunk page-faults in all of its memory again (measured: half the import's page faults)."""
    if location.is_local:
        import pyarrow as pa

        with storage_errors(location.url):
            return pa.OSFile(location.path, "rb")
    return location.open_read()


def _read_exactly(handle: Any, count: int, what: str) -> bytes:
    if hasattr(handle, "read_buffer"):  # an Arrow file: read into its buffer pool
        buffer = handle.read_buffer(count)
        if buffer.size < count:  # a local file never reads short but at its end
            raise InvalidInputError(f"{what} is truncated")
        return buffer  # type: ignore[no-any-return]  # a buffer-protocol object, used as bytes
    piece: bytes = handle.read(count)
    while len(piece) < count:  # remote or unusual files may return short reads
        more = handle.read(count - len(piece))
        if not more:
            raise InvalidInputError(f"{what} is truncated")
        piece += more
    return piece


# -- export: tensors -> safetensors files -----------------------------------------------------------
def safetensors_header(specs: list[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    """The header block (length prefix + JSON padded to 8 bytes) for tensors stored in this order."""
    entries: dict[str, Any] = {}
    if metadata is not None:
        entries["__metadata__"] = metadata
    offset = 0
    for spec in specs:
        entries[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def write_safetensors(
    handle: IO[bytes],
    specs: list[TensorSpec],
    metadata: dict[str, str] | None,
    chunks: Iterable[bytes | memoryview],
) -> None:
    """Header, then the tensors' bytes as `chunks` yields them (in `specs` order)."""
    handle.write(safetensors_header(specs, metadata))
    for chunk in chunks:
        handle.write(chunk)


def plan_export_files(
    specs: list[TensorSpec], layout: dict[str, dict[str, Any]], shard_bytes: int = DEFAULT_EXPORT_SHARD_BYTES
) -> tuple[dict[str, tuple[list[TensorSpec], dict[str, str] | None]], bool]:
    """Which safetensors file gets which tensors.

    The source layout is kept when it still describes exactly these tensors (then a stored
    index.json stays true, and the round trip gives the same files); otherwise tensors are packed
    anew into HF-style shards, and the caller must write a fresh index. Returns (plan, kept).
    """
    by_name = {s.name: s for s in specs}
    listed = [n for entry in layout.values() for n in entry.get("tensors", [])]
    if layout and sorted(listed) == sorted(by_name) and len(listed) == len(set(listed)):
        plan = {
            safe_relative_path(file, "the model's safetensors layout"): (
                [by_name[n] for n in entry["tensors"]],
                entry.get("metadata"),
            )
            for file, entry in layout.items()
        }
        return plan, True
    groups: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if groups[-1] and size + spec.nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    if len(groups) == 1:
        return {"model.safetensors": (groups[0], {"format": "pt"})}, False
    count = len(groups)
    return {
        f"model-{i + 1:05d}-of-{count:05d}.safetensors": (group, {"format": "pt"}) for i, group in enumerate(groups)
    }, False


def index_json(plan: dict[str, tuple[list[TensorSpec], dict[str, str] | None]]) -> bytes:
    total = sum(s.nbytes for specs, _ in plan.values() for s in specs)
    weight_map = {s.name: file for file, (specs, _) in plan.items() for s in specs}
    body = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(body, indent=2) + "\n").encode()
