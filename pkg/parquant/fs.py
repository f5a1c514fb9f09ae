"""fsspec URL handling: the one place that knows local disk from S3.

Everything else receives a `Location` (a filesystem object opened once, plus a path) and calls
its methods. Errors of the storage layers (OSError, botocore, aiohttp) are translated here into
parquant's taxonomy so every stage reports storage trouble the same way.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
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
_S3_FLAGS = {"anon", "use_ssl", "requester_pays", "version_aware"}
_S3_TIMEOUTS = {"connect_timeout", "read_timeout", "max_attempts"}
# unsafe_single_writer: write to an endpoint without conditional writes anyway (locks.py says why not)
_S3_PLAIN = {"profile", "max_concurrency", "unsafe_single_writer"}
_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
S3_OPTION_KEYS = sorted(_S3_CLIENT_KEYS | set(_S3_ALIASES) | _S3_FLAGS | _S3_TIMEOUTS | _S3_PLAIN)
# Credentials come from the environment (AWS_* variables, profiles, workload identity), never from
# flags: a flag ends up in shell history, process listings and Kubernetes Job specs.
_CREDENTIAL_KEYS = {
    "key",
    "secret",
    "token",
    "username",
    "password",
    "session_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
}
_CREDENTIAL_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / workload identity) instead"


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

    def file_sizes(self) -> dict[str, int]:
        """Every file below this folder (relative path -> size in bytes), from one fresh listing."""
        with storage_errors(self.url):
            self.fs.invalidate_cache(self.path)
            found = self.fs.find(self.path, withdirs=False, detail=True)
        base = self.path.rstrip("/") + "/"
        return {path[len(base) :]: int(info.get("size") or 0) for path, info in found.items() if path.startswith(base)}

    def list_files(self) -> list[str]:
        """Paths of all files below this folder, relative to it, sorted."""
        with storage_errors(self.url):
            found = self.fs.find(self.path, withdirs=False)
        base = self.path.rstrip("/") + "/"
        return sorted(p[len(base) :] for p in found if p.startswith(base))


def parse_storage_options(pairs: list[str] | None) -> dict[str, str]:
    """`["endpoint_url=http://127.0.0.1:9000", "region=eu-west-1"]` -> dict.

    Malformed pairs and credential keys are refused; messages name the key, never the value
    (which may be a secret typed in the wrong place).
    """
    options: dict[str, str] = {}
    for position, pair in enumerate(pairs or [], start=1):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(c in key for c in ":/ "):
            raise UsageError(
                f"--storage-option number {position} is not KEY=VALUE (its text is not shown, it may hold a secret): "
                "write e.g. endpoint_url=http://host:9000"
            )
        _check_option_key(key)
        options[key] = value
    return options


# The stores of parquant.storage: local disk, S3 (and S3-compatible stores), and fsspec's in-memory
# filesystem (one process). Any other fsspec protocol is refused up front (64), never half-supported
# until a call only some stores have fails.
SUPPORTED_PROTOCOLS = ("file", "local", "s3", "s3a", "memory")


def resolve(url: str, storage_options: Mapping[str, str] | None = None) -> Location:
    """Open the filesystem behind `url` once; S3 options come from AWS_* variables and `storage_options`."""
    if not url:
        raise UsageError("an empty URL was given: pass a local path or s3://bucket/key")
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    if protocol not in SUPPORTED_PROTOCOLS:
        raise UsageError(
            f"{_safe_url(url)!r}: parquant reads and writes local paths, s3:// and memory:// URLs, not {protocol}:// "
            "(its atomic writes and locks are implemented for those stores): copy the data to S3 (or an "
            "S3-compatible store) or local disk"
        )
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        options = _s3_options(storage_options or {})
    # Other protocols take no options: a command's --storage-option is meant for its s3:// URLs.
    try:
        if protocol in ("s3", "s3a"):
            s3 = s3_filesystem_class()
            fs, path = s3(**options), s3._strip_protocol(url)
        else:
            fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError, TypeError) as exc:
        raise UsageError(
            f"cannot open {_safe_url(url)!r} ({type(exc).__name__}): check the URL; install parquant[s3] for s3:// URLs"
        ) from None
    return Location(fs, path.rstrip("/") or path, url)


@functools.cache
def s3_filesystem_class() -> Any:
    """s3fs's filesystem with two changes that keep a stalled endpoint from holding a run.

    - Its requests never ask for `Expect: 100-continue`. aiohttp starts the read timeout only
      once a body is sent, and holds the body until the server says `100 Continue`: a server
      that accepted the connection and then froze kept every upload waiting for ever, with no
      timeout running. Without the header the body goes at once and the read timeout bounds the
      answer (S3 does not need the header; botocore never signs it).
    - s3fs retries each call twice, not five times: botocore already retries (max_attempts), and
      s3fs's retries multiply those, so a frozen endpoint cost 15 read timeouts per call.

    It also takes parquant's `unsafe_single_writer` option (see locks.py).

    Its instance cache is its own: `s3_filesystem_class().clear_instance_cache()` forgets it.
    """
    import s3fs

    class S3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
        retries = 2

        def __init__(self, *args: Any, unsafe_single_writer: str = "", **kwargs: Any) -> None:
            # parquant's own option (locks.py), kept out of the botocore session; it is part of
            # fsspec's instance cache key, so it never leaks into another run's filesystem
            super().__init__(*args, **kwargs)
            self.unsafe_single_writer = str(unsafe_single_writer).lower() in ("1", "true", "yes")

        async def set_session(self, refresh: bool = False, kwargs: dict[str, Any] | None = None) -> Any:
            client = await super().set_session(refresh=refresh, kwargs=kwargs or {})
            # idempotent (one id), and run for every client s3fs makes, including a refreshed one
            client.meta.events.register("before-send.s3", _send_body_at_once, unique_id="parquant-no-expect")
            return client

    return S3FileSystem


def _send_body_at_once(request: Any, **_: Any) -> None:
    """botocore hook: drop `Expect: 100-continue` (see `s3_filesystem_class`)."""
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _safe_url(url: str) -> str:
    """A URL for messages: credentials written into it (`scheme://user:pass@host`) are cut out."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _s3_options(user: Mapping[str, str]) -> dict[str, Any]:
    client: dict[str, Any] = {}
    # Fail in seconds, not minutes, when the endpoint is wrong or hangs; retryable errors exit 75.
    config: dict[str, Any] = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3}}
    options: dict[str, Any] = {"config_kwargs": config}
    for raw_key, value in user.items():
        _check_option_key(raw_key)  # library callers pass options without parse_storage_options
        key = _S3_ALIASES.get(raw_key, raw_key)
        if key == "endpoint_url":
            _check_endpoint(value)
        if key == "verify":
            client[key] = _BOOLEANS.get(value.lower(), value)  # true/false, or a CA bundle's path
        elif key in _S3_CLIENT_KEYS:
            client[key] = value
        elif key in _S3_FLAGS:
            options[key] = _BOOLEANS.get(value.lower(), False)
        elif key in _S3_TIMEOUTS:
            number = _positive_number(raw_key, value)
            if key == "max_attempts":
                config["retries"] = {"max_attempts": int(number)}
            else:
                config[key] = number
        elif key == "max_concurrency":
            options[key] = int(_positive_number(raw_key, value))
        else:
            options[key] = value
    if client:
        options["client_kwargs"] = client
    config["connector_args"] = {"socket_factory": _stalled_send_times_out(float(config["read_timeout"]))}
    return options


@functools.cache
def _stalled_send_times_out(seconds: float) -> Callable[[Any], socket.socket]:
    """Sockets whose unacknowledged sends give up after `seconds` (Linux TCP_USER_TIMEOUT).

    The read timeout bounds waiting for an answer, but nothing bounds sending a body to an endpoint
    that stopped reading (a frozen server or proxy: the window closes and the upload waits for
    ever). One function object per timeout, so fsspec's filesystem cache still matches.
    """

    def make(addr_info: Any) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        if hasattr(socket, "TCP_USER_TIMEOUT") and family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
        return sock

    return make


def _check_option_key(key: str) -> None:
    """A storage option key is a known one, and never a credential (named without its value)."""
    if key.lower() in _CREDENTIAL_KEYS:
        raise UsageError(f"--storage-option {key}=... would put a credential on the command line: {_CREDENTIAL_HINT}")
    if key not in S3_OPTION_KEYS:
        raise UsageError(f"--storage-option {key} is unknown: use one of {', '.join(S3_OPTION_KEYS)}")


def _positive_number(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number < 1e6:
        raise UsageError(f"--storage-option {key} must be a positive number of seconds or attempts")
    return number


def _check_endpoint(value: str) -> None:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise UsageError("--storage-option endpoint_url must look like http(s)://host[:port]")
    if "@" in rest.split("/", 1)[0]:
        raise UsageError(
            f"--storage-option endpoint_url must not hold credentials (user:password@): {_CREDENTIAL_HINT}"
        )


def check_separate(source: Location, output: Location, what: str) -> None:
    """Refuse (64) an output equal to, inside, or around its input: writing it would destroy the
    input (`--force`), or import the output into the next run."""
    if type(source.fs) is not type(output.fs):
        return
    if source.is_local:
        src, out = os.path.realpath(source.path), os.path.realpath(output.path)
    else:
        src, out = source.path.rstrip("/"), output.path.rstrip("/")
    if src == out or out.startswith(src + "/") or src.startswith(out + "/"):
        raise UsageError(
            f"--output {_safe_url(output.url)} is the {what} {_safe_url(source.url)}, or inside it, or contains it: "
            "choose an output outside the input (the input is never modified)"
        )


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


# Room on top of an output's content for what every output also writes: the manifest or export
# record, progress records, Parquet footers.
FREE_SPACE_SLACK_BYTES = 4 * 2**20


def ensure_free_space(location: Location, content_bytes: int, reusable_bytes: int = 0) -> None:
    """Refuse early, before writing anything, when a local disk cannot hold the output.

    `content_bytes`: the output's data (FREE_SPACE_SLACK_BYTES are added for its bookkeeping).
    `reusable_bytes`: what an earlier run left in the staging area, which this run either reuses
    or frees, so it counts as available.
    """
    needed_bytes = content_bytes + FREE_SPACE_SLACK_BYTES - reusable_bytes
    if not location.is_local or needed_bytes <= 0:
        return
    free = shutil.disk_usage(_nearest_existing(location.path)).free
    if free < needed_bytes:
        raise StorageIOError(
            f"not enough disk space for {location.url}: need {needed_bytes / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB free; free space or choose another --output"
        )


def check_writable(location: Location, what: str) -> None:
    """Before long work: refuse an output file that cannot be written, instead of failing after it.

    Local only (writing to S3 is proven by writing); root passes any permission check, so a folder
    in the way or a read-only mount are what this catches there.
    """
    if not location.is_local:
        return
    path = location.path
    if os.path.isdir(path):
        raise UsageError(f"{what} {location.url} is a folder: give a file name, e.g. {location.url}/result.json")
    parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {location.url} cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionDeniedError(
            f"{what} {location.url} cannot be written ({parent} is not writable): choose another"
        )


def _nearest_existing(path: str) -> str:
    """`path`, or its closest ancestor that exists (what a new file there would live on)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path
