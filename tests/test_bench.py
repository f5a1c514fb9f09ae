"""BenchmarkRunner: every figure present, sane, and repeated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from parquant.benchmark import BenchmarkRunner
from parquant.cpus import compute_threads
from parquant.stages.hf_import import import_checkpoint

from .conftest import EXAMPLE_MODEL, CliResult


def test_benchmark_figures(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "m"))
    result = BenchmarkRunner(str(tmp_path / "m"), batch_sizes=(1, 2), seq_lens=(32, 64), new_tokens=8, repeats=2).run()
    assert set(result.prefill_seconds) == {"1x32", "1x64", "2x32", "2x64"}
    for timing in result.prefill_seconds.values():
        assert 0 < timing.minimum <= timing.median <= timing.maximum and 2 <= timing.runs <= 6
    assert result.decode_tokens_per_second["2"].median > 0
    assert result.size_on_disk_bytes > 6_000_000 and result.model_memory_bytes > 6_000_000
    assert result.peak_host_rss_bytes > result.model_memory_bytes
    assert "decode batch 1" in result.summary()
    out = cli(
        "benchmark",
        tmp_path / "m",
        "--batch-sizes",
        "1",
        "--seq-lens",
        "16",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
        "-o",
        tmp_path / "b.json",
        "--json",
    )
    assert out.code == 0 and '"kind": "benchmark"' in (tmp_path / "b.json").read_text()


def test_environment_and_memory_after_a_forward_pass(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    """A quantized model's memory is what it holds while it runs (CPU decompresses the weights on the
    first forward pass), and the result says where it ran and that its kernels were simulated."""
    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "m"))
    assert (
        cli("quantize", tmp_path / "m", "-o", tmp_path / "q", "--method", "int8-weight", "--backend", "ptq").code == 0
    )
    settings = {"batch_sizes": (1,), "seq_lens": (16,), "new_tokens": 2, "repeats": 1}
    reference = BenchmarkRunner(str(tmp_path / "m"), **settings).run()  # type: ignore[arg-type]
    quantized = BenchmarkRunner(str(tmp_path / "q"), **settings).run()  # type: ignore[arg-type]
    assert reference.environment["kernels"] == "native"
    assert quantized.environment["kernels"].startswith("simulated")
    assert quantized.environment["torch_threads"] == str(compute_threads(helper_threads=0))
    assert quantized.environment["torch"] == torch.__version__ and quantized.environment["device"] == "cpu"
    # int8 weights + scales are ~4.5 MB as loaded; decompressed to bf16 on the first forward, ~6.8 MB
    assert quantized.model_memory_bytes > 0.95 * reference.model_memory_bytes


def test_wide_spread_adds_runs() -> None:
    runner = BenchmarkRunner("unused", repeats=2)
    durations = iter([0.0, 0.001, 0.03, 0.001, 0.03, 0.001, 0.03, 0.001])  # warm-up, then alternating

    def action() -> None:
        import time

        time.sleep(next(durations))

    timing = runner._time(action)
    assert timing.runs == 6 and timing.spread > 0.25  # three times the repeats, and the spread is reported
    steady = BenchmarkRunner("unused", repeats=3)._time(lambda: None)
    assert steady.runs >= 3
