"""Stage `quantize`: choose a backend (with the fallback chain), run it, write a Parquet model.

Fallback chain (DESIGN.md §5), each step logged and recorded in the manifest:
AngelSlim not installed, not supporting the architecture, or failing -> built-in PTQ with the
closest method (unless fallback is off: exit 69); CUDA asked for but absent -> CPU.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ANGELSLIM_METHODS, PTQ_FALLBACK, PTQ_METHODS, QuantizationConfig
from ..errors import InvalidInputError, OutOfMemoryError, ParquantError, UnavailableError
from ..fs import ensure_free_space, resolve
from ..memory import available_memory
from ..outputs import OutputFolder
from ..progress import ProgressCallback, no_progress
from ..quant.angelslim_compat import INSTALL_HINT, angelslim_available
from ..quant.detect import detect_quantization
from ..store.reader import ModelReader
from ..store.schema import MANIFEST_NAME
from ..store.writer import ModelDescription, WriteOptions, write_model
from .common import StageResult, cleanup_on_bad_input, fingerprint, finished_model, provenance
from .convert import import_checkpoint

log = logging.getLogger("parquant")
# Rough peak host memory per byte of model for each backend (measured on the embedded model and
# AngelSlim's recipes): AngelSlim loads the model plus calibration activations; PTQ streams.
_MEMORY_FACTOR = {"angelslim": 3.0, "ptq": 0.0}
_SECONDS_PER_GB = {"angelslim": 60.0, "ptq": 4.0}


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
    if config.backend == "ptq" or (config.backend == "auto" and config.method not in ANGELSLIM_METHODS):
        plan.backend = "ptq"
        plan.reasons.append(f"{config.method} runs on the built-in PTQ backend")
        return plan
    if not angelslim_available():
        if not config.fallback:
            raise UnavailableError(f"the AngelSlim backend needs the angelslim package: {INSTALL_HINT}")
        fall_back(plan, "angelslim is not installed")
        return plan
    if model_type not in MODEL_NAMES:
        why = f"AngelSlim 0.5.0 does not support architecture {model_type!r} (supported: {', '.join(MODEL_NAMES)})"
        if not config.fallback:
            raise UnavailableError(f"{why}: use --backend ptq")
        fall_back(plan, why)
        return plan
    plan.backend = "angelslim"
    plan.reasons.append(f"AngelSlim {config.method} on {device}" + (" (CPU adapter active)" if device == "cpu" else ""))
    return plan


def fall_back(plan: Plan, why: str) -> None:
    """Switch a plan to built-in PTQ with the closest method, and say so."""
    method = PTQ_FALLBACK[plan.method]
    plan.fallbacks.append(f"{why} -> ptq {method}")
    log.warning("%s: falling back to the built-in PTQ backend with %s", why, method)
    plan.backend, plan.method = "ptq", method


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


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
) -> StageResult:
    """Quantize the Parquet model at `model` into a Parquet model at `output`.

    `placement_note` is a decision taken before this process started (the Kubernetes executor's
    GPU -> CPU fallback): it is recorded with the plan's own fallbacks, in the manifest and result.
    """
    started = time.monotonic()
    write = write or WriteOptions()
    with ModelReader(resolve(model, storage_options)) as reader:
        scheme = detect_quantization(reader.config(), reader.tensor_names())
        if scheme.quantized:
            raise InvalidInputError(
                f"{model} is already quantized ({scheme.describe()}): quantize the original model instead"
            )
        plan = choose(config, str(reader.config().get("model_type")))
        if placement_note:
            plan.fallbacks.insert(0, placement_note)
        model_bytes = sum(e.nbytes for e in reader.manifest.tensors.values())
        estimate = _estimate(plan, model_bytes)
        if dry_run:
            return StageResult(
                "quantize",
                output,
                True,
                time.monotonic() - started,
                [],
                {"dry_run": True, "plan": plan.__dict__, "estimate": estimate},
            )
        folder = OutputFolder(resolve(output, storage_options), force=force, marker=MANIFEST_NAME)
        digest = hashlib.sha256(reader.manifest.to_json().encode()).hexdigest()
        print_ = fingerprint("quantize", digest, config.to_dict(), write.__dict__)
        if finished_model(folder, print_) is not None:
            log.info("%s already holds this quantization; skipping (use --force to redo it)", output)
            return StageResult("quantize", output, True, time.monotonic() - started)
        _check_memory(plan, estimate)
        ensure_free_space(folder.staging, model_bytes + 4 * 2**20)
        for reason in plan.reasons + plan.fallbacks:
            log.info("plan: %s", reason)
        details = _run(_Job(model, output, reader, config, plan, folder, write, print_, storage_options, progress))
    details.update(
        {
            "backend": plan.backend,
            "method": plan.method,
            "device": plan.device,
            "fallbacks": plan.fallbacks,
            "estimate": estimate,
        }
    )
    return StageResult("quantize", output, False, time.monotonic() - started, list(plan.fallbacks), details)


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

    def description(self) -> ModelDescription:
        made = provenance("quantize", self.config.to_dict(), backend=self.plan.backend)
        made.fallbacks = list(self.plan.fallbacks)
        made.config["effective_method"] = self.plan.method
        made.config["device"] = self.plan.device
        source = {"url": self.model, "fingerprint": self.fingerprint, "kind": "parquant"}
        return ModelDescription(source=source, created_by=made)


def _run(job: _Job) -> dict[str, object]:
    if job.plan.backend == "angelslim":
        try:
            return _run_angelslim(job)
        except (ParquantError, MemoryError):
            raise
        except Exception as exc:  # AngelSlim's own failures: any exception type
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            if not job.config.fallback:
                raise UnavailableError(
                    f"AngelSlim failed ({reason}) and fallback is disabled: fix the cause or pass --backend ptq"
                ) from exc
            fall_back(job.plan, f"AngelSlim failed ({reason[:120]})")
    return _run_ptq(job)


def _run_angelslim(job: _Job) -> dict[str, object]:
    from ..quant.angelslim import quantize_with_angelslim

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="parquant-angelslim-") as workdir:
        run = _guard_memory(
            lambda: quantize_with_angelslim(
                job.model, job.reader, job.config, job.plan.device, Path(workdir), job.storage_options
            ),
            job.plan,
        )
        quantized_seconds = time.monotonic() - started
        result = import_checkpoint(
            str(run.output),
            job.output,
            write=job.write,
            force=True,
            storage_options=job.storage_options,
            progress=job.progress,
            description=job.description(),
        )
    return {
        "quantize_seconds": round(quantized_seconds, 3),
        "export_seconds": round(run.export_seconds, 3),
        "engine_seconds": round(run.engine_seconds, 3),
        "import_seconds": round(result.seconds, 3),
        "calibration_samples": run.calibration.samples if run.calibration else 0,
    }


def _run_ptq(job: _Job) -> dict[str, object]:
    from ..quant.ptq_stage import plan_ptq

    if job.plan.method not in PTQ_METHODS:
        raise UnavailableError(f"method {job.plan.method} is not offered by the built-in PTQ backend")
    started = time.monotonic()
    ptq = plan_ptq(job.reader, job.plan.method, job.config.ignore, job.config.group_size)
    description = job.description()
    with cleanup_on_bad_input(job.folder):
        _guard_memory(
            lambda: write_model(job.folder, ptq.items, job.write, description, job.fingerprint, job.progress),
            job.plan,
        )
    return {
        "quantize_seconds": round(time.monotonic() - started, 3),
        "quantized_layers": len(ptq.quantized),
        "skipped_layers": ptq.skipped,
    }


def _estimate(plan: Plan, model_bytes: int) -> dict[str, float]:
    streaming = 512 * 2**20
    memory = model_bytes * _MEMORY_FACTOR[plan.backend] + streaming
    return {
        "model_gb": round(model_bytes / 1e9, 3),
        "peak_memory_gb": round(memory / 1e9, 3),
        "disk_gb": round(model_bytes / 1e9, 3),
        "seconds": round(max(1.0, model_bytes / 1e9 * _SECONDS_PER_GB[plan.backend]), 1),
    }


def _check_memory(plan: Plan, estimate: dict[str, float]) -> None:
    needed = estimate["peak_memory_gb"] * 1e9
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
