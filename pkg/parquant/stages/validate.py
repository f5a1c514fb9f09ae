"""Stage `validate`: a quantized model against its reference (weights, logits, perplexity, gates)."""

from __future__ import annotations

from collections.abc import Mapping

from ..progress import ProgressCallback, no_progress
from ..results import Thresholds, ValidationResult
from ..validate import PrecisionValidator
from .common import StageContext, with_json_output
from .options import ValidateOptions


def run(options: ValidateOptions, context: StageContext) -> ValidationResult:
    """`parquant validate`; the gate (exit 79) is the caller's: `validate.gate(result)`."""
    from ..tasks import parse_tasks

    return validate(
        options.reference,
        options.candidate,
        options.eval_text,
        output=options.output,
        seq_len=options.seq_len,
        max_tokens=options.max_tokens,
        thresholds=Thresholds(options.min_cosine, options.max_ppl_ratio),
        tasks=parse_tasks(options.tasks),
        task_limit=options.task_limit,
        storage_options=context.storage_options,
        progress=context.progress,
    )


def validate(
    reference: str,
    candidate: str,
    eval_text: str,
    *,
    output: str | None = None,
    seq_len: int = 256,
    max_tokens: int = 4096,
    thresholds: Thresholds | None = None,
    tasks: list[str] | None = None,
    task_limit: int | None = None,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> ValidationResult:
    validator = PrecisionValidator(
        reference,
        candidate,
        eval_text,
        seq_len=seq_len,
        max_tokens=max_tokens,
        thresholds=thresholds,
        storage_options=storage_options,
        progress=progress,
        tasks=tasks,
        task_limit=task_limit,
    )
    return with_json_output(output, storage_options, validator.run)
