"""Calibration data: load (jsonl, txt, parquet; local or S3), sample, pack, cache.

Accepted records: jsonl lines with `text`, `messages` (role/content, rendered with the model's chat
template), or `input` + `output`; plain text (paragraphs split at blank lines); Parquet with a
`text` column. Samples are drawn deterministically (seed) and packed so each one holds at least
`seq_len` tokens: AngelSlim calibrates without an attention mask, so short samples would be padded
and skew activation statistics. The result is a Parquet file with a `text` column (what
AngelSlim's TextDataset reads), cached by content hash + tokenizer + parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..cache import cache_dir
from ..errors import InputNotFoundError, InvalidInputError
from ..fs import resolve
from .config import CalibrationConfig


@dataclass(frozen=True)
class CalibrationSet:
    path: Path  # local Parquet file with a `text` column
    samples: int
    tokens_per_sample: int
    source_sha256: str


# Bounds on calibration input: far above any real calibration set (128 x 2048 tokens is ~1 MB of
# text), far below what would exhaust memory when tokenized.
MAX_CALIBRATION_BYTES = 1024 * 2**20
MAX_SAMPLE_CHARS = 4 * 2**20


def load_texts(
    url: str, storage_options: Mapping[str, str] | None, tokenizer: Any | None = None
) -> tuple[list[str], str]:
    """The calibration records as plain texts, and the SHA-256 of the raw file."""
    location = resolve(url, storage_options)
    if not location.exists():
        raise InputNotFoundError(f"calibration data {url} not found: check --calibration-data")
    size = location.size()
    if size > MAX_CALIBRATION_BYTES:
        raise InvalidInputError(
            f"calibration data {url} is {size / 1e6:.0f} MB, more than the {MAX_CALIBRATION_BYTES // 2**20} MiB "
            "parquant reads: calibration needs a few hundred samples, pass a sample of the data set"
        )
    raw = location.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    name = location.path.lower()
    if name.endswith(".parquet"):
        texts = _parquet_texts(raw, url)
    elif name.endswith((".jsonl", ".json")):
        texts = _jsonl_texts(raw, url, tokenizer)
    else:
        texts = _plain_texts(raw, url)
    for number, text in enumerate(texts, 1):
        if len(text) > MAX_SAMPLE_CHARS:
            raise InvalidInputError(
                f"calibration data {url}: sample {number} has {len(text)} characters, more than the "
                f"{MAX_SAMPLE_CHARS} a sample may have (a calibration sample is a few thousand tokens): split it"
            )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InvalidInputError(f"calibration data {url} has no samples: it is empty")
    return texts, digest


def _utf8(raw: bytes, url: str) -> str:
    """The file as text; one that is not UTF-8 is refused naming the line and byte, however many
    lines it has (a single bad byte once turned into a replacement character, or 'not valid JSON')."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InvalidInputError(
            f"calibration data {url} is not UTF-8 text (line {line}, byte {exc.start}: {exc.reason}): "
            "save it as UTF-8 (.jsonl, .txt) or use .parquet"
        ) from None


def _plain_texts(raw: bytes, url: str) -> list[str]:
    return [p.strip() for p in _utf8(raw, url).split("\n\n")]


def _parquet_texts(raw: bytes, url: str) -> list[str]:
    try:
        table = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"calibration data {url} is not readable Parquet ({exc})") from None
    if "text" not in table.column_names:
        raise InvalidInputError(f"calibration data {url} has no 'text' column (columns: {table.column_names})")
    return [str(t) for t in table.column("text").to_pylist() if t]


def _jsonl_texts(raw: bytes, url: str, tokenizer: Any | None) -> list[str]:
    texts = []
    for number, line in enumerate(_utf8(raw, url).splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_SAMPLE_CHARS:
            raise InvalidInputError(
                f"calibration data {url} line {number} has {len(line)} characters, more than the "
                f"{MAX_SAMPLE_CHARS} a sample may have: split it into several records"
            )
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise InvalidInputError(f"calibration data {url} line {number} is not valid JSON") from None
        texts.append(_record_text(record, url, number, tokenizer))
    return texts


def _record_text(record: Any, url: str, number: int, tokenizer: Any | None) -> str:
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return str(record["text"])
        if isinstance(record.get("messages"), list):
            messages = record["messages"]
            if tokenizer is not None and getattr(tokenizer, "chat_template", None):
                return str(tokenizer.apply_chat_template(messages, tokenize=False))
            return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages if isinstance(m, dict))
        if isinstance(record.get("input"), str) and isinstance(record.get("output"), str):
            return f"{record['input']}\n{record['output']}"
    raise InvalidInputError(f"calibration data {url} line {number} has none of the keys text, messages, input+output")


def prepare_calibration(
    config: CalibrationConfig, tokenizer: Any, tokenizer_id: str, storage_options: Mapping[str, str] | None = None
) -> CalibrationSet:
    """Sample, pack and cache calibration texts for this tokenizer and these parameters."""
    assert config.data is not None
    texts, digest = load_texts(config.data, storage_options, tokenizer)
    key = hashlib.sha256(
        json.dumps([digest, tokenizer_id, config.num_samples, config.seq_len, config.seed]).encode()
    ).hexdigest()[:32]
    path = cache_dir() / "calibration" / f"{key}.parquet"
    if path.exists():
        samples = pq.read_metadata(path).num_rows
        return CalibrationSet(path, samples, config.seq_len, digest)
    packed = _pack(texts, tokenizer, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    pq.write_table(pa.table({"text": packed}), partial)
    partial.replace(path)
    return CalibrationSet(path, len(packed), config.seq_len, digest)


def _pack(texts: list[str], tokenizer: Any, config: CalibrationConfig) -> list[str]:
    """Shuffle with the seed, then join texts until each sample has >= seq_len tokens."""
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    samples: list[str] = []
    current: list[str] = []
    tokens = 0
    total_tokens = 0
    for index in order * 8:  # reuse texts when the file is small
        current.append(texts[index])
        count = len(tokenizer(texts[index])["input_ids"])
        tokens += count
        total_tokens += count
        if tokens >= config.seq_len:
            samples.append("\n\n".join(current))
            current, tokens = [], 0
            if len(samples) == config.num_samples:
                break
    if not samples:
        raise InvalidInputError(
            f"calibration data {config.data} holds {total_tokens} tokens, fewer than one sample of "
            f"--seq-len {config.seq_len}: give more text or a smaller --seq-len"
        )
    return samples
