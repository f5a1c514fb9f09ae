"""AngelSlim as a registered backend: Tencent's calibrated methods, on the whole model in memory.

Eligible when the package is installed, the architecture is one of its model classes, the
method runs on that class, and the recipe is one AngelSlim has a method for (one scheme for the
whole model: quant/angelslim.py `recipe_section`). It writes only into the job's scratch folder;
its result is streamed from there as the items the stage writes. The run itself (export, calibration,
engine, repairs) is quant/angelslim.py.
"""

from __future__ import annotations

import time

from ..errors import UnavailableError
from ..hf import HFCheckpoint
from ..numerics import count_nonfinite
from ..quant.angelslim_compat import angelslim_available
from ..quant.config import QuantizationConfig
from ..quant.estimate import Estimate, estimate
from ..quant.linear_layers import model_layers
from ..quant.methods import ANGELSLIM, get_method, method_names
from ..quant.recipe import PRESET, Recipe
from ..quant.roles import quantized_modules
from ..store.schema import TensorSpec
from .base import BackendJob, BackendOutput, BackendReport, Hardware, ModelFacts, register

NOT_INSTALLED = "angelslim is not installed"
# seconds per parameter per calibration token on a CPU for a recipe that is no registry method
_DEFAULT_CALIBRATION_COST = 1e-10


class AngelSlim:
    name = ANGELSLIM
    title = "AngelSlim"
    fans_out = False

    def describe(self, recipe: Recipe, device: str) -> str:
        return f"AngelSlim {recipe.name} on {device}" + (" (CPU adapter active)" if device == "cpu" else "")

    def recipe_for(self, method: str, group_size: int) -> Recipe | None:
        record = get_method(method)
        return record.recipe(ANGELSLIM, group_size) if record.offered_by(ANGELSLIM) else None

    def eligible(self, model: ModelFacts, recipe: Recipe, device: str) -> str | None:
        from ..quant.angelslim import MODEL_NAMES, recipe_section

        try:
            recipe_section(recipe)
        except UnavailableError as exc:
            return exc.message
        if not angelslim_available():
            return NOT_INSTALLED
        if model.model_type not in MODEL_NAMES:
            return (
                f"AngelSlim 0.5.0 does not support architecture {model.model_type!r} "
                f"(supported: {', '.join(MODEL_NAMES)})"
            )
        supported = get_method(recipe.name).angelslim_models if recipe.name in method_names(ANGELSLIM) else ()
        if supported and MODEL_NAMES[model.model_type] not in supported:
            runs_on = [name for name, cls in MODEL_NAMES.items() if cls in supported]
            return f"AngelSlim 0.5.0 runs {recipe.name} only on {', '.join(runs_on)} models, not {model.model_type!r}"
        return None

    def estimate(self, model: ModelFacts, recipe: Recipe, config: QuantizationConfig, hardware: Hardware) -> Estimate:
        cost = 0.0
        if recipe.calibrated:
            preset = recipe.source == PRESET and recipe.name in method_names(ANGELSLIM)
            cost = get_method(recipe.name).calibration_cost if preset else _DEFAULT_CALIBRATION_COST
        calibration = config.calibration
        return estimate(
            ANGELSLIM,
            cost,
            hardware.device,
            model.model_bytes,
            model.parameters,
            calibration.num_samples,
            calibration.seq_len,
        )

    def run(self, job: BackendJob) -> BackendOutput:
        from ..fs import resolve
        from ..quant.angelslim import quantize_with_angelslim

        started = time.monotonic()
        run = quantize_with_angelslim(
            job.model, job.reader, job.config, job.recipe, job.device, job.workdir, job.storage_options
        )
        quantized_seconds = time.monotonic() - started
        checkpoint = HFCheckpoint.open(resolve(str(run.output)))
        nonfinite: dict[str, int] = {}
        items = checkpoint.items(lambda spec, data: _count_nonfinite(nonfinite, spec, data))
        names = {name for weights in checkpoint.weights for name in weights.tensors}
        report = BackendReport(
            calibration_samples=run.calibration.samples if run.calibration else 0,
            quantize_seconds=round(quantized_seconds, 3),
            export_seconds=round(run.export_seconds, 3),
            engine_seconds=round(run.engine_seconds, 3),
        )
        warnings = []
        if run.coverage is not None:  # the manifest says which experts calibration reached
            report.expert_coverage = run.coverage.to_dict()
            warnings = [
                f"expert {name} received no calibration token (its activation scales were set from its siblings)"
                for name in report.expert_coverage["uncovered"]
            ]
        return BackendOutput(
            items,
            model_layers(job.reader.config()),
            quantized_modules(names),
            list(job.config.ignore),
            report=report,
            warnings=warnings,
            safetensors_layout=checkpoint.layout(),
            nonfinite=nonfinite,
        )


def _count_nonfinite(found: dict[str, int], spec: TensorSpec, data: bytes | memoryview) -> None:
    """NaN/Inf in AngelSlim's result, counted per tensor as the writer streams it (warned about after)."""
    bad = count_nonfinite(data, spec.dtype)
    if bad:
        found[spec.name] = found.get(spec.name, 0) + bad


register(AngelSlim())
