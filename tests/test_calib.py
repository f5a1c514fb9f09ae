"""Calibration data: formats, deterministic packing, cache, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from parquant.errors import InputNotFoundError, InvalidInputError
from parquant.quant.calibration import load_texts, prepare_calibration
from parquant.quant.config import CalibrationConfig

from .conftest import EXAMPLE_MODEL, S3Env


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(EXAMPLE_MODEL)


def test_formats(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    lines = [
        {"text": "plain text"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"input": "question", "output": "answer"},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    texts, digest = load_texts(str(tmp_path / "c.jsonl"), None, tokenizer)
    assert texts[0] == "plain text" and "<|user|>" in texts[1] and texts[2] == "question\nanswer"
    assert len(digest) == 64
    (tmp_path / "c.txt").write_text("first paragraph\n\nsecond one\n")
    assert load_texts(str(tmp_path / "c.txt"), None)[0] == ["first paragraph", "second one"]
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "c.parquet")
    assert load_texts(str(tmp_path / "c.parquet"), None)[0] == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "has no samples"),
        ("garbled.jsonl", b'{"text": "ok"}\n{"text": \n', "line 2 is not valid JSON"),
        ("keys.jsonl", b'{"prompt": "x"}\n', "none of the keys"),
        ("binary.txt", b"\xff\xfe\x00", "not UTF-8"),
        # one bad byte on line 3 of a JSONL file: named as an encoding problem, with its line
        ("latin1.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "caf\xe9"}\n', r"not UTF-8 text \(line 3, byte 41"),
        ("one-line.jsonl", b'{"text": "caf\xe9"}', r"not UTF-8 text \(line 1, byte 13"),
        ("broken.parquet", b"PAR1 not really", "not readable Parquet"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        load_texts(str(tmp_path / name), None)


def test_missing_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="not found"):
        load_texts(str(tmp_path / "nope.jsonl"), None)
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(InvalidInputError, match="no 'text' column"):
        load_texts(str(tmp_path / "c.parquet"), None)


def test_missing_bucket(s3: S3Env) -> None:
    with pytest.raises(InputNotFoundError):
        load_texts("s3://no-such-bucket-parquant/c.jsonl", s3.options)


def test_packing_is_deterministic_long_enough_and_cached(tmp_path: Path, tokenizer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PARQUANT_CACHE_DIR", str(tmp_path / "cache"))
    data = str(EXAMPLE_MODEL.parent / "data" / "calibration.jsonl")
    config = CalibrationConfig(data=data, num_samples=8, seq_len=200, seed=3)
    first = prepare_calibration(config, tokenizer, "tok")
    texts = pq.read_table(first.path).column("text").to_pylist()
    assert first.samples == 8 and all(len(tokenizer(t)["input_ids"]) >= 200 for t in texts)
    again = prepare_calibration(config, tokenizer, "tok")
    assert again.path == first.path
    other_seed = prepare_calibration(CalibrationConfig(data=data, num_samples=8, seq_len=200, seed=4), tokenizer, "tok")
    assert pq.read_table(other_seed.path).column("text").to_pylist() != texts
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(InvalidInputError, match="fewer than one sample"):
        prepare_calibration(CalibrationConfig(data=str(tmp_path / "short.txt"), seq_len=10_000), tokenizer, "tok")
