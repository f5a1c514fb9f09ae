"""Turn the library's log records and progress events into what a person or a log collector reads.

TTY: human log lines and tqdm bars. Not a TTY (a Pod, CI): one JSON object per line, progress
at most every few seconds, so logs stay small yet show the job is alive and how far it got.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from parquant.progress import ProgressCallback, ProgressEvent

_SECRET = re.compile(r"(?i)\b([\w-]*(?:secret|password|token|access_key|key_id|credential)[\w-]*)(=|\": \")[^\s\"]+")


def redact(text: str) -> str:
    """Mask anything that looks like `secret=...`, so credentials never reach a log."""
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "msg": redact(record.getMessage()),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "parquant" if record.levelno < logging.WARNING else f"parquant: {record.levelname.lower()}"
        line = f"{prefix}: {redact(record.getMessage())}"
        return f"{line}\n{redact(self.formatException(record.exc_info))}" if record.exc_info else line


def use_json(log_format: str) -> bool:
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json(log_format) else TextFormatter())
    root = logging.getLogger("parquant")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    from parquant.logs import quiet_third_party

    quiet_third_party(debug=level.lower() == "debug")


def progress_reporter(log_format: str, quiet: bool, every_seconds: float = 5.0) -> ProgressCallback:
    if quiet:
        return lambda event: None
    if use_json(log_format) or not sys.stderr.isatty():
        return _LineProgress(every_seconds)  # a log collector gets lines, never bar redraws
    return _BarProgress()


class _LineProgress:
    """Periodic structured progress lines with an ETA; always reports the first and last event."""

    def __init__(self, every_seconds: float) -> None:
        self.every = every_seconds
        self.started = time.monotonic()
        self.last = 0.0
        self.log = logging.getLogger("parquant.progress")

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        final = event.done >= event.total
        if not final and event.done > 1 and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.started
        fraction = _fraction(event)
        # below 1% done (a small first file of a big model) an estimate would be noise: none yet
        eta = elapsed * (1 - fraction) / fraction if fraction >= 0.01 else None
        fields = {
            "phase": event.phase,
            "item": event.item,
            "done": event.done,
            "total": event.total,
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
        }
        if event.note:
            fields["note"] = event.note
        self.log.info("%s %d/%d %s", event.phase, event.done, event.total, event.item, extra={"fields": fields})


class _BarProgress:
    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        bar = self.bars.get(event.phase)
        if bar is None:
            bar = self.bars[event.phase] = tqdm(
                total=event.total, desc=event.phase, unit="item", leave=False, disable=False
            )
        bar.n = event.done
        bar.set_postfix_str(event.item[-40:], refresh=True)
        if event.done >= event.total:
            bar.close()
            del self.bars[event.phase]


def _fraction(event: ProgressEvent) -> float:
    if event.bytes_total:
        return event.bytes_done / event.bytes_total
    return event.done / event.total if event.total else 1.0
