"""Fan-out: one stage's shards written by N workers at once, then committed by one plain run.

The same split serves three executors. On Kubernetes an Indexed Job's pods are the workers (the
index comes as $JOB_COMPLETION_INDEX); by hand, `--shard-index i --shard-count n` makes a worker;
and `--workers N` runs N worker processes on this machine, waits for them, and commits. A worker
writes the shards whose number is its index modulo N (the shard plan depends only on the input
and the options, so every worker agrees on it) and records each one; the commit checks every
record, writes what no worker finished, and writes the manifest atomically. A killed worker's
part is redone on rerun; the other parts are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from ..errors import EXIT_CODES, ParquantError, TemporaryFailure, UsageError
from ..fs import Location
from ..locks import remove_dead_worker_locks
from .common import StageContext
from .options import STAGE_OPTIONS, stage_argv

log = logging.getLogger("parquant")


class WorkerFailedError(ParquantError):
    """A fan-out worker exited with a failure; its exit code is this run's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_part(part: tuple[int, int] | None, force: bool) -> None:
    """What every fan-out worker must be (import_checkpoint and quantize call it): an index within
    the count, and no --force, since workers never delete each other's files."""
    if part is None:
        return
    index, count = part
    if not 0 <= index < count:
        raise UsageError(
            f"--shard-index {index} is outside 0..{count - 1} (--shard-count {count}): use 0 to {count - 1}"
        )
    if force:
        raise UsageError(
            "--force cannot be used with a fan-out (workers never delete each other's files): remove the output first"
        )


def fan_out_part(options: Any, context: StageContext) -> tuple[int, int] | None:
    """(index, count) of a fan-out worker; an Indexed Job gives the index as $JOB_COMPLETION_INDEX.
    The stage checks the pair itself (`check_part`)."""
    if options.shard_count is None:
        if options.shard_index is not None:
            raise UsageError("--shard-index needs --shard-count")
        return None
    index = options.shard_index if options.shard_index is not None else context.completion_index
    if index is None:
        raise UsageError("--shard-count needs --shard-index, or $JOB_COMPLETION_INDEX (set in an Indexed Job)")
    if options.workers > 1:
        raise UsageError("--workers runs its own workers: leave out --shard-index and --shard-count")
    return index, options.shard_count


def run_local_workers(stage: str, options: Any, count: int, output: Location) -> None:
    """Run `count` workers of `stage` as child processes of this one and wait for all of them (the
    stage passes its start time on, so its seconds count the workers, not only the commit).

    Each is `parquant <stage>` with this run's options plus `--shard-index i --shard-count count`
    (quiet: N progress bars would garble each other; their log lines show). The first failure's
    exit code becomes this run's, after every worker has ended (a worker is never orphaned); a
    worker killed by a signal is a temporary failure (75: rerun, its part is redone), and the part
    lock it leaves behind is removed.
    """
    check_part((0, count), options.force)
    defaults = STAGE_OPTIONS[stage]
    params = {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(defaults)
        if f.name not in ("workers", "shard_index", "shard_count", "quiet")
    }
    argv = stage_argv(stage, params)
    commands = [
        [sys.executable, "-m", "parquant_cli", *argv, "--quiet", "--shard-count", str(count), "--shard-index", str(i)]
        for i in range(count)
    ]
    log.info("fan-out: %d local workers", count)
    workers = [subprocess.Popen(command, env=dict(os.environ)) for command in commands]
    codes = [worker.wait() for worker in workers]
    failed = [(i, code) for i, code in enumerate(codes) if code != 0]
    if not failed:
        return
    index, code = failed[0]
    if code < 0:  # killed by a signal: its part is unfinished, the rest is kept; a rerun redoes it
        removed = remove_dead_worker_locks(output)
        if removed:
            log.info("fan-out: removed the lock(s) %s a killed worker left behind", ", ".join(removed))
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise WorkerFailedError(
            f"fan-out worker {index} of {count} was killed by {name} (out of memory, or stopped from outside): "
            "rerun to redo its part (the finished parts are kept)",
            TemporaryFailure.exit_code,
        )
    raise WorkerFailedError(
        f"fan-out worker {index} of {count} failed with exit code {code} "
        f"({EXIT_CODES.get(code, 'see its log above')}); rerun to redo its part (the finished parts are kept)",
        code,
    )
