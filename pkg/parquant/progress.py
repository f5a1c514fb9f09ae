"""Progress reporting: the library calls a callback, the CLI decides how it looks.

The library never prints: on a TTY the CLI draws tqdm bars, in a Pod it logs periodic JSON lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """`done` of `total` units (tensors, layers, batches) finished in `phase`; bytes when known."""

    phase: str
    item: str
    done: int
    total: int
    bytes_done: int = 0
    bytes_total: int = 0
    note: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: library calls from Python stay silent."""
