from __future__ import annotations

import os

import crc32c
import pytest

from parquant.store.crc import crc32c_combine


@pytest.mark.parametrize("sizes", [(0, 0), (0, 5), (5, 0), (1, 1), (7, 4096), (65536, 3), (1000, 1000, 17, 0, 2**20)])
def test_combine_equals_the_crc_of_the_concatenation(sizes: tuple[int, ...]) -> None:
    parts = [os.urandom(n) for n in sizes]
    running = 0
    for part in parts:
        running = crc32c_combine(running, crc32c.crc32c(part), len(part))
    assert running == crc32c.crc32c(b"".join(parts))
