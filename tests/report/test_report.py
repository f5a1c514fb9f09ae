"""Reports: a table with failed rows, Markdown/JSON/HTML files, and plots a browser really shows."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from parquant.errors import InvalidInputError
from parquant.report import render_report, rows_from_results
from parquant.results import (
    BenchmarkResult,
    ComparisonEntry,
    TensorMetric,
    Thresholds,
    Timing,
    ValidationResult,
    WorstToken,
    parse_result,
)

from ..conftest import CliResult


def _validation(candidate: str, cosine: float, ratio: float, note: str = "") -> ValidationResult:
    return ValidationResult(
        reference="m/reference",
        candidate=candidate,
        tensors=[TensorMetric("w", cosine, 0.01, 0.1)],
        worst_tensors=[TensorMetric("w", cosine, 0.01, 0.1)],
        logits_cosine_mean=cosine,
        logits_cosine_worst=cosine - 0.01,
        worst_tokens=[WorstToken(3, "the", cosine - 0.01)],
        top1_agreement=0.95,
        kl_divergence=0.001,
        perplexity_reference=100.0,
        perplexity_candidate=100 * ratio,
        perplexity_ratio=ratio,
        tokens_evaluated=1024,
        seconds=1.0,
        thresholds=Thresholds(),
        passed=True,
        note=note,
    )


def _benchmark(model: str, size: int, speed: float, note: str = "") -> BenchmarkResult:
    return BenchmarkResult(
        model=model,
        device="cpu",
        size_on_disk_bytes=size,
        load_seconds=0.5,
        prefill_seconds={"1x128": Timing(0.01, 0.009, 0.012, 3)},
        decode_tokens_per_second={"1": Timing(speed, speed - 1, speed + 1, 3)},
        model_memory_bytes=size,
        peak_host_rss_bytes=5 * size,
        note=note,
        environment={
            "device": "cpu",
            "device_name": "Test CPU",
            "torch_threads": "2",
            "torch": "2.13.0+cpu",
            "transformers": "5.23.0",
            "kernels": "native" if model.endswith("reference") else "simulated: weights decompressed on CPU",
        },
    )


def _results() -> list[ComparisonEntry]:
    def row(label: str, size: int, cosine: float, ratio: float, speed: float) -> ComparisonEntry:
        model = f"m/{label}"
        return ComparisonEntry(
            label,
            label,
            "ptq",
            model,
            quantize_seconds=1.5,
            validation=_validation(model, cosine, ratio),
            benchmark=_benchmark(model, size, speed),
        )

    failed = ComparisonEntry(
        "int4-awq", "int4-awq", "", "m/awq", error="exit 69: the AngelSlim backend needs the angelslim package"
    )
    reference = row("reference", 8_000_000, 1.0, 1.0, 300.0)
    reference.method = "reference"
    return [
        reference,
        row("int8-weight", 4_000_000, 0.9999, 1.002, 250.0),
        row("fp8", 4_100_000, 0.999, 1.01, 200.0),
        failed,
    ]


def test_results_round_trip_through_their_json_typed() -> None:
    for result in _results():
        assert parse_result(json.loads(json.dumps(result.to_dict())), "r.json") == result
    with pytest.raises(InvalidInputError, match=r"r\.json holds no validation"):
        parse_result({"stage": "quantize"}, "r.json")
    broken = _results()[1].to_dict()
    broken["validation"]["logits_cosine_mean"] = "high"
    with pytest.raises(InvalidInputError, match="missing or wrong fields"):
        parse_result(broken, "r.json")


def test_rows_and_files() -> None:
    rows = rows_from_results(_results())
    assert [r.label for r in rows] == ["reference", "int8-weight", "fp8", "int4-awq"]
    assert rows[1].compression_ratio == 2.0 and rows[3].error.startswith("exit 69")
    files = render_report(rows, "test report", ["SmolLM2 was 4-bit before dequantization"])
    assert {
        "report.md",
        "report.json",
        "report.html",
        "precision_vs_size.png",
        "decode_speed.png",
        "logits_cosine.png",
    } <= set(files)
    markdown = files["report.md"].decode()
    assert "| int8-weight | int8-weight | ptq | 4.0 | 2.00 |" in markdown  # one precision per column
    assert "## Failed methods" in markdown and "int4-awq" in markdown and "4-bit before" in markdown
    assert json.loads(files["report.json"])["rows"][3]["error"]
    # the environment and the kind of kernels next to every speed figure
    assert "| 250.0 ±0% | simulated |" in markdown and "| 300.0 ±0% | native |" in markdown
    assert "benchmarks ran on cpu (Test CPU), 2 torch threads, torch 2.13.0+cpu, transformers 5.23.0" in markdown
    assert "kernels simulated: weights decompressed on CPU" in markdown
    assert all(files[name].startswith(b"\x89PNG") for name in files if name.endswith(".png"))


def test_fallback_notes_reach_the_report_from_validate_and_benchmark_results() -> None:
    """The Kubernetes GPU -> CPU fallback is recorded in the manifest; both stages carry it on."""
    validation = _validation("s3://b/q", 0.999, 1.01, note="GPU pod unschedulable: ran on CPU")
    benchmark = _benchmark("s3://b/other", 4_000_000, 200.0, note="cuda requested -> cpu")
    rows = rows_from_results([validation, benchmark])
    assert [r.note for r in rows] == ["GPU pod unschedulable: ran on CPU", "cuda requested -> cpu"]
    markdown = render_report(rows, "t", [])["report.md"].decode()
    assert "- q: GPU pod unschedulable: ran on CPU" in markdown


def test_report_cli_and_html_renders_in_chromium(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    for index, result in enumerate(_results()):
        (tmp_path / f"r{index}.json").write_text(json.dumps(result.to_dict()))
    out = cli("report", *sorted(tmp_path.glob("r*.json")), "-o", tmp_path / "report")
    assert out.code == 0, out.err
    assert cli("report", tmp_path / "r0.json", "-o", tmp_path / "report").code == 73
    (tmp_path / "bad.json").write_text("{nope")
    assert cli("report", tmp_path / "bad.json", "-o", tmp_path / "r2").code == 65
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: `make test` installs Debian's chromium where it runs as root with apt")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,1800",
            f"--screenshot={shot}",
            (tmp_path / "report" / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 50, "screenshot is blank"
    blue = sum(count for count, (r, g, b) in colours if b > 150 and r < 100 and g < 160)  # scatter points, tab:blue
    green = sum(count for count, (r, g, b) in colours if g > 120 and r < 100 and b < 100)  # bars, tab:green
    assert blue > 20 and green > 500, f"plots not visible (blue {blue}, green {green})"
