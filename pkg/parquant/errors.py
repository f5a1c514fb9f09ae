"""The error taxonomy: every failure a user can cause maps to one exception type and one exit code.

Exit codes are sysexits-style because Kubernetes `podFailurePolicy` keys on them to
decide whether a retry can help. Only the CLI turns these into process exit codes; the library
raises them with a one-line message that names the problem and the fix.
"""

from __future__ import annotations


class ParquantError(Exception):
    """Base class: `exit_code` is what the process exits with, `retryable` whether a retry can help."""

    exit_code = 70
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(ParquantError):
    """A command-line option is missing, unknown or contradicts another one."""

    exit_code = 64


class InvalidInputError(ParquantError):
    """The input is there but its content is wrong: corrupt, truncated, checksum, NaN, shape."""

    exit_code = 65


class InputNotFoundError(ParquantError):
    """The input URL (file, folder, object or bucket) does not exist."""

    exit_code = 66


class UnavailableError(ParquantError):
    """Unsupported format, architecture or method, or a missing optional dependency."""

    exit_code = 69


class InternalError(ParquantError):
    """A bug in parquant: please report it with the log."""

    exit_code = 70


class OutOfMemoryError(ParquantError):
    """Host or GPU memory ran out; a bigger node may succeed."""

    exit_code = 71
    retryable = True


class OutputExistsError(ParquantError):
    """The output URL already holds something and `--force` was not given."""

    exit_code = 73


class StorageIOError(ParquantError):
    """Reading or writing storage failed (disk full, I/O error); a retry may succeed."""

    exit_code = 74
    retryable = True


class TemporaryFailure(ParquantError):  # noqa: N818 - the name of the sysexits class (EX_TEMPFAIL)
    """Network trouble or throttling; a retry may succeed."""

    exit_code = 75
    retryable = True


class PermissionDeniedError(ParquantError):
    """Missing or wrong credentials, or access denied."""

    exit_code = 77


class ConfigError(ParquantError):
    """A configuration file (YAML spec, QuantizationConfig) is malformed or has unknown keys."""

    exit_code = 78


class PrecisionGateError(ParquantError):
    """Validation ran but the candidate is below the precision threshold."""

    exit_code = 79


EXIT_CODES: dict[int, str] = {
    0: "success (or skipped: already done)",
    64: "usage or invalid option",
    65: "invalid input data (corrupt, truncated, checksum mismatch, NaN/Inf, shape mismatch)",
    66: "input not found",
    69: "unavailable (unsupported format/architecture/method, missing dependency)",
    70: "internal error: a bug or an unexpected failure, reported in one line (--log-level debug: traceback)",
    71: "out of memory",
    73: "output exists and --force not given",
    74: "I/O error, disk full (retryable)",
    75: "temporary failure: network, throttling, another run writing the same output (retryable)",
    77: "permission denied, missing or wrong credentials",
    78: "configuration file error",
    79: "precision gate failed",
    130: "interrupted (Ctrl-C); rerun to resume",
    141: "the reader of the output went away (broken pipe, e.g. `| head`)",
    143: "terminated (SIGTERM, e.g. Kubernetes deleting the pod): uploads aborted; rerun to resume",
}

# What a Kubernetes Job does with each exit code: a fresh pod can fix I/O and network trouble,
# so those count as a retry; nothing else does (71 too: a retry gets the same memory limit, and
# the partial work it kept resumes once the limit is raised). Interrupts (130, 141, 143) are not
# failures of the work: the Job's backoff decides. deploy/ checks its driver Job against these.
JOB_RETRY_CODES = (74, 75)
JOB_FAIL_CODES = tuple(code for code in EXIT_CODES if 64 <= code < 128 and code not in JOB_RETRY_CODES)
