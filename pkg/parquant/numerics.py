"""Counting NaN/Inf in raw tensor bytes without torch (import must stay light and streaming).

A float is non-finite exactly when all its exponent bits are set, so one integer mask per dtype
covers BF16, F16, F32, F64 and both FP8 variants (E4M3FN has no Inf, its NaN is S.1111.111).
The scan runs in cache-sized blocks into one scratch array: no large temporaries, and an exact
count is computed only for a block that has a non-finite value.
"""

from __future__ import annotations

import numpy as np

_MASKS: dict[str, tuple[type[np.unsignedinteger], int]] = {
    "BF16": (np.uint16, 0x7F80),
    "F16": (np.uint16, 0x7C00),
    "F32": (np.uint32, 0x7F800000),
    "F64": (np.uint64, 0x7FF0000000000000),
    "F8_E4M3": (np.uint8, 0x7F),
    "F8_E5M2": (np.uint8, 0x7C),
}
_BLOCK_BYTES = 256 * 1024


def count_nonfinite(data: bytes | memoryview, dtype: str) -> int:
    """Number of NaN/Inf values in little-endian `data` of safetensors `dtype` (0 for integers)."""
    if dtype not in _MASKS or not len(data):
        return 0
    word, mask_value = _MASKS[dtype]
    mask = word(mask_value)
    values = np.frombuffer(data, dtype=word)
    step = _BLOCK_BYTES // values.itemsize
    scratch = np.empty(min(step, len(values)), dtype=word)
    found = 0
    for start in range(0, len(values), step):
        block = values[start : start + step]
        masked = np.bitwise_and(block, mask, out=scratch[: len(block)])
        if masked.max() == mask:  # masked values never exceed the mask
            found += int(np.count_nonzero(masked == mask))
    return found
