"""Property-based fuzzing of what users and attackers hand parquant: manifests, safetensors headers,
pipeline specs, calibration files. Property: a documented exit code (never 70), no traceback, and
nothing written outside the output."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from parquant.errors import EXIT_CODES, ParquantError
from parquant_cli.main import main

from ..conftest import make_checkpoint
from .conftest import SEED, Campaign, snapshot

pytestmark = pytest.mark.faults
EXAMPLES = 120
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _cli(*args: object) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args] + ["--log-format", "text", "--quiet"])
    return code, err.getvalue()


def _judge(campaign: Campaign, scenario: str, code: int, err: str, escaped: set[str]) -> None:
    if escaped:
        outcome = campaign.record(scenario, "escape", str(sorted(escaped))[:300])
    elif code == 70 or code not in EXIT_CODES or "Traceback" in err:
        outcome = campaign.record(scenario, "traceback", f"exit {code}: {err[-300:]}")
    else:
        outcome = campaign.record(scenario, "recovered")
    assert outcome == "recovered", campaign.notes[-1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("fuzz-model")
    assert main(["import", str(make_checkpoint(root / "hf")), "-o", str(root / "pq"), "--quiet"]) == 0
    yield root / "pq", json.loads((root / "pq" / "parquant.json").read_text())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            found += _paths(child, (*prefix, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@seed(SEED)
@FUZZ
@given(data=st.data())
def test_fuzzed_manifest(
    data: st.DataObject, model: tuple[Path, dict[str, Any]], tmp_path: Path, campaign: Campaign
) -> None:
    folder, manifest = model
    path = data.draw(st.sampled_from(_paths(manifest)))
    damaged = _replace(manifest, path, data.draw(JSON))
    work = _fresh(tmp_path / "case")
    for shard in folder.glob("*.parquet"):
        (work / shard.name).symlink_to(shard)
    (work / "parquant.json").write_text(json.dumps(damaged))
    before = snapshot(tmp_path, (work / "out",))
    code, err = _cli("export", work, "-o", work / "out")
    _judge(campaign, "fuzz: manifest", code, err, snapshot(tmp_path, (work / "out",)) - before)


@seed(SEED)
@FUZZ
@given(header=st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)), extra=st.integers(0, 64))
def test_fuzzed_safetensors_header(header: bytes, extra: int, tmp_path: Path, campaign: Campaign) -> None:
    work = _fresh(tmp_path / "case")
    source = work / "hf"
    source.mkdir()
    (source / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\1" * extra)
    (source / "config.json").write_text("{}")
    before = snapshot(tmp_path, (work / "pq", work / ".pq.parquant-partial"))
    code, err = _cli("import", source, "-o", work / "pq")
    after = snapshot(tmp_path, (work / "pq", work / ".pq.parquant-partial"))
    _judge(campaign, "fuzz: safetensors header", code, err, after - before)


PIPELINE_VALUES = st.one_of(JSON, st.sampled_from(["import", "export", "quantize", "inspect", "../x", "s3://b/k"]))


@seed(SEED)
@FUZZ
@given(
    spec=st.one_of(
        st.text(max_size=200),
        st.fixed_dictionaries(
            {
                "stages": st.lists(
                    st.dictionaries(
                        st.sampled_from(["stage", "model", "output", "method", "x"]), PIPELINE_VALUES, max_size=4
                    ),
                    max_size=3,
                )
            },
            optional={"name": PIPELINE_VALUES, "storage_options": PIPELINE_VALUES},
        ).map(json.dumps),
    )
)
def test_fuzzed_pipeline_spec(spec: str, tmp_path: Path, campaign: Campaign) -> None:
    work = _fresh(tmp_path / "case")
    (work / "spec.yaml").write_text(spec)
    before = snapshot(tmp_path)
    code, err = _cli("pipeline", work / "spec.yaml", "--dry-run")
    _judge(campaign, "fuzz: pipeline spec", code, err, snapshot(tmp_path) - before)


@seed(SEED)
@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.lists(JSON.map(json.dumps), max_size=5).map(lambda lines: "\n".join(lines).encode()),
    ),
    suffix=st.sampled_from([".jsonl", ".txt", ".parquet", ".json"]),
)
def test_fuzzed_calibration_file(content: bytes, suffix: str, tmp_path: Path, campaign: Campaign) -> None:
    from parquant.quant.calibration import load_texts

    work = _fresh(tmp_path / "case")
    data = work / f"calibration{suffix}"
    data.write_bytes(content)
    before = snapshot(tmp_path)
    code, err = 0, ""
    try:
        load_texts(str(data), None)
    except ParquantError as exc:
        code, err = exc.exit_code, exc.message
    except Exception as exc:  # anything else would reach the user as "internal error"
        code, err = 70, f"Traceback: {type(exc).__name__}: {exc}"
    _judge(campaign, "fuzz: calibration file", code, err, snapshot(tmp_path) - before)


def test_campaign_has_run_every_fuzz_target(campaign: Campaign) -> None:
    fuzz = {k: v for k, v in campaign.tries.items() if k.startswith("fuzz:")}
    assert len(fuzz) == 4 and all(sum(v.values()) >= 50 for v in fuzz.values()), fuzz
