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
from typing import TYPE_CHECKING, Any

from ..backends import Backend, BackendJob, BackendOutput, Hardware, ModelFacts, all_backends, get_backend
from ..backends.angelslim import NOT_INSTALLED
from ..cpus import compute_threads, torch_threads
from ..errors import ConfigError, InvalidInputError, OutOfMemoryError, ParquantError, UnavailableError, UsageError
from ..fs import check_separate, ensure_free_space, resolve
from ..memory import available_memory
from ..outcomes import WriteResult
from ..outputs import OutputFolder, cleanup_on_bad_input, fingerprint
from ..progress import ProgressCallback, no_progress
from ..quant import methods
from ..quant.angelslim_compat import INSTALL_HINT
from ..quant.config import QuantizationConfig, load_config
from ..quant.detect import detect_quantization
from ..quant.estimate import Estimate, duration
from ..quant.recipe import Recipe
from ..quant.roles import describe, role_coverage
from ..store.reader import ModelReader
from ..store.schema import MANIFEST_NAME, TensorSpec
from ..store.writer import ModelDescription, WriteOptions, write_model
from ..workdirs import work_folder
from .common import StageContext, finished_model, provenance
from .fanout import check_part, fan_out_part, run_local_workers
from .options import QuantizeOptions

if TYPE_CHECKING:
    from .compare import CompareResult

log = logging.getLogger("parquant")
# A backend's failures that the built-in PTQ may not share: a missing or broken package (69), its
# own bugs (70), its memory use (71, PTQ streams). Bad input, storage and credentials fail PTQ too.
_BACKEND_FAILURES = (69, 70, 71)


@dataclass
class Plan:
    """What a run will do, resolved once: the backend object, the recipe it runs, the device, and why."""

    backend: Backend
    recipe: Recipe
    device: str
    reasons: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.recipe.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "method": self.method,
            "device": self.device,
            "reasons": self.reasons,
            "fallbacks": self.fallbacks,
            "recipe": [
                {
                    "targets": list(g.targets),
                    "weights": g.scheme.describe_weights(),
                    "activations": g.scheme.describe_activations(),
                }
                for g in self.recipe.groups
            ],
        }


def choose(config: QuantizationConfig, model: ModelFacts, cuda: bool | None = None) -> Plan:
    """Apply the fallback chain to the config, without running anything: the first backend that
    is eligible for the recipe (the one asked for, or under `auto` the method's preferred one), or,
    when `--backend auto` allows it, the built-in PTQ with the closest method."""
    if cuda is None:
        cuda = _cuda_available()
    device = "cuda" if (config.device in ("auto", "cuda") and cuda) else "cpu"
    fallbacks = []
    if config.device == "cuda" and not cuda:
        if not config.fallback:
            raise UnavailableError("device cuda was requested but no CUDA GPU is available (fallback disabled)")
        fallbacks.append("cuda requested but not available -> cpu")
    if config.custom_recipe is not None:
        plan = _choose_for_recipe(config, config.custom_recipe, model, device)
        plan.fallbacks[:0] = fallbacks
        return plan
    method = methods.get_method(config.method)
    backend = get_backend(method.backend_for(config.backend))
    recipe = backend.recipe_for(config.method, config.group_size)
    assert recipe is not None, "config validation checks the method is offered by the backend asked for"
    why = backend.eligible(model, recipe, device)
    if why is None:
        return Plan(backend, recipe, device, [backend.describe(recipe, device)], fallbacks)
    if not may_change_backend(config):
        if why == NOT_INSTALLED:
            raise UnavailableError(f"the AngelSlim backend needs the angelslim package: {INSTALL_HINT}{_ASKED}")
        raise UnavailableError(f"{why}: use --backend ptq{_ASKED}")
    plan = Plan(backend, recipe, device, [], fallbacks)
    fall_back(plan, why, config.group_size)
    return plan


def _choose_for_recipe(config: QuantizationConfig, recipe: Recipe, model: ModelFacts, device: str) -> Plan:
    """A recipe file runs on the backend asked for, or (auto) on the eligible one estimated fastest."""
    candidates = all_backends() if config.backend == "auto" else (get_backend(config.backend),)
    refusals = []
    eligible = []
    for backend in candidates:
        why = backend.eligible(model, recipe, device)
        if why is None:
            eligible.append(backend)
        else:
            refusals.append(f"{backend.name}: {why}")
    if not eligible:
        raise UnavailableError(
            f"no backend can run {recipe.source} ({'; '.join(refusals)}): change the recipe's schemes"
        )
    hardware = Hardware(device)
    backend = min(eligible, key=lambda b: b.estimate(model, recipe, config, hardware).seconds)
    reasons = [backend.describe(recipe, device)] + [f"not {r}" for r in refusals]
    return Plan(backend, recipe, device, reasons)


_ASKED = " (--backend angelslim was asked for explicitly: --backend auto lets parquant fall back to PTQ)"


def may_change_backend(config: QuantizationConfig) -> bool:
    """The rule: a backend the user named (`--backend angelslim`) is never swapped for another; only
    `--backend auto` with fallback on lets parquant move to the built-in PTQ (and say so: log,
    manifest `created_by.fallbacks`, report notes). A recipe file is never swapped for a method."""
    return config.fallback and config.backend == "auto" and config.custom_recipe is None


def fall_back(plan: Plan, why: str, group_size: int) -> None:
    """Switch a plan to built-in PTQ with the closest method (the same weight bit width where the
    built-in PTQ has one: a 4-bit request stays 4-bit), and say so on one line."""
    method = methods.get_method(plan.method).fallback
    plan.fallbacks.append(f"{why} -> ptq {method}")
    change = f"method {plan.method} -> {method}, " if method != plan.method else ""
    log.warning("%s: falling back to the built-in PTQ backend with %s (%sbackend ptq)", why, method, change)
    ptq = get_backend(methods.PTQ)
    recipe = ptq.recipe_for(method, group_size)
    assert recipe is not None, "a method's fallback is a built-in method (the registry's tests check it)"
    plan.backend, plan.recipe = ptq, recipe


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class QuantizeResult(WriteResult):
    backend: str | None = None
    method: str | None = None
    device: str | None = None
    fallbacks: list[str] | None = None
    estimate: Estimate | None = None
    quantize_seconds: float | None = None  # the backend's run and the write
    write_seconds: float | None = None
    torch_threads: int | None = None
    quantized_share: dict[str, Any] | None = None  # per role, in parameters (quant/roles.py)
    quantized_layers: int | None = None
    skipped_layers: list[str] | None = None
    quantized_experts: int | None = None
    calibration_samples: int | None = None
    export_seconds: float | None = None
    engine_seconds: float | None = None
    expert_coverage: dict[str, Any] | None = None


@dataclass
class QuantizePlanResult(WriteResult):
    """`--dry-run`: what a run would do and cost; nothing is written."""

    dry_run: bool = True
    plan: dict[str, Any] = field(default_factory=dict)
    estimate: Estimate | None = None

    def log_lines(self) -> list[str]:
        plan = self.plan
        lines = [f"plan: backend {plan['backend']}, method {plan['method']}, device {plan['device']}"]
        lines += [f"plan: {line}" for line in plan["reasons"] + plan["fallbacks"]]
        if self.estimate is not None:
            guess = self.estimate
            lines.append(
                f"estimate: peak memory {guess.peak_memory_gb:.2f} GB, disk {guess.disk_gb:.2f} GB, about "
                f"{duration(guess.seconds)} ({guess.basis})"
            )
        return lines


def run(options: QuantizeOptions, context: StageContext) -> QuantizeResult | QuantizePlanResult | CompareResult:
    """`parquant quantize` (`--compare`: stages/compare.py)."""
    from ..store.writer import WriteOptions

    if options.compare:
        from . import compare

        return compare.run(options, context)

    part = fan_out_part(options, context)
    config = load_config(options.config, config_flags(options))
    write = WriteOptions(options.format_version, options.chunk_size, options.shard_size, options.compression)

    started = time.monotonic()

    def run_quantize(dry_run: bool, part: tuple[int, int] | None) -> QuantizeResult | QuantizePlanResult:
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
        "recipe": options.recipe,
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
) -> QuantizeResult | QuantizePlanResult:
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
        facts = ModelFacts(
            str(reader.config().get("model_type")),
            sum(math.prod(e.shape) for e in reader.manifest.tensors.values()),
            sum(e.nbytes for e in reader.manifest.tensors.values()),
            reader.config(),
        )
        plan = choose(config, facts)
        if config.custom_recipe is not None:
            _check_fits(reader, plan.recipe.with_ignore(config.ignore))
        if part is not None and not plan.backend.fans_out:
            raise UsageError(
                f"{plan.method} runs on {plan.backend.name}, which cannot fan out: --shard-count/--workers/"
                "fan_out split the built-in PTQ's data-free methods (add --backend ptq, or choose e.g. fp8-block "
                "or int8-weight)"
            )
        if placement_note:
            plan.fallbacks.insert(0, placement_note)
        if config.calibration.data and not plan.recipe.calibrated:
            plan.reasons.append(f"calibration data {config.calibration.data} is not used: {plan.method} is data-free")
            log.warning("%s", plan.reasons[-1])
        guess = plan.backend.estimate(facts, plan.recipe, config, Hardware(plan.device))
        if guess.long_cpu_run(plan.device):
            log.warning(
                "%s on the CPU is estimated to take about %s (%s parameters x %s calibration tokens): use a GPU, "
                "fewer --num-samples / a shorter --seq-len, or a data-free method such as fp8-dynamic",
                plan.method,
                duration(guess.seconds),
                f"{facts.parameters:,}",
                f"{guess.calibration_tokens:,}",
            )
        if dry_run:
            return QuantizePlanResult(
                "quantize", output, True, time.monotonic() - started, plan=plan.to_dict(), estimate=guess
            )
        folder = OutputFolder(resolve(output, storage_options), force=force, marker=MANIFEST_NAME)
        identity = fingerprint("quantize", reader.manifest.digest(), config.to_dict(), write.__dict__)
        with folder.locked(part):
            if finished_model(folder, identity) is not None:
                log.info("%s already holds this quantization; skipping (use --force to redo it)", output)
                return QuantizeResult("quantize", output, True, time.monotonic() - started)
            _check_memory(plan, guess)
            ensure_free_space(folder.staging, facts.model_bytes, folder.staged_bytes())
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
            result = _run(job)
    result.backend, result.method, result.device = plan.backend.name, plan.method, plan.device
    result.fallbacks, result.estimate = plan.fallbacks, guess
    result.warnings = list(plan.fallbacks) + result.warnings
    result.seconds = time.monotonic() - started
    return result


def _check_fits(reader: ModelReader, recipe: Recipe) -> None:
    """A recipe file's groups against the model's linear layers (each group matches one, no module
    matches two), before a lock is taken or a byte written: 78 naming the group or the module."""
    from ..quant.linear_layers import model_layers
    from ..quant.recipe import RecipeError

    names = set(reader.tensor_names())
    modules = {m for m in model_layers(reader.config()).candidates if f"{m}.weight" in names}
    try:
        recipe.assign(modules)
    except RecipeError as exc:
        raise ConfigError(str(exc)) from None


@dataclass
class _Job:
    """One quantize run, as the stage carries it out."""

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
        made = provenance("quantize", self.config.to_dict(), backend=self.plan.backend.name)
        made.fallbacks = list(self.plan.fallbacks)
        made.config["effective_method"] = self.plan.method
        made.config["device"] = self.plan.device
        source = {"url": self.model, "fingerprint": self.fingerprint, "kind": "parquant"}
        return ModelDescription(source=source, created_by=made, started=self.started)


def _run(job: _Job) -> QuantizeResult:
    """Run the plan's backend; a backend other than the built-in PTQ that fails before anything is
    written falls back to it (when `--backend auto` allows), and the fallback runs instead."""
    with work_folder(job.plan.backend.name) as workdir:
        backend_job = BackendJob(
            job.model, job.reader, job.plan.recipe, job.config, job.plan.device, workdir, job.storage_options
        )
        started = time.monotonic()
        try:
            output = _guard_memory(lambda: job.plan.backend.run(backend_job), job.plan)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a backend's own failures, of any type
            if job.plan.backend.name == methods.PTQ:  # the end of the fallback chain
                raise
            if isinstance(exc, ParquantError) and exc.exit_code not in _BACKEND_FAILURES:
                raise  # the user's input or storage is at fault: PTQ would not fix it
            _fall_back_or_refuse(job, exc)
            return _run(job)
        # Nothing was written to the output before this point: that is why any failure above can
        # still fall back; from here on a failure is the stage's failure.
        return _write(job, output, time.monotonic() - started)


def _write(job: _Job, output: BackendOutput, run_seconds: float) -> QuantizeResult:
    description = job.description()
    specs = {n: job.reader.tensor_spec(n) for n in job.reader.tensor_names()}
    share = role_coverage(output.layers, specs, output.quantized, output.not_asked)
    warnings = _share_warnings(job, share, specs) + output.warnings
    description.created_by.config["quantized_share"] = share
    report = output.report
    if report.expert_coverage is not None:  # the manifest says which experts calibration reached
        description.created_by.config["expert_coverage"] = report.expert_coverage
    if output.safetensors_layout is not None:  # a backend that made safetensors files: export keeps their layout
        description.safetensors_layout = output.safetensors_layout
    started = time.monotonic()
    # the writer's prefetch thread reads beside torch: count it, or threads fight over the cores
    with cleanup_on_bad_input(job.folder), torch_threads(compute_threads(helper_threads=1)) as threads:
        _guard_memory(
            lambda: write_model(
                job.folder, output.items, job.write, description, job.fingerprint, job.progress, job.part
            ),
            job.plan,
        )
    for fused in output.kept_fused:
        log.warning(
            "%s holds fused experts (3-D) and is copied unquantized: re-export the checkpoint with transformers "
            "(save_pretrained writes one 2-D weight per expert) to quantize it",
            fused,
        )
    for name, count in sorted(output.nonfinite.items()):
        warnings.append(f"tensor {name} has {count} NaN/Inf values")
        log.warning("%s", warnings[-1])
    written = time.monotonic() - started
    return QuantizeResult(
        "quantize",
        job.output,
        False,
        0.0,
        warnings,
        job.part,
        quantize_seconds=report.quantize_seconds or round(run_seconds + written, 3),
        write_seconds=round(written, 3),
        torch_threads=threads,
        quantized_share=share,
        quantized_layers=report.quantized_layers,
        skipped_layers=report.skipped_layers,
        quantized_experts=len(output.quantized & output.layers.experts) if output.layers.experts else None,
        calibration_samples=report.calibration_samples,
        export_seconds=report.export_seconds,
        engine_seconds=report.engine_seconds,
        expert_coverage=report.expert_coverage,
    )


def _fall_back_or_refuse(job: _Job, exc: Exception) -> None:
    """Record the fallback to PTQ, or (--no-fallback) fail: 69, or the failure's own code (e.g. 71)."""
    reason = exc.message if isinstance(exc, ParquantError) else f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())[:200]
    name = job.plan.backend.title
    if not may_change_backend(job.config):
        if isinstance(exc, ParquantError) and exc.exit_code != UnavailableError.exit_code:
            raise exc
        why = (
            "fallback is disabled"
            if not job.config.fallback
            else f"--backend {job.config.backend} was asked for explicitly"
            if job.config.custom_recipe is None
            else "a recipe file is never swapped for a method"
        )
        raise UnavailableError(f"{name} failed ({reason}) and {why}: fix the cause or pass --backend ptq") from None
    fall_back(job.plan, f"{name} failed ({reason[:160]})", job.config.group_size)


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
