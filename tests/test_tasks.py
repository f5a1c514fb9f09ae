"""Task accuracy through lm-evaluation-harness on the shipped offline subsets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from parquant.errors import UsageError
from parquant.stages.hf_import import import_checkpoint
from parquant.tasks import DATA, TASKS, parse_tasks

from .conftest import EXAMPLE_MODEL, CliResult


def test_shipped_subsets_are_well_formed() -> None:
    for spec in TASKS.values():
        rows = [json.loads(line) for line in (DATA / spec.data).read_text().splitlines()]
        assert rows, spec.name
        for row in rows:
            assert row["question"]
            if "choices" in row:
                assert 0 <= row["answer"] < len(row["choices"])
    assert len((DATA / "mmlu.jsonl").read_text().splitlines()) == 228
    assert "canary" in (DATA / "general_knowledge.jsonl").read_text()


def test_unknown_task_is_a_usage_error() -> None:
    assert parse_tasks("mmlu, gsm8k") == ["mmlu", "gsm8k"]
    with pytest.raises(UsageError, match="unknown task"):
        parse_tasks("hellaswag")


def test_validate_reports_task_accuracy(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "m"))
    assert cli("quantize", tmp_path / "m", "-o", tmp_path / "q").code == 0
    result = cli(
        "validate",
        tmp_path / "m",
        tmp_path / "q",
        "--eval-text",
        EXAMPLE_MODEL.parent / "data" / "eval.txt",
        "--max-tokens",
        "512",
        "--tasks",
        "mmlu,general_knowledge,gsm8k",
        "--task-limit",
        "12",
        "-o",
        tmp_path / "v.json",
    )
    assert result.code == 0, result.err
    tasks = json.loads((tmp_path / "v.json").read_text())["tasks"]
    assert set(tasks) == {"mmlu", "general_knowledge", "gsm8k"}
    for scores in tasks.values():
        assert 0.0 <= scores["reference"] <= 1.0 and 0.0 <= scores["candidate"] <= 1.0
    # a 3M-parameter model answers MMLU near chance; int8 weights must not change that picture much
    assert abs(tasks["mmlu"]["reference"] - tasks["mmlu"]["candidate"]) <= 0.25
    assert "task mmlu" in result.out
