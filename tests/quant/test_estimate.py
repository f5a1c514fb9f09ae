"""Quantize estimates: measured per-method costs, scaled by model and calibration size, checked
against real runs; a long CPU run is announced before it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parquant.quant.estimate import LONG_RUN_SECONDS, duration, estimate
from parquant.quant.methods import get_method

from ..conftest import CliResult, embedded_model_in
from ..helpers import SMALL_CALIBRATION

BILLION = 10**9
AWQ = get_method("int4-awq").calibration_cost


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_model_in(tmp_path_factory.mktemp("estimate"), "tiny") as model:
        yield str(model)


def test_time_scales_with_parameters_and_calibration_tokens() -> None:
    small = estimate("angelslim", AWQ, "cpu", 2 * BILLION, BILLION, 8, 128)
    more_tokens = estimate("angelslim", AWQ, "cpu", 2 * BILLION, BILLION, 32, 128)
    assert small.calibration_tokens == 1024 and more_tokens.calibration_tokens == 4096
    calibration = small.seconds - estimate("angelslim", 0.0, "cpu", 2 * BILLION, BILLION, 8, 128).seconds
    assert more_tokens.seconds - small.seconds == pytest.approx(3 * calibration, rel=0.01)
    assert estimate("ptq", 0.0, "cpu", 2 * BILLION, BILLION, 128, 512).calibration_tokens == 0


def test_default_awq_on_a_cpu_is_a_long_run_and_a_gpu_guess_says_so() -> None:
    cpu = estimate("angelslim", AWQ, "cpu", 2 * BILLION, BILLION, 128, 512)
    assert cpu.long_cpu_run("cpu") and cpu.seconds > LONG_RUN_SECONDS
    gpu = estimate("angelslim", AWQ, "cuda", 2 * BILLION, BILLION, 128, 512)
    assert gpu.seconds < cpu.seconds and "rough guess" in gpu.basis and not gpu.long_cpu_run("cuda")
    assert not estimate("ptq", 0.0, "cpu", 2 * BILLION, BILLION, 128, 512).long_cpu_run("cpu")
    assert [duration(s) for s in (42, 720, 9000)] == ["42 s", "12 min", "2.5 h"]


def test_a_long_cpu_run_is_announced_up_front(tiny: str, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    result = cli(
        "quantize",
        tiny,
        "-o",
        tmp_path / "q",
        "--method",
        "int4-awq",
        "--backend",
        "angelslim",
        "--calibration-data",
        SMALL_CALIBRATION["calibration.data"],
        "--num-samples",
        "100000",
        "--dry-run",
        "--log-format",
        "text",
    )
    assert result.code == 0
    assert "int4-awq on the CPU is estimated to take about" in result.err and "data-free method" in result.err
    assert json.loads(result.out)["details"]["estimate"]["calibration_tokens"] == 100000 * 512


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "int8-weight", "--backend", "ptq"],
        [
            "--method",
            "fp8-static",
            "--backend",
            "angelslim",
            "--calibration-data",
            str(SMALL_CALIBRATION["calibration.data"]),
            "--num-samples",
            str(SMALL_CALIBRATION["calibration.num_samples"]),
            "--seq-len",
            str(SMALL_CALIBRATION["calibration.seq_len"]),
        ],
    ],
    ids=["ptq-int8-weight", "angelslim-fp8-static"],
)
def test_estimates_agree_with_real_runs(tiny: str, tmp_path: Path, flags: list[str]) -> None:
    """The estimate is within a factor of 3 of a real run's wall time (a fresh process, as a user
    runs it; the second of two runs, once the architecture's cached answers exist)."""
    command = [sys.executable, "-m", "parquant_cli", "quantize", tiny, "-o", str(tmp_path / "q"), *flags, "--quiet"]
    env = {**os.environ, "PARQUANT_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([*command, "--force"], check=True, capture_output=True, env=env)
    started = time.monotonic()
    done = subprocess.run([*command, "--force"], check=True, capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    predicted = json.loads(done.stdout.strip().splitlines()[-1])["details"]["estimate"]["seconds"]
    print(f"{flags[1]}: estimated {predicted} s, took {wall:.1f} s")
    assert predicted / 3 <= wall <= predicted * 3
