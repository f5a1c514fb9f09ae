"""Third-party console output goes to parquant's debug log, never to the user's screen at info level."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parquant.logs import third_party_output

from .conftest import EXAMPLE_MODEL, CliResult, embedded_model_in

Cli = Callable[..., CliResult]
DATA = EXAMPLE_MODEL.parent / "data"


def test_lines_and_bars_become_debug_records(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    logger = logging.getLogger("parquant")
    monkeypatch.setattr(logger, "handlers", [])  # whatever an earlier CLI run configured
    monkeypatch.setattr(logger, "propagate", True)
    caplog.set_level(logging.DEBUG, logger="parquant")
    with third_party_output("lib"):
        print("ppl is : 16552")
        sys.stderr.write("bar 1/2\rbar 2/2\n")
        print("no newline at the end", end="")
    assert [r.getMessage() for r in caplog.records] == [
        "lib: ppl is : 16552",
        "lib: bar 1/2",
        "lib: bar 2/2",
        "lib: no newline at the end",
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("noise")
    with embedded_model_in(root, "m"):
        yield root


def test_angelslim_and_transformers_chatter_stays_out_of_info_logs(tiny: Path, cli: Cli) -> None:
    flags = ["--method", "fp8-static", "--backend", "angelslim", "--num-samples", "8", "--seq-len", "128"]
    quiet = cli("quantize", tiny / "m", "-o", tiny / "q", *flags, "--calibration-data", DATA / "calibration.jsonl")
    assert quiet.code == 0, quiet.err
    assert "[AngelSlim]" not in quiet.err and "ppl is" not in quiet.err and "it/s" not in quiet.err
    debug = cli(
        "quantize",
        tiny / "m",
        "-o",
        tiny / "q2",
        *flags,
        "--calibration-data",
        DATA / "calibration.jsonl",
        "--log-level",
        "debug",
    )
    assert debug.code == 0 and "angelslim: " in debug.err and "[AngelSlim]" in debug.err
    checked = cli("validate", tiny / "m", tiny / "q", "--eval-text", DATA / "eval.txt", "--max-tokens", "512")
    assert checked.code == 0, checked.err
    assert "Token indices sequence length" not in checked.err and "it/s" not in checked.err
