"""Format v1, read only: one row per tensor, the checkpoint's other files base64 in the footer.

parquant wrote v1 until the third wave; models written then stay readable, through these
functions, which the reader calls for a v1 shard. Nothing writes v1 any more (store/writer.py
refuses `--format-version 1` with 64). docs/FORMAT.md describes the layout.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from .schema import FORMAT_VERSIONS, META_V1_FILES, V1

if TYPE_CHECKING:  # reading needs no pyarrow until a shard is opened (start-up)
    import pyarrow as pa
    import pyarrow.parquet as pq

COLUMNS = ["name", "dtype", "shape"]  # what a bare v1 file is indexed by


def tensor_value(table: pa.Table, group: int, name: str, url: str) -> bytes:
    """The tensor `name`'s bytes from row group `group` read as `table` (columns name and data;
    one row per tensor, though a foreign v1 writer may put several rows in a group)."""
    for row in range(table.num_rows):
        if table.column("name")[row].as_py() == name:
            return bytes(table.column("data")[row].as_py())
    raise InvalidInputError(f"{name} is not in row group {group} of {url}; the model is damaged")


def footer_files(metadata: dict[bytes, bytes] | None) -> dict[str, bytes]:
    """The checkpoint's non-tensor files a v1 shard carries in its footer."""
    raw: Any = json.loads((metadata or {}).get(META_V1_FILES, b"{}"))
    return {str(k): base64.b64decode(v) for k, v in raw.items()}


def looks_like_v1(parquet: pq.ParquetFile) -> str | None:
    """v1's version string for a bare file without version metadata whose columns are v1's."""
    names = set(parquet.schema_arrow.names)
    if {"name", "dtype", "shape", "data"} <= names and "chunk" not in names:
        return FORMAT_VERSIONS[V1]
    return None
