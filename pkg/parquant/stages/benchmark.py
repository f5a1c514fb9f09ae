"""Stage `benchmark`: latency, throughput and memory of one model."""

from __future__ import annotations

from collections.abc import Mapping

from ..benchmark import BenchmarkRunner
from ..progress import ProgressCallback, no_progress
from ..results import BenchmarkResult
from .common import StageContext, with_json_output
from .options import BenchmarkOptions


def run(options: BenchmarkOptions, context: StageContext) -> BenchmarkResult:
    return benchmark(
        options.model,
        output=options.output,
        batch_sizes=tuple(options.batch_sizes),
        seq_lens=tuple(options.seq_lens),
        new_tokens=options.new_tokens,
        repeats=options.repeats,
        device=options.device,
        storage_options=context.storage_options,
        progress=context.progress,
    )


def benchmark(
    model: str,
    *,
    output: str | None = None,
    batch_sizes: tuple[int, ...] = (1, 4),
    seq_lens: tuple[int, ...] = (128, 512),
    new_tokens: int = 32,
    repeats: int = 5,
    device: str = "cpu",
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> BenchmarkResult:
    runner = BenchmarkRunner(
        model,
        batch_sizes=batch_sizes,
        seq_lens=seq_lens,
        new_tokens=new_tokens,
        repeats=repeats,
        device=device,
        storage_options=storage_options,
        progress=progress,
    )
    return with_json_output(output, storage_options, runner.run)
