"""Host memory: what is available, what this process peaked at, and giving freed heap back.

glibc keeps freed blocks in its arenas (one per thread), so a streaming stage that frees each
tensor after use still shows a resident set that creeps up to its worst mix of allocations.
`malloc_trim(0)` after each big tensor keeps peak RSS near the live working set (measured on the
1 GB PTQ benchmark: 760 MB -> see bench/quantize_bench.py); elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
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


def _proc_field(path: str, key: str) -> int | None:
    """A `Key:   123 kB` line of a /proc file, in bytes (None off Linux)."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_memory() -> int:
    found = _proc_field("/proc/meminfo", "MemAvailable")
    return found if found is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def peak_rss() -> int:
    """This process's resident-set high-water mark (VmHWM, not inherited across exec)."""
    found = _proc_field("/proc/self/status", "VmHWM")
    if found is not None:
        return found
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
