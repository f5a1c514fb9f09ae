"""The built-in PTQ as a registered backend: data-free round to nearest, streamed tensor by tensor.

It runs every recipe whose schemes quant/builders.py has a quantizer for, on any architecture with
nn.Linear layers, on the CPU, in memory bounded by one tensor; its writes split over fan-out
workers. The streaming plan itself is quant/ptq_stage.py.
"""

from __future__ import annotations

from ..quant.builders import UnsupportedSchemeError, build
from ..quant.config import QuantizationConfig
from ..quant.estimate import Estimate, estimate
from ..quant.methods import PTQ, get_method
from ..quant.recipe import Recipe
from .base import BackendJob, BackendOutput, BackendReport, Hardware, ModelFacts, register


class BuiltInPTQ:
    name = PTQ
    title = "built-in PTQ"
    fans_out = True

    def describe(self, recipe: Recipe, device: str) -> str:
        return f"{recipe.name} runs on the built-in PTQ backend"

    def recipe_for(self, method: str, group_size: int) -> Recipe | None:
        record = get_method(method)
        return record.recipe(PTQ, group_size) if record.offered_by(PTQ) else None

    def eligible(self, model: ModelFacts, recipe: Recipe, device: str) -> str | None:
        for group in recipe.groups:
            try:
                build(group.scheme, recipe)
            except UnsupportedSchemeError as exc:
                return str(exc)
        return None

    def estimate(self, model: ModelFacts, recipe: Recipe, config: QuantizationConfig, hardware: Hardware) -> Estimate:
        return estimate(PTQ, 0.0, hardware.device, model.model_bytes, model.parameters, 0, 0)

    def run(self, job: BackendJob) -> BackendOutput:
        from ..quant.ptq_stage import plan_ptq

        plan = plan_ptq(job.reader, job.recipe, job.config.ignore)
        return BackendOutput(
            plan.items,
            plan.layers,
            set(plan.quantized),
            plan.not_asked,
            report=BackendReport(quantized_layers=len(plan.quantized), skipped_layers=plan.skipped),
            kept_fused=plan.kept_fused,
        )


register(BuiltInPTQ())
