"""fsspec URL handling: the one place that knows local disk from S3.

Everything else receives a `Location` (a filesystem object opened once, plus a path) and calls
its methods. Errors of the storage layers (OSError, botocore, aiohttp) are translated here into
parquant's taxonomy so every stage reports storage trouble the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import (
    InputNotFoundError,
    ParquantError,
    PermissionDeniedError,
    StorageIOError,
    TemporaryFailure,
    UsageError,
)

# botocore reads AWS_* variables itself; these are the keys a user may pass as --storage-option.
_S3_CLIENT_KEYS = {"endpoint_url", "region_name", "verify"}
_S3_ALIASES = {"region": "region_name", "endpoint": "endpoint_url"}


@dataclass(frozen=True)
class Location:
    """A path on one fsspec filesystem; `url` is what the user typed (for messages)."""

    fs: Any
    path: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        return Location(self.fs, path, self.url.rstrip("/") + "/" + "/".join(parts))

    def exists(self) -> bool:
        with storage_errors(self.url):
            return bool(self.fs.exists(self.path))

    def read_bytes(self) -> bytes:
        with storage_errors(self.url):
            data: bytes = self.fs.cat_file(self.path)
            return data

    def read_range(self, start: int, end: int) -> bytes:
        with storage_errors(self.url):
            data: bytes = self.fs.cat_file(self.path, start=start, end=end)
            return data

    def size(self) -> int:
        with storage_errors(self.url):
            return int(self.fs.size(self.path))

    def open_read(self) -> IO[bytes]:
        """A seekable handle doing plain range reads (no read-ahead cache on remote stores)."""
        with storage_errors(self.url):
            if self.is_local:
                return open(self.path, "rb")
            handle: IO[bytes] = self.fs.open(self.path, "rb", cache_type="none")
            return handle

    def list_files(self) -> list[str]:
        """Paths of all files below this folder, relative to it, sorted."""
        with storage_errors(self.url):
            found = self.fs.find(self.path, withdirs=False)
        base = self.path.rstrip("/") + "/"
        return sorted(p[len(base) :] for p in found if p.startswith(base))


def parse_storage_options(pairs: list[str] | None) -> dict[str, str]:
    """`["endpoint_url=http://127.0.0.1:9000", "region=eu-west-1"]` -> dict; rejects malformed pairs."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option {pair!r} is not KEY=VALUE (e.g. endpoint_url=http://host:9000)")
        options[key.strip()] = value
    return options


def resolve(url: str, storage_options: Mapping[str, str] | None = None) -> Location:
    """Open the filesystem behind `url` once; S3 options come from AWS_* variables and `storage_options`."""
    if not url:
        raise UsageError("an empty URL was given: pass a local path or s3://bucket/key")
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        options = _s3_options(storage_options or {})
    elif storage_options:
        options = dict(storage_options)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot open {url!r}: {exc}; install parquant[s3] for s3:// URLs") from None
    return Location(fs, path.rstrip("/") or path, url)


def _s3_options(user: Mapping[str, str]) -> dict[str, Any]:
    client: dict[str, Any] = {}
    options: dict[str, Any] = {
        # Fail in seconds, not minutes, when the endpoint is wrong; retryable errors exit 75.
        "config_kwargs": {"connect_timeout": 10, "read_timeout": 120, "retries": {"max_attempts": 3}},
    }
    for key, value in user.items():
        key = _S3_ALIASES.get(key, key)
        if key in _S3_CLIENT_KEYS:
            client[key] = value
        elif key in ("anon", "use_ssl"):
            options[key] = value.lower() in ("1", "true", "yes")
        else:
            options[key] = value
    if client:
        options["client_kwargs"] = client
    return options


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Translate storage exceptions into parquant errors that name `url` and the fix."""
    try:
        yield
    except ParquantError:
        raise
    except FileNotFoundError as exc:
        raise InputNotFoundError(
            f"{url} not found ({_reason(exc)}): check the URL and that the bucket exists"
        ) from None
    except PermissionError as exc:
        raise PermissionDeniedError(
            f"access to {url} denied ({_reason(exc)}): check credentials and permissions"
        ) from None
    except OSError as exc:
        raise _os_error(url, exc) from None
    except Exception as exc:  # botocore/aiohttp raise their own types; matched by name to keep them optional
        translated = _remote_error(url, exc)
        if translated is None:
            raise
        raise translated from None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _os_error(url: str, exc: OSError) -> ParquantError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageIOError(f"disk full while writing {url}: free space or choose another --output")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"cannot write {url} ({_reason(exc)}): check permissions")
    if exc.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.ECONNRESET, errno.EHOSTUNREACH):
        return TemporaryFailure(f"network error on {url} ({_reason(exc)}): check the endpoint, then retry")
    return StorageIOError(f"I/O error on {url} ({_reason(exc)}); retry, or check the storage")


def _remote_error(url: str, exc: Exception) -> ParquantError | None:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"}:
        return PermissionDeniedError(
            f"no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE / workload identity)"
        )
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ReadTimeoutError",
        "ClientOSError",
    }:
        return TemporaryFailure(
            f"cannot reach the storage endpoint for {url} ({_reason(exc)}): check endpoint_url, then retry"
        )
    if "ClientError" in names:
        return StorageIOError(f"storage error on {url} ({_reason(exc)})")
    return None


def ensure_free_space(location: Location, needed_bytes: int) -> None:
    """Refuse early, before writing anything, when a local disk cannot hold the output."""
    if not location.is_local:
        return
    probe = location.path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise StorageIOError(
            f"not enough disk space for {location.url}: need {needed_bytes / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB free; free space or choose another --output"
        )
