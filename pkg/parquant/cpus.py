"""How many CPUs this process may really use, and torch's thread count derived from it.

`os.cpu_count()` is the host's count: in a container limited to 2 CPUs on a 64-core node, torch
would start 64 threads that fight over 2 CPUs. And the streaming stages run a prefetch thread next
to torch's own: on 2 cores, torch's default of 2 threads plus the prefetch thread made the built-in
PTQ 3.5x slower than with one torch thread (measured). So the count comes from the affinity mask,
capped by the cgroup CPU quota, less the helper threads that run beside torch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def usable_cpus() -> int:
    """CPUs in the affinity mask, capped by the cgroup CPU quota (a container's --cpus / limits.cpu)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def cgroup_cpu_quota() -> float | None:
    """The CPU quota in CPUs (e.g. 2.0), or None when unlimited or unknown."""
    try:
        quota, period = _CGROUP_V2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(_CGROUP_V1[0].read_text())
        period_us = int(_CGROUP_V1[1].read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def compute_threads(helper_threads: int = 1) -> int:
    """torch intra-op threads for a stage that runs `helper_threads` busy threads beside torch."""
    return max(1, usable_cpus() - helper_threads)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run a block with `threads` torch threads (unless the user set OMP_NUM_THREADS: theirs wins)."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
