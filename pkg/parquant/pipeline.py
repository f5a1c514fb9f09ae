"""Pipelines: a YAML list of stages, run in order by an executor, resumable.

A stage entry names the stage and its options with the names of the stage's Options dataclass
(stages/options.py: `model`, `output`, `method`, `calibration_data` ...), checked when the spec is
loaded. `StageSpec.argv()` turns it into exactly the command line `parquant <stage> ...` would
take, so the local executor (in-process) and a Kubernetes Job (the container's argv) run the same
thing and make the same outputs.

Resume: a state file (under `state_dir`, by default parquant's cache folder, named after the
pipeline and the spec's path) records each finished stage with a hash of its entry and the
identities of what it read and wrote (witness.py); a rerun skips a stage only when all of them are
unchanged, and stages that write a Parquet model also skip by themselves when their output is done.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ParquantError
from .quant import methods
from .stages.options import STAGE_OPTIONS, check_params, stage_argv
from .witness import changed, stage_witness
from .yamlfile import read_yaml_file

log = logging.getLogger("parquant")


FAN_OUT_STAGES = ("import", "quantize")


def wants_gpu(stage: str, params: Mapping[str, Any]) -> bool:
    """A stage runs on a GPU node by default when it can use one: a quantize stage whose run would
    use AngelSlim (the GPU backend), by the same rule the stage applies. An entry's own `gpu:`
    overrides it."""
    if stage != "quantize":
        return False
    try:
        method = methods.get_method(str(params.get("method") or methods.default_method()))
    except KeyError:
        return False  # an unknown method fails the stage itself, with the known names
    backend = method.backend_for(str(params.get("backend") or "auto"))
    return backend == methods.ANGELSLIM and method.offered_by(backend)


@dataclass(frozen=True)
class StageSpec:
    name: str
    stage: str
    params: dict[str, Any]
    gpu: bool = False
    fan_out: int = 1  # import/quantize: workers that write the shards in parallel (Indexed Job; locally --workers)
    # The stages this one runs after (their names); None: the stage before it in the spec. `after: []`
    # lets a stage start at once, beside the others (`--parallel`).
    after: tuple[str, ...] | None = None
    # Facts of the executor's, not options of the user's (e.g. PARQUANT_PLACEMENT_NOTE: why a stage
    # runs on the CPU): the stage's process sees them as environment variables.
    env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        return stage_argv(self.stage, self.params)

    def digest(self) -> str:
        entry = [self.stage, self.params] + ([self.fan_out] if self.fan_out > 1 else [])
        return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PipelineSpec:
    name: str
    stages: list[StageSpec]
    storage_options: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def load(cls, path: str) -> PipelineSpec:
        return cls.from_dict(read_yaml_file(path, "pipeline spec"), path)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> PipelineSpec:
        if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
            raise ConfigError(f"{where} must have a non-empty 'stages:' list")
        unknown = {str(key) for key in raw} - {"name", "stages", "storage_options"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: name, stages, storage_options)"
            )
        options = raw.get("storage_options") or {}
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ConfigError(f"{where}: storage_options must be a mapping of KEY: VALUE (e.g. endpoint_url: ...)")
        stages, names = [], set()
        for index, entry in enumerate(raw["stages"], 1):
            stage = entry.get("stage") if isinstance(entry, dict) else None
            if not isinstance(stage, str) or stage not in STAGE_OPTIONS:
                raise ConfigError(f"{where}: stage #{index} needs 'stage:' one of {', '.join(STAGE_OPTIONS)}")
            if not all(isinstance(key, str) for key in entry):
                raise ConfigError(f"{where}: stage #{index} has a key that is not a name")
            params = {k: v for k, v in entry.items() if k not in ("stage", "name", "gpu", "fan_out", "after")}
            fan_out = entry.get("fan_out", 1)
            if not isinstance(fan_out, int) or fan_out < 1 or (fan_out > 1 and entry["stage"] not in FAN_OUT_STAGES):
                raise ConfigError(
                    f"{where}: stage #{index}: fan_out must be a whole number >= 1, on "
                    f"{' and '.join(FAN_OUT_STAGES)} stages only"
                )
            if fan_out > 1 and any(params.get(key) for key in ("force", "workers", "shard_count", "shard_index")):
                raise ConfigError(
                    f"{where}: stage #{index}: fan_out cannot be combined with force, workers or shard_count/index"
                )
            problems = check_params(entry["stage"], params)
            if problems:
                raise ConfigError(f"{where}: stage #{index} ({entry['stage']}): {'; '.join(problems)}")
            name = str(entry.get("name") or f"{index:02d}-{entry['stage']}")
            if name in names:
                raise ConfigError(f"{where}: two stages are named {name!r}")
            names.add(name)
            gpu = bool(entry.get("gpu", wants_gpu(entry["stage"], params)))
            if fan_out > 1 and gpu:
                raise ConfigError(
                    f"{where}: stage #{index}: fan_out splits the built-in PTQ over CPU pods: use a data-free "
                    "method on the ptq backend (e.g. fp8-block, int8-weight) and leave gpu off"
                )
            after = entry.get("after")
            if after is not None and (not isinstance(after, list) or not all(isinstance(a, str) for a in after)):
                raise ConfigError(f"{where}: stage #{index}: after must be a list of stage names (or [] for none)")
            stages.append(
                StageSpec(name, entry["stage"], params, gpu, fan_out, tuple(after) if after is not None else None)
            )
        spec = cls(str(raw.get("name") or Path(where).stem), stages, dict(options), where)
        spec.dependencies()  # unknown names and cycles are refused here, before anything runs
        return spec

    def dependencies(self) -> dict[str, tuple[str, ...]]:
        """{stage: the stages it runs after}: its `after:`, else the stage before it. 78 for a name
        that is no stage, and for a cycle."""
        found: dict[str, tuple[str, ...]] = {}
        names = [stage.name for stage in self.stages]
        for index, stage in enumerate(self.stages):
            after = stage.after if stage.after is not None else tuple(names[index - 1 : index])
            unknown = [name for name in after if name not in names or name == stage.name]
            if unknown:
                raise ConfigError(
                    f"{self.source}: stage {stage.name}: after names {', '.join(unknown)}, not another stage"
                )
            found[stage.name] = after
        _check_acyclic(found, self.source)
        return found


def _check_acyclic(graph: Mapping[str, tuple[str, ...]], where: str) -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ConfigError(f"{where}: the stages' after: form a cycle ({cycle}): one of them must come first")
        state[name] = 1
        for needed in graph[name]:
            visit(needed, [*path, name])
        state[name] = 2

    for name in graph:
        visit(name, [])


def run_graph(
    spec: PipelineSpec, run_one: Callable[[StageSpec], StageOutcome], parallel: int = 1
) -> list[StageOutcome]:
    """Run every stage once the stages it runs after are done, up to `parallel` at a time (1: one
    after another, in this thread). A failed stage's dependents do not run; stages that do not
    depend on it go on. Both executors schedule through this."""
    needs = spec.dependencies()
    outcomes: dict[str, StageOutcome] = {}
    done: set[str] = set()
    stopped: set[str] = set()  # failed, or not run because something they need failed
    pending = list(spec.stages)

    def ready() -> list[StageSpec]:
        chosen = []
        for stage in list(pending):
            blocked = [n for n in needs[stage.name] if n in stopped]
            if blocked:
                pending.remove(stage)
                stopped.add(stage.name)
                log.error("pipeline: %s not run: it runs after %s, which failed", stage.name, blocked[0])
            elif all(n in done for n in needs[stage.name]):
                chosen.append(stage)
        return chosen

    def record(stage: StageSpec, outcome: StageOutcome) -> None:
        outcomes[stage.name] = outcome
        (stopped if outcome.status == "failed" else done).add(stage.name)
        if outcome.status == "failed":
            log.error("pipeline: %s failed with exit code %d", stage.name, outcome.exit_code)

    if parallel <= 1:
        while True:
            batch = ready()
            if not batch:
                break
            stage = batch[0]
            pending.remove(stage)
            record(stage, run_one(stage))
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="parquant-stage") as pool:
            running: dict[concurrent.futures.Future[StageOutcome], StageSpec] = {}
            while True:
                for stage in ready()[: parallel - len(running)]:
                    pending.remove(stage)
                    running[pool.submit(run_one, stage)] = stage
                if not running:
                    break
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    record(running.pop(future), future.result())
    return [outcomes[stage.name] for stage in spec.stages if stage.name in outcomes]


@dataclass
class StageOutcome:
    name: str
    status: str  # "done", "skipped", "failed"
    exit_code: int
    seconds: float
    executor: str = "local"
    note: str = ""


class LocalExecutor:
    """Runs stages on this machine: one at a time in this process through `run_stage(argv) -> exit
    code` (the CLI's own dispatcher), or with `parallel > 1` each in a child process, as many at once
    as the graph (`after:`) and `parallel` allow."""

    def __init__(self, run_stage: Callable[[list[str]], int], state_dir: str | None = None, parallel: int = 1) -> None:
        self.run_stage = run_stage
        self.state_dir = state_dir
        self.parallel = parallel
        self._state_guard = threading.Lock()

    def run(self, spec: PipelineSpec, force: bool = False) -> list[StageOutcome]:
        from .cache import cache_dir

        where = hashlib.sha256(os.path.abspath(spec.source).encode()).hexdigest()[:12]
        state_path = Path(self.state_dir or cache_dir() / "pipelines") / f"{spec.name}-{where}.json"
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state = _read_state(state_path)

        def run_one(stage: StageSpec) -> StageOutcome:
            if not force and self._still_done(stage, state.get(stage.name), spec.storage_options):
                log.info("pipeline: %s already done (inputs and output unchanged), skipped", stage.name)
                return StageOutcome(stage.name, "skipped", 0, 0.0)
            workers = ["--workers", str(stage.fan_out)] if stage.fan_out > 1 else []
            argv = stage.argv() + workers + redo_args(stage, force) + storage_argv(spec.storage_options)
            log.info("pipeline: %s: parquant %s", stage.name, " ".join(argv))
            started = time.monotonic()
            code = self.run_stage(argv) if self.parallel <= 1 else _run_child(argv)
            outcome = StageOutcome(
                stage.name, "done" if code == 0 else "failed", code, round(time.monotonic() - started, 2)
            )
            if code == 0:
                with self._state_guard:
                    state[stage.name] = {
                        "digest": stage.digest(),
                        "witness": stage_witness(stage.stage, stage.params, spec.storage_options),
                    }
                    _write_state(state_path, state)
            return outcome

        return run_graph(spec, run_one, self.parallel)

    @staticmethod
    def _still_done(stage: StageSpec, recorded: Any, storage_options: Mapping[str, str]) -> bool:
        """Done only when the same entry ran, and what it read and wrote is what it was then: an
        input changed in place, or an output deleted or damaged, runs the stage again (which
        then decides by its own rule: skip, redo, or refuse an output it did not make with 73)."""
        if not isinstance(recorded, dict) or recorded.get("digest") != stage.digest():
            return False
        why = changed(recorded.get("witness") or {}, stage_witness(stage.stage, stage.params, storage_options))
        if why is not None:
            log.info("pipeline: %s ran before, but %s: running it again", stage.name, why)
        return why is None


def _run_child(argv: list[str]) -> int:
    """One stage as `parquant ARGV` in a child process (stages running side by side do not share a
    process: each has its own signal handlers, threads and memory)."""
    return subprocess.run([sys.executable, "-m", "parquant_cli", *argv], env=dict(os.environ)).returncode


def redo_args(stage: StageSpec, force: bool) -> list[str]:
    """`pipeline --force` reruns a stage and redoes its output: the stage's own `--force`, where it
    takes one (without it, an output an older run made differently is refused with 73). A fan-out
    stage never gets it: its commit would delete what its workers wrote."""
    takes = any(f.name == "force" for f in dataclasses.fields(STAGE_OPTIONS[stage.stage]))
    return ["--force"] if force and takes and stage.fan_out == 1 and not stage.params.get("force") else []


def storage_argv(options: Mapping[str, str]) -> list[str]:
    return ["--storage-option", *(f"{k}={v}" for k, v in options.items())] if options else []


def _read_state(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(state, indent=1))
    partial.replace(path)


def plan_lines(spec: PipelineSpec) -> list[str]:
    """What `--dry-run` prints: each stage's command, where it would run, and what it waits for."""
    needs = spec.dependencies()
    return [
        f"{i}. {s.name} [{'gpu' if s.gpu else 'cpu'}{f', fan-out {s.fan_out}' if s.fan_out > 1 else ''}"
        f"{', after ' + ', '.join(needs[s.name]) if s.after is not None and needs[s.name] else ''}"
        f"{', at once' if s.after is not None and not needs[s.name] else ''}]: "
        f"parquant {' '.join(s.argv())}"
        for i, s in enumerate(spec.stages, 1)
    ]


def first_failure(outcomes: list[StageOutcome]) -> StageOutcome | None:
    return next((o for o in outcomes if o.status == "failed"), None)


__all__ = ["LocalExecutor", "ParquantError", "PipelineSpec", "StageOutcome", "StageSpec", "plan_lines"]
