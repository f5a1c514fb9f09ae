"""parquant's local cache folder (`PARQUANT_CACHE_DIR`, else ~/.cache/parquant).

Holds what is derived from content and costly to redo: HF folders exported from Parquet models
(hf_folders.py), prepared calibration sets, the linear-layer lists of architectures, pipeline state.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("PARQUANT_CACHE_DIR") or Path.home() / ".cache" / "parquant")
