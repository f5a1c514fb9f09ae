"""The stores parquant writes to, behind one protocol (base.py): local disk, S3, memory://.

`store_for(location)` picks the implementation from the location's filesystem; nothing else in
parquant asks which kind of storage it writes to.
"""

from __future__ import annotations

from ..errors import UsageError
from ..fs import Location
from .base import Store, WriterLock, lost_upload_is_retryable
from .local import LocalStore
from .memory import MemoryStore
from .s3 import LEASE_SECONDS, S3Store, http_status

_LOCAL, _S3, _MEMORY = LocalStore(), S3Store(), MemoryStore()


def store_for(location: Location) -> Store:
    """The store behind a location (resolve() refuses every other protocol up front, with 64)."""
    protocols = location.fs.protocol if isinstance(location.fs.protocol, tuple) else (location.fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return _LOCAL
    if "s3" in protocols or "s3a" in protocols:
        return _S3
    if "memory" in protocols:
        return _MEMORY
    raise UsageError(f"{location.url}: parquant writes to local disk, s3:// and memory:// only")


__all__ = ["LEASE_SECONDS", "Store", "WriterLock", "http_status", "lost_upload_is_retryable", "store_for"]
