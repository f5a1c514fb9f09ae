"""The Parquet model format: schema (schema.py), manifest, streaming reader and writer.

Names are imported on first use: reading a model needs neither pyarrow nor the writer, and every
stage that only reads (inspect, export) starts faster without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .items import ModelItem
    from .manifest import Manifest
    from .reader import ModelReader
    from .writer import WriteOptions, write_model

_HOMES = {
    "Manifest": "manifest",
    "ModelReader": "reader",
    "ModelItem": "items",
    "WriteOptions": "writer",
    "write_model": "writer",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


__all__ = ["Manifest", "ModelItem", "ModelReader", "WriteOptions", "write_model"]
