"""BenchmarkRunner: every figure present, sane, and repeated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from parquant.benchmark import BenchmarkRunner
from parquant.stages.hf_import import import_checkpoint

from .conftest import EXAMPLE_MODEL, CliResult


def test_benchmark_figures(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "m"))
    result = BenchmarkRunner(str(tmp_path / "m"), batch_sizes=(1, 2), seq_lens=(32, 64), new_tokens=8, repeats=2).run()
    assert set(result.prefill_seconds) == {"1x32", "1x64", "2x32", "2x64"}
    for timing in result.prefill_seconds.values():
        assert 0 < timing.minimum <= timing.median <= timing.maximum and timing.runs == 2
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
