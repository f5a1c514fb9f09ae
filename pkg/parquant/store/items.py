"""What the writer stores: a tensor or file as a stream of chunks (no pyarrow needed to describe one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .schema import TensorSpec

ChunkSource = Callable[[int], Iterator[bytes | memoryview | bytearray]]


@dataclass(frozen=True)
class ModelItem:
    """One tensor or one file to store.

    `chunks(n)` yields its bytes in pieces of exactly n bytes, the last one shorter. Pieces must be
    independent objects (no refilled buffer): the writer reads ahead on another thread.
    """

    kind: str
    name: str
    nbytes: int
    chunks: ChunkSource
    spec: TensorSpec | None = None


def sliced(data: bytes | memoryview, size: int) -> Iterator[memoryview]:
    """Zero-copy pieces of `size` bytes (the last shorter), as ModelItem.chunks must yield them."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def rechunked(pieces: Iterator[bytes | memoryview], size: int) -> Iterator[bytes | memoryview]:
    """Re-cut a stream into pieces of exactly `size` bytes (the last shorter), copying only when needed."""
    pending = bytearray()
    for piece in pieces:
        if not pending and len(piece) == size:
            yield piece
            continue
        view = memoryview(piece)
        while len(view):
            take = min(size - len(pending), len(view))
            pending += view[:take]
            view = view[take:]
            if len(pending) == size:
                yield bytes(pending)
                pending.clear()
    if pending:
        yield bytes(pending)
