"""Scratch folders that a killed run does not leave behind for ever.

Some stages need a model-sized local folder (AngelSlim reads and writes HF folders; transformers
loads from one). A `kill -9` skips every cleanup, so each folder holds a lock file (`flock`, which
the kernel drops when its holder dies), and every new scratch folder first removes the folders
whose lock is free: those of dead runs. Folders of live runs are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("parquant")

_ROOT_NAME = "parquant-work"
_LOCK_NAME = ".owner.lock"


def work_root() -> Path:
    """Where scratch folders live: `$PARQUANT_WORK_DIR`, else `parquant-work` in the temp folder."""
    configured = os.environ.get("PARQUANT_WORK_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / _ROOT_NAME


@contextlib.contextmanager
def work_folder(kind: str) -> Iterator[Path]:
    """A fresh scratch folder, removed on exit; stale ones of dead runs are removed on entry."""
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale(root)
    name = f"{kind}-{uuid.uuid4().hex[:12]}"
    # Locked before it gets a name the sweeper looks at (the sweeper skips hidden names).
    hidden = root / f".{name}"
    hidden.mkdir()
    fd = os.open(hidden / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    folder = root / name
    hidden.rename(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def sweep_stale(root: Path) -> list[Path]:
    """Remove the scratch folders under `root` whose owner is gone; returns what was removed."""
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            fd = os.open(folder / _LOCK_NAME, os.O_RDWR)
        except FileNotFoundError:
            fd = -1  # made by a run killed before it locked: nobody owns it
        except OSError:
            continue
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live run's folder
        shutil.rmtree(folder, ignore_errors=True)
        if fd >= 0:
            os.close(fd)
        removed.append(folder)
        log.info("removed %s, left behind by a run that was killed", folder)
    return removed
