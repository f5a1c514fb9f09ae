"""Overlap reading with writing: run a producer iterator in a background thread, a few items ahead.

Conversion reads, checks (CRC32C, NaN) and writes every byte; those steps release the GIL, so on
two cores the producer's reads and checks run while the consumer writes the previous chunk.
Items must be independent objects (no reused buffers): the producer works ahead of the consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(source: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield what `source` yields, produced up to `depth` items ahead; producer errors re-raise here."""
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:
            put(_Failure(error))

    worker = threading.Thread(target=produce, name="parquant-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join(timeout=30)
