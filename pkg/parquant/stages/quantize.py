"""Stage `quantize`: choose a backend (with the fallback chain), run it, write a Parquet model.

Fallback chain (docs/quantize.md), each step logged and recorded in the manifest:
AngelSlim not installed, not supporting the architecture, or failing -> built-in PTQ with the
closest method (unless fallback is off: exit 69); CUDA asked for but absent -> CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cpus import compute_threads, torch_threads
from ..errors import InvalidInputError, OutOfMemoryError, ParquantError, UnavailableError, UsageError
from ..fs import check_separate, ensure_free_space, resolve
from ..memory import available_memory
from ..outputs import OutputFolder, cleanup_on_bad_input, fingerprint
from ..progress import ProgressCallback, no_progress
from ..quant import methods
from ..quant.angelslim_compat import INSTALL_HINT, angelslim_available
from ..quant.config import QuantizationConfig, load_config
from ..quant.detect import detect_quantization
from ..quant.estimate import Estimate, duration, estimate
from ..quant.roles import describe, quantized_modules, role_coverage
from ..store.reader import ModelReader
from ..store.schema import MANIFEST_NAME, TensorSpec
from ..store.writer import ModelDescription, WriteOptions, write_model
from ..workdirs import work_folder
from .common import StageContext, StageResult, finished_model, provenance
from .fanout import check_part, fan_out_part, run_local_workers
from .hf_import import import_checkpoint
from .options import QuantizeOptions

if TYPE_CHECKING:
    from ..quant.angelslim import AngelSlimRun

log = logging.getLogger("parquant")
# AngelSlim failures that the built-in PTQ may not share: missing or broken AngelSlim (69), its
# own bugs (70), its memory use (71, PTQ streams). Bad input, storage and credentials fail PTQ too.
_ANGELSLIM_FAILURES = (69, 70, 71)


@dataclass
class Plan:
    """The backend, method and device a run will use, and why."""

    backend: str
    method: str
    device: str
    reasons: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)


def choose(config: QuantizationConfig, model_type: str, cuda: bool | None = None) -> Plan:
    """Apply the fallback chain to the config, without running anything."""
    from ..quant.angelslim import MODEL_NAMES

    if cuda is None:
        cuda = _cuda_available()
    device = "cuda" if (config.device in ("auto", "cuda") and cuda) else "cpu"
    plan = Plan(config.backend, config.method, device)
    if config.device == "cuda" and not cuda:
        if not config.fallback:
            raise UnavailableError("device cuda was requested but no CUDA GPU is available (fallback disabled)")
        plan.fallbacks.append("cuda requested but not available -> cpu")
    if methods.get_method(config.method).backend_for(config.backend) == methods.PTQ:
        plan.backend = "ptq"
        plan.reasons.append(f"{config.method} runs on the built-in PTQ backend")
        return plan
    if not angelslim_available():
        if not may_change_backend(config):
            raise UnavailableError(f"the AngelSlim backend needs the angelslim package: {INSTALL_HINT}{_ASKED}")
        fall_back(plan, "angelslim is not installed")
        return plan
    supported = methods.get_method(config.method).angelslim_models
    why = ""
    if model_type not in MODEL_NAMES:
        why = f"AngelSlim 0.5.0 does not support architecture {model_type!r} (supported: {', '.join(MODEL_NAMES)})"
    elif supported and MODEL_NAMES[model_type] not in supported:
        runs_on = [name for name, cls in MODEL_NAMES.items() if cls in supported]
        why = f"AngelSlim 0.5.0 runs {config.method} only on {', '.join(runs_on)} models, not {model_type!r}"
    if why:
        if not may_change_backend(config):
            raise UnavailableError(f"{why}: use --backend ptq{_ASKED}")
        fall_back(plan, why)
        return plan
    plan.backend = "angelslim"
    plan.reasons.append(f"AngelSlim {config.method} on {device}" + (" (CPU adapter active)" if device == "cpu" else ""))
    return plan


_ASKED = " (--backend angelslim was asked for explicitly: --backend auto lets parquant fall back to PTQ)"


def may_change_backend(config: QuantizationConfig) -> bool:
    """The rule: a backend the user named (`--backend angelslim`) is never swapped for another; only
    `--backend auto` with fallback on lets parquant move to the built-in PTQ (and say so: log,
    manifest `created_by.fallbacks`, report notes)."""
    return config.fallback and config.backend == "auto"


def fall_back(plan: Plan, why: str) -> None:
    """Switch a plan to built-in PTQ with the closest method (the same weight bit width where the
    built-in PTQ has one: a 4-bit request stays 4-bit), and say so on one line."""
    method = methods.get_method(plan.method).fallback
    plan.fallbacks.append(f"{why} -> ptq {method}")
    change = f"method {plan.method} -> {method}, " if method != plan.method else ""
    log.warning("%s: falling back to the built-in PTQ backend with %s (%sbackend ptq)", why, method, change)
    plan.backend, plan.method = "ptq", method


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def run(options: QuantizeOptions, context: StageContext) -> StageResult:
    """`parquant quantize` (without --compare: stages/compare.py runs that)."""
    from ..store.writer import WriteOptions

    part = fan_out_part(options, context)
    config = load_config(options.config, config_flags(options))
    write = WriteOptions(options.format_version, options.chunk_size, options.shard_size, options.compression)

    started = time.monotonic()

    def run_quantize(dry_run: bool, part: tuple[int, int] | None) -> StageResult:
        return quantize(
            options.model,
            options.output,
            config,
            write=write,
            force=options.force,
            dry_run=dry_run,
            storage_options=context.storage_options,
            progress=context.progress,
            placement_note=context.placement_note,
            part=part,
            started=started,
            min_quantized_fraction=options.min_quantized_fraction,
        )

    if options.workers > 1 and not options.dry_run:
        run_quantize(True, (0, options.workers))  # refuses what cannot fan out before any worker starts
        run_local_workers("quantize", options, options.workers, resolve(options.output, context.storage_options))
    return run_quantize(options.dry_run, part)


def config_flags(options: QuantizeOptions) -> dict[str, object]:
    """The options that are QuantizationConfig keys (flags override the config file and PARQUANT_*)."""
    return {
        "method": options.method,
        "backend": options.backend,
        "group_size": options.group_size,
        "ignore": options.ignore,
        "calibration.data": options.calibration_data,
        "calibration.num_samples": options.num_samples,
        "calibration.seq_len": options.seq_len,
        "calibration.seed": options.seed,
        "device": options.device,
        "fallback": False if options.no_fallback else None,
    }


def quantize(
    model: str,
    output: str,
    config: QuantizationConfig,
    *,
    write: WriteOptions | None = None,
    force: bool = False,
    dry_run: bool = False,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
    placement_note: str | None = None,
    part: tuple[int, int] | None = None,
    started: float | None = None,
    min_quantized_fraction: float = 0.0,
) -> StageResult:
    """Quantize the Parquet model at `model` into a Parquet model at `output`.

    `part=(i, n)` makes this run fan-out worker i of n (stages/fanout.py): the built-in PTQ writes
    its share of the shards, and a last run without `part` checks them and commits the model.

    `placement_note` is a decision taken before this process started (the Kubernetes executor's
    GPU -> CPU fallback): it is recorded with the plan's own fallbacks, in the manifest and result.
    `started` (monotonic) is when the stage began, before its local workers ran (`--workers`): the
    result's seconds and the manifest's stage_seconds count the workers too.
    """
    check_part(part, force)
    started = time.monotonic() if started is None else started
    write = write or WriteOptions()
    model_location = resolve(model, storage_options)
    if not dry_run:
        check_separate(model_location, resolve(output, storage_options), "model")
    with ModelReader(model_location) as reader:
        scheme = detect_quantization(reader.config(), reader.tensor_names())
        if scheme.quantized:
            raise InvalidInputError(
                f"{model} is already quantized ({scheme.describe()}): quantize the original model instead"
            )
        plan = choose(config, str(reader.config().get("model_type")))
        if part is not None and plan.backend != methods.PTQ:
            raise UsageError(
                f"{plan.method} runs on {plan.backend}, which cannot fan out: --shard-count/--workers/fan_out split "
                "the built-in PTQ's data-free methods (add --backend ptq, or choose e.g. fp8-block or int8-weight)"
            )
        if placement_note:
            plan.fallbacks.insert(0, placement_note)
        if config.calibration.data and not methods.get_method(plan.method).calibrated:
            plan.reasons.append(f"calibration data {config.calibration.data} is not used: {plan.method} is data-free")
            log.warning("%s", plan.reasons[-1])
        model_bytes = sum(e.nbytes for e in reader.manifest.tensors.values())
        parameters = sum(math.prod(e.shape) for e in reader.manifest.tensors.values())
        calibration = config.calibration
        method = methods.get_method(plan.method)
        guess = estimate(
            plan.backend,
            method.calibration_cost if plan.backend == methods.ANGELSLIM else 0.0,  # 0 for data-free methods
            plan.device,
            model_bytes,
            parameters,
            calibration.num_samples,
            calibration.seq_len,
        )
        if guess.long_cpu_run(plan.device):
            log.warning(
                "%s on the CPU is estimated to take about %s (%s parameters x %s calibration tokens): use a GPU, "
                "fewer --num-samples / a shorter --seq-len, or a data-free method such as fp8-dynamic",
                plan.method,
                duration(guess.seconds),
                f"{parameters:,}",
                f"{guess.calibration_tokens:,}",
            )
        if dry_run:
            return StageResult(
                "quantize",
                output,
                True,
                time.monotonic() - started,
                [],
                {"dry_run": True, "plan": plan.__dict__, "estimate": guess.to_dict()},
            )
        folder = OutputFolder(resolve(output, storage_options), force=force, marker=MANIFEST_NAME)
        identity = fingerprint("quantize", reader.manifest.digest(), config.to_dict(), write.__dict__)
        with folder.locked(part):
            if finished_model(folder, identity) is not None:
                log.info("%s already holds this quantization; skipping (use --force to redo it)", output)
                return StageResult("quantize", output, True, time.monotonic() - started)
            _check_memory(plan, guess)
            ensure_free_space(folder.staging, model_bytes, folder.staged_bytes())
            for reason in plan.reasons + plan.fallbacks:
                log.info("plan: %s", reason)
            job = _Job(
                model,
                output,
                reader,
                config,
                plan,
                folder,
                write,
                identity,
                storage_options,
                progress,
                started,
                part,
                min_quantized_fraction,
            )
            details = _run(job)
    details.update(
        {
            "backend": plan.backend,
            "method": plan.method,
            "device": plan.device,
            "fallbacks": plan.fallbacks,
            "estimate": guess.to_dict(),
        }
    )
    warnings = list(plan.fallbacks) + list(details.pop("warnings", None) or [])  # type: ignore[call-overload]
    return StageResult("quantize", output, False, time.monotonic() - started, warnings, details)


@dataclass
class _Job:
    """One quantize run, as the backends see it."""

    model: str
    output: str
    reader: ModelReader
    config: QuantizationConfig
    plan: Plan
    folder: OutputFolder
    write: WriteOptions
    fingerprint: str
    storage_options: Mapping[str, str] | None
    progress: ProgressCallback
    started: float  # when quantize started: the manifest's stage_seconds counts from here
    part: tuple[int, int] | None = None  # a fan-out worker's (index, count)
    min_quantized_fraction: float = 0.0  # refuse a run that quantizes less of the model (quant/roles.py)

    def description(self) -> ModelDescription:
        made = provenance("quantize", self.config.to_dict(), backend=self.plan.backend)
        made.fallbacks = list(self.plan.fallbacks)
        made.config["effective_method"] = self.plan.method
        made.config["device"] = self.plan.device
        source = {"url": self.model, "fingerprint": self.fingerprint, "kind": "parquant"}
        return ModelDescription(source=source, created_by=made, started=self.started)


def _run(job: _Job) -> dict[str, object]:
    if job.plan.backend == "angelslim":
        with work_folder("angelslim") as workdir:
            try:
                run = _quantize_with_angelslim(job, workdir)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # AngelSlim's own failures, of any type
                if isinstance(exc, ParquantError) and exc.exit_code not in _ANGELSLIM_FAILURES:
                    raise  # the user's input or storage is at fault: PTQ would not fix it
                _fall_back_or_refuse(job, exc)
            else:
                # Nothing was written to the output before this point: that is why any failure
                # above can still fall back; from here on a failure is the stage's failure.
                return _import_angelslim_result(job, run)
    return _run_ptq(job)


def _fall_back_or_refuse(job: _Job, exc: Exception) -> None:
    """Record the fallback to PTQ, or (--no-fallback) fail: 69, or the failure's own code (e.g. 71)."""
    reason = exc.message if isinstance(exc, ParquantError) else f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())[:200]
    if not may_change_backend(job.config):
        if isinstance(exc, ParquantError) and exc.exit_code != UnavailableError.exit_code:
            raise exc
        why = "fallback is disabled" if not job.config.fallback else "--backend angelslim was asked for explicitly"
        raise UnavailableError(f"AngelSlim failed ({reason}) and {why}: fix the cause or pass --backend ptq") from None
    fall_back(job.plan, f"AngelSlim failed ({reason[:160]})")


def _quantize_with_angelslim(job: _Job, workdir: Path) -> tuple[AngelSlimRun, float]:
    """AngelSlim's run (it writes only into `workdir`) and its wall time."""
    from ..quant.angelslim import quantize_with_angelslim

    started = time.monotonic()
    run = _guard_memory(
        lambda: quantize_with_angelslim(
            job.model, job.reader, job.config, job.plan.device, workdir, job.storage_options
        ),
        job.plan,
    )
    return run, time.monotonic() - started


def _import_angelslim_result(job: _Job, outcome: tuple[AngelSlimRun, float]) -> dict[str, object]:
    run, quantized_seconds = outcome
    description = job.description()
    specs = {n: job.reader.tensor_spec(n) for n in job.reader.tensor_names()}
    share = _angelslim_share(job, run.output, specs)
    warnings = _share_warnings(job, share, specs)
    description.created_by.config["quantized_share"] = share
    coverage = run.coverage.to_dict() if run.coverage is not None else None
    if coverage is not None:  # the manifest says which experts calibration reached
        description.created_by.config["expert_coverage"] = coverage
    result = import_checkpoint(
        str(run.output),
        job.output,
        write=job.write,
        force=True,
        storage_options=job.storage_options,
        progress=job.progress,
        description=description,
    )
    details: dict[str, object] = {
        "quantize_seconds": round(quantized_seconds, 3),
        "export_seconds": round(run.export_seconds, 3),
        "engine_seconds": round(run.engine_seconds, 3),
        "import_seconds": round(result.seconds, 3),
        "calibration_samples": run.calibration.samples if run.calibration else 0,
        "quantized_share": share,
        "warnings": warnings,
    }
    if coverage is not None:
        details["expert_coverage"] = coverage
        details["warnings"] = warnings + [
            f"expert {name} received no calibration token (its activation scales were set from its siblings)"
            for name in coverage["uncovered"]
        ]
    return details


def _angelslim_share(job: _Job, folder: Path, specs: Mapping[str, TensorSpec]) -> dict[str, Any]:
    """The quantized share of AngelSlim's result, from the tensor names of the folder it wrote."""
    from ..hf import HFCheckpoint
    from ..quant.linear_layers import model_layers

    names = {name for weights in HFCheckpoint.open(resolve(str(folder))).weights for name in weights.tensors}
    return role_coverage(model_layers(job.reader.config()), specs, quantized_modules(names), job.config.ignore)


def _run_ptq(job: _Job) -> dict[str, object]:
    from ..quant.ptq_stage import plan_ptq

    if not methods.get_method(job.plan.method).offered_by(methods.PTQ):
        raise UnavailableError(f"method {job.plan.method} is not offered by the built-in PTQ backend")
    started = time.monotonic()
    recipe = methods.get_method(job.plan.method).recipe(methods.PTQ, job.config.group_size)
    ptq = plan_ptq(job.reader, recipe, job.config.ignore)
    description = job.description()
    specs = {n: job.reader.tensor_spec(n) for n in job.reader.tensor_names()}
    share = role_coverage(ptq.layers, specs, set(ptq.quantized), job.config.ignore)
    warnings = _share_warnings(job, share, specs)
    description.created_by.config["quantized_share"] = share
    # the writer's prefetch thread reads beside torch: count it, or threads fight over the cores
    with cleanup_on_bad_input(job.folder), torch_threads(compute_threads(helper_threads=1)) as threads:
        _guard_memory(
            lambda: write_model(job.folder, ptq.items, job.write, description, job.fingerprint, job.progress, job.part),
            job.plan,
        )
    for fused in ptq.kept_fused:
        log.warning(
            "%s holds fused experts (3-D) and is copied unquantized: re-export the checkpoint with transformers "
            "(save_pretrained writes one 2-D weight per expert) to quantize it",
            fused,
        )
    details: dict[str, object] = {
        "quantize_seconds": round(time.monotonic() - started, 3),
        "quantized_layers": len(ptq.quantized),
        "skipped_layers": ptq.skipped,
        "torch_threads": threads,
        "quantized_share": share,
        "warnings": warnings,
    }
    if ptq.layers.experts:
        details["quantized_experts"] = len(ptq.quantized_experts)
    if job.part is not None:
        details["part"] = list(job.part)
    return details


def _share_warnings(job: _Job, share: dict[str, Any], specs: Mapping[str, TensorSpec]) -> list[str]:
    """Warn by name and count about modules the method left in full precision although they were
    not ignored, and refuse (69) a run below --min-quantized-fraction before anything is written."""
    left = share["left"]
    warnings = []
    if left:
        params = sum(math.prod(specs[f"{m}.weight"].shape) for m in left)
        example = left[0]
        warnings.append(
            f"{job.plan.method} left {len(left)} module(s) ({params:,} parameters) in full precision that were not "
            f"ignored, e.g. {example} {list(specs[f'{example}.weight'].shape)}: a shape it cannot take (INT4 groups "
            f"need an input width that is a multiple of --group-size {job.config.group_size}); quantized share: "
            f"{describe(share)}"
        )
        for warning in warnings:
            log.warning("%s", warning)
    if share["fraction"] < job.min_quantized_fraction:
        raise UnavailableError(
            f"{job.plan.method} quantizes {share['fraction']:.1%} of the parameters asked for, below "
            f"--min-quantized-fraction {job.min_quantized_fraction}: choose a --group-size the widths allow "
            "(e.g. 32), another method, or a lower --min-quantized-fraction"
        )
    return warnings


def _check_memory(plan: Plan, guess: Estimate) -> None:
    needed = guess.peak_memory_gb * 1e9
    available = available_memory()
    if plan.device == "cpu" and needed > available:
        raise OutOfMemoryError(
            f"quantizing needs about {needed / 1e9:.1f} GB of memory with the {plan.backend} backend, "
            f"{available / 1e9:.1f} GB is available: use a bigger node or --backend ptq (streams tensor by tensor)"
        )


def _guard_memory(action, plan: Plan):  # type: ignore[no-untyped-def]
    """Turn host or GPU out-of-memory into exit 71 with what was available."""
    try:
        return action()
    except MemoryError:
        raise OutOfMemoryError(
            f"out of host memory while quantizing ({available_memory() / 1e9:.1f} GB available now): "
            "use a bigger node or --backend ptq"
        ) from None
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise OutOfMemoryError(f"out of {plan.device} memory while quantizing ({exc}): use a bigger GPU") from None
        raise
