"""`quantize --compare`: one command, several methods, one report; a failing method is a row."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from parquant.stages.hf_import import import_checkpoint

from ..conftest import EXAMPLE_MODEL, CliResult

EVAL = EXAMPLE_MODEL.parent / "data" / "eval.txt"


def test_compare_writes_models_results_and_report(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "tiny"))
    result = cli(
        "quantize",
        tmp_path / "tiny",
        "-o",
        tmp_path / "cmp",
        "--backend",
        "ptq",
        "--compare",
        "fp8-dynamic,int4-awq",
        "--eval-text",
        EVAL,
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["failed"] == ["int4-awq"] and summary["rows"] == 4
    report = json.loads((tmp_path / "cmp" / "report" / "report.json").read_text())
    rows = {row["label"]: row for row in report["rows"]}
    assert set(rows) == {"reference", "int8-weight", "fp8-dynamic", "int4-awq"}
    assert (
        rows["int4-awq"]["error"].startswith("exit 64")
        and "not offered by the ptq backend" in rows["int4-awq"]["error"]
    )
    assert rows["int8-weight"]["perplexity_ratio"] <= 1.01 and rows["fp8-dynamic"]["logits_cosine"] >= 0.99
    assert rows["int8-weight"]["compression_ratio"] > 1.4
    assert (tmp_path / "cmp" / "fp8-dynamic" / "parquant.json").exists()
    assert (tmp_path / "cmp" / "report" / "report.html").read_text().count("data:image/png;base64,") == 3
    missing = cli("quantize", tmp_path / "tiny", "-o", tmp_path / "x", "--compare", "fp8-dynamic")
    assert missing.code == 64 and "--eval-text" in missing.err


def test_a_typo_in_the_compare_list_is_refused_before_any_work(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    """Was: `fp8-dynamc` ran the other methods for minutes, then became an error row, exit 0."""
    result = cli(
        "quantize",
        EXAMPLE_MODEL,
        "-o",
        tmp_path / "cmp",
        "--compare",
        "int4-rtn,fp8-dynamc",
        "--eval-text",
        EVAL,
    )
    assert result.code == 64 and "'fp8-dynamc', which is no method: did you mean fp8-dynamic?" in result.err
    assert not (tmp_path / "cmp").exists()
