"""Other libraries' console output belongs in parquant's debug log, not on the user's screen.

AngelSlim prints a line per calibration batch ("ppl is : 16552", next to a validated perplexity of
~142), "use weight group size 128" per layer, whole tensors during AWQ; transformers warns about
sequence lengths on every validation; tqdm bars of transformers, compressed-tensors and datasets
fill a Pod's log. parquant reports what matters itself, so these lines go to the `parquant`
logger at debug level (`--log-level debug` shows them) and the bars are off unless debugging.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger("parquant")

_THIRD_PARTY_LOGGERS = ("transformers", "compressed_tensors", "datasets", "accelerate", "huggingface_hub", "angelslim")


class _DebugLines(io.TextIOBase):
    """A text stream whose every complete line becomes one debug record naming its source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pending = ""
        self.original = sys.stderr  # where text goes that logging itself writes while we log
        self.busy = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self.busy, "on", False):  # logging reporting its own trouble: not ours to route
            return self.original.write(text)
        self.busy.on = True
        try:
            self.pending += text.replace("\r", "\n")
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                if line.strip():
                    log.debug("%s: %s", self.source, line.rstrip())
        finally:
            self.busy.on = False
        return len(text)

    def flush(self) -> None:
        if self.pending.strip() and not getattr(self.busy, "on", False):
            self.busy.on = True
            try:
                log.debug("%s: %s", self.source, self.pending.rstrip())
            finally:
                self.busy.on = False
        self.pending = ""


@contextlib.contextmanager
def third_party_output(source: str, stdout: bool = True) -> Iterator[None]:
    """Route what a library prints (stderr, and stdout unless told not to) to debug records while
    the block runs. parquant's own log handler holds the real stream, so it is not affected."""
    stream = _DebugLines(source)
    with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(stream) if stdout else contextlib.nullcontext():
        try:
            yield
        finally:
            stream.flush()


def quiet_third_party(debug: bool) -> None:
    """Unless debugging: third-party loggers above warning only, their progress bars off.

    tqdm reads `TQDM_DISABLE` for bars that do not choose themselves; parquant's own bars pass
    `disable=` explicitly and are unaffected.
    """
    if debug:
        return
    for name in _THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    if "transformers" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["transformers"].logging.set_verbosity_error()
            sys.modules["transformers"].logging.disable_progress_bar()
