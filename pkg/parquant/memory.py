"""Give freed heap memory back to the OS between big tensors.

glibc keeps freed blocks in its arenas (one per thread), so a streaming stage that frees each
tensor after use still shows a resident set that creeps up to its worst mix of allocations.
`malloc_trim(0)` after each big tensor keeps peak RSS near the live working set (measured on the
1 GB PTQ benchmark: 760 MB -> see bench/quantize_bench.py); elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
