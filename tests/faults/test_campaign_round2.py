"""The fault campaign, round 2: the ways the features of the second wave could lose data or lie.

Seeded tries of: a writer stopped past its S3 lease while another writer finishes (1); an endpoint
that ignores conditional writes (2); pipeline reruns after an output was deleted or an input
changed in place (3); a damaged HF-folder cache entry (4); manifests whose data_pages point at
another tensor (5); a FIFO in a checkpoint (6); two fan-out workers on one part, and a commit (7).
Each try is classified in the campaign table like round 1's (conftest.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from ..byte_counting_proxy import ByteCountingProxy
from .conftest import Campaign, S3Server, exported_equals_source, finish, has_traceback, parquant, start

pytestmark = pytest.mark.faults
FLAGS = ("--shard-size", "1MiB", "--chunk-size", "256KiB")
REPO = Path(__file__).resolve().parents[2]


def _checkpoint(folder: Path, seed: int, tensors: int = 12) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weights = {
        f"model.layers.{i:02d}.mlp.up_proj.weight": rng.standard_normal((512, 512), dtype=np.float32)
        for i in range(tensors)
    }
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("round2")
    return _checkpoint(root / "a", 1), _checkpoint(root / "b", 2)


def _s3(server: S3Server, *extra: str) -> tuple[str, ...]:
    return ("--storage-option", f"endpoint_url={server.endpoint}", *extra)


def _judge(campaign: Campaign, scenario: str, runs: list[Any], ok: bool, note: str) -> str:
    if any(r.code is None for r in runs):
        return campaign.record(scenario, "hung", note)
    if any(has_traceback(r) for r in runs):
        return campaign.record(scenario, "traceback", " | ".join(r.err[-300:] for r in runs))
    return campaign.record(scenario, "recovered" if ok else "corrupt", note)


# -- 1. a writer stopped past its lease ----------------------------------------------------------
def test_a_writer_stopped_past_its_lease_never_touches_the_next_writers_model(
    sources: tuple[Path, Path], tmp_path: Path, campaign: Campaign, rng: random.Random, s3_server: S3Server
) -> None:
    scenario = "stopped past its S3 lease"
    lease = {"PARQUANT_LOCK_LEASE_SECONDS": "2"}
    outcomes = []
    for attempt in range(3):
        output = f"s3://faults/lease{attempt}-{rng.random()}"
        first = start("import", sources[0], "-o", output, *FLAGS, *_s3(s3_server), env=lease)
        time.sleep(rng.uniform(0.8, 1.6))
        if first.poll() is not None:  # it finished before it could be stopped: nothing to judge
            continue
        first.send_signal(signal.SIGSTOP)
        time.sleep(3.5)  # past the lease, by the server's clock
        second = parquant("import", sources[1], "-o", output, *FLAGS, *_s3(s3_server), env=lease)
        first.send_signal(signal.SIGCONT)
        stale = finish(first, 120)
        rerun = parquant("import", sources[1], "-o", output, *FLAGS, *_s3(s3_server), env=lease)
        intact = exported_equals_source(output, sources[1], tmp_path / "check", _s3(s3_server))
        # the stale writer stops with 75 (it lost its lock), 74 (its own upload was aborted by the
        # other writer's cleanup) or, stopped before its lock or its first check of the output, 73
        # (the output now holds the other writer's model): never 0, never a write into that model
        ok = second.code == 0 and stale.code in (73, 74, 75) and rerun.code == 0 and "skipping" in rerun.err
        ok = ok and intact
        note = f"second {second.code}, stale {stale.code}, rerun {rerun.code}, intact {intact}: {stale.err[-200:]}"
        outcomes.append(_judge(campaign, scenario, [second, stale, rerun], ok, note))
    assert outcomes and set(outcomes) == {"recovered"}, campaign.notes


# -- 2. an endpoint that ignores conditional writes -----------------------------------------------
_CONDITIONS = re.compile(rb"\r\nIf-(?:None-)?Match:[^\r]*", re.IGNORECASE)


def _condition_stripper(upstream_port: int) -> ByteCountingProxy:
    """A loopback forwarder to the S3 server that drops If-None-Match / If-Match from every request,
    as some gateways do: the server then never refuses a conditional write."""
    return ByteCountingProxy(("127.0.0.1", upstream_port), rewrite=lambda data: _CONDITIONS.sub(b"", data))


def test_an_endpoint_that_ignores_conditions_is_refused_before_anything_is_written(
    sources: tuple[Path, Path], tmp_path: Path, campaign: Campaign, rng: random.Random, s3_server: S3Server
) -> None:
    scenario = "endpoint ignores conditions"
    stripper = _condition_stripper(s3_server.port)
    options = ("--storage-option", f"endpoint_url=http://127.0.0.1:{stripper.port}")
    outcomes = []
    try:
        for attempt in range(2):
            key = f"ignored{attempt}-{rng.random()}"
            first = start("import", sources[0], "-o", f"s3://faults/{key}", *FLAGS, *options)
            time.sleep(rng.uniform(0.0, 0.5))
            second = start("import", sources[1], "-o", f"s3://faults/{key}", *FLAGS, *options)
            runs = [finish(first, 120), finish(second, 120)]
            written = [k for k in s3_server.keys(key) if not k.endswith("parquant-lock")]
            ok = [r.code for r in runs] == [69, 69] and not written and "unsafe_single_writer" in runs[0].err
            outcomes.append(_judge(campaign, scenario, runs, ok, f"codes {[r.code for r in runs]}, wrote {written}"))
        opted = parquant(
            "import",
            sources[0],
            "-o",
            "s3://faults/opted",
            *FLAGS,
            *options,
            "--storage-option",
            "unsafe_single_writer=true",
        )
        ok = opted.code == 0 and exported_equals_source(
            "s3://faults/opted", sources[0], tmp_path / "check", _s3(s3_server)
        )
        outcomes.append(_judge(campaign, scenario, [opted], ok, f"opted in: {opted.code} {opted.err[-200:]}"))
    finally:
        stripper.close()
    assert set(outcomes) == {"recovered"}, campaign.notes


# -- 3. pipeline reruns -----------------------------------------------------------------------------
def test_a_pipeline_rerun_redoes_what_changed(
    sources: tuple[Path, Path], tmp_path: Path, campaign: Campaign, rng: random.Random
) -> None:
    scenario = "pipeline rerun after a change"
    outcomes = []
    for attempt in range(3):
        work = tmp_path / f"p{attempt}"
        source = work / "hf"
        shutil.copytree(sources[0], source)
        spec = work / "p.yaml"
        stages = [
            {"stage": "import", "source": str(source), "output": str(work / "m"), "shard_size": "1MiB"},
            {
                "stage": "quantize",
                "model": str(work / "m"),
                "output": str(work / "q"),
                "method": "fp8-block",
                "shard_size": "1MiB",
            },
        ]
        spec.write_text(json.dumps({"name": f"p{attempt}", "stages": stages}))
        state = ("--state-dir", work / "state")
        first = parquant("pipeline", spec, *state)
        change = rng.choice(["delete output", "delete a shard", "edit input"])
        if change == "delete output":
            shutil.rmtree(work / "q")
        elif change == "delete a shard":
            rng.choice(sorted((work / "q").glob("*.parquet"))).unlink()
        else:
            (source / "config.json").write_text('{"model_type": "llama", "edited": true}')
        rerun = parquant("pipeline", spec, *state)
        if change == "edit input":
            ok = rerun.code == 73 and "01-import ran before, but its input" in rerun.err
        else:
            ok = rerun.code == 0 and "02-quantize ran before, but" in rerun.err and _model_reads(work / "q")
        note = f"{change}: first {first.code}, rerun {rerun.code}: {rerun.err[-300:]}"
        outcomes.append(_judge(campaign, scenario, [first, rerun], ok and first.code == 0, note))
    assert set(outcomes) == {"recovered"}, campaign.notes


def _model_reads(model: Path) -> bool:
    return parquant("export", model, "-o", model.parent / "check-export").code == 0


# -- 4. the HF-folder cache ---------------------------------------------------------------------------
def test_a_damaged_cache_entry_is_rebuilt(tmp_path: Path, campaign: Campaign, rng: random.Random) -> None:
    scenario = "damaged HF-folder cache entry"
    env = {"PARQUANT_CACHE_DIR": str(tmp_path / "cache")}
    model = tmp_path / "m"
    assert parquant("import", REPO / "examples" / "tiny-llama", "-o", model).code == 0
    assert parquant("quantize", model, "-o", tmp_path / "q").code == 0
    args = (
        "validate",
        model,
        tmp_path / "q",
        "--eval-text",
        REPO / "examples" / "data" / "eval.txt",
        "--seq-len",
        "64",
        "--max-tokens",
        "256",
        "-o",
    )
    clean = parquant(*args, tmp_path / "clean.json", env=env)
    expected = json.loads((tmp_path / "clean.json").read_text())
    outcomes = []
    for attempt in range(2):
        entries = [p for p in (tmp_path / "cache" / "hf").iterdir() if p.is_dir() and not p.name.startswith(".")]
        weights = rng.choice(entries) / "model.safetensors"
        data = bytearray(weights.read_bytes())
        if rng.random() < 0.5:
            data[rng.randrange(1024, len(data))] ^= 1 << rng.randrange(8)
            weights.write_bytes(bytes(data))
        else:
            (weights.parent / "tokenizer.json").unlink()
        run = parquant(*args, tmp_path / f"try{attempt}.json", env=env)
        got = json.loads((tmp_path / f"try{attempt}.json").read_text()) if run.code == 0 else {}
        same = all(got.get(k) == expected[k] for k in ("logits_cosine_mean", "perplexity_reference", "kl_divergence"))
        ok = clean.code == 0 and run.code == 0 and same and "rebuilding it" in run.err
        outcomes.append(_judge(campaign, scenario, [run], ok, f"exit {run.code}, same {same}: {run.err[-300:]}"))
    assert set(outcomes) == {"recovered"}, campaign.notes


# -- 5. data_pages pointed elsewhere --------------------------------------------------------------------
def test_data_pages_pointed_at_another_tensor_never_return_it(
    sources: tuple[Path, Path], tmp_path: Path, campaign: Campaign, rng: random.Random
) -> None:
    scenario = "data_pages point elsewhere"
    model = tmp_path / "m"
    assert parquant("import", sources[0], "-o", model, *FLAGS).code == 0
    pristine = (model / "parquant.json").read_text()
    outcomes = []
    for attempt in range(4):
        manifest = json.loads(pristine)
        names = sorted(manifest["tensors"])
        victim, donor = rng.sample(names, 2)
        keys = rng.choice([("data_pages",), ("data_pages", "crc32c"), ("data_pages", "crc32c", "row_groups", "shard")])
        for key in keys:
            manifest["tensors"][victim][key] = manifest["tensors"][donor][key]
        (model / "parquant.json").write_text(json.dumps(manifest))
        work = tmp_path / f"export{attempt}"
        run = parquant("export", model, "-o", work)
        if run.code == 0:
            ok = (work / "model.safetensors").read_bytes() == (sources[0] / "model.safetensors").read_bytes()
        else:
            ok = run.code == 65 and victim in run.err
        outcomes.append(_judge(campaign, scenario, [run], ok, f"{keys}: exit {run.code}: {run.err[-200:]}"))
    (model / "parquant.json").write_text(pristine)
    assert set(outcomes) == {"recovered"}, campaign.notes


# -- 6. a FIFO in the checkpoint ----------------------------------------------------------------------------
def test_a_fifo_in_a_checkpoint_is_refused_not_waited_on(
    sources: tuple[Path, Path], tmp_path: Path, campaign: Campaign, rng: random.Random
) -> None:
    scenario = "FIFO in a checkpoint"
    folder = tmp_path / "hf"
    shutil.copytree(sources[0], folder)
    os.mkfifo(folder / rng.choice(["tokenizer.json", "notes.txt", "sub-README"]))
    run = parquant("import", folder, "-o", tmp_path / "m", timeout=30)
    ok = run.code == 65 and "not a regular file" in run.err and not (tmp_path / "m").exists()
    outcome = _judge(campaign, scenario, [run], ok, f"exit {run.code}: {run.err[-200:]}")
    assert outcome == "recovered", campaign.notes


# -- 7. two workers on one part -----------------------------------------------------------------------------
def test_two_workers_on_one_part_then_the_commit(
    sources: tuple[Path, Path], tmp_path: Path, campaign: Campaign, rng: random.Random
) -> None:
    scenario = "two workers on one part"
    model = tmp_path / "m"
    assert parquant("import", sources[0], "-o", model, *FLAGS).code == 0
    quantize = ("quantize", model, "--method", "fp8-block", *FLAGS)
    assert parquant(*quantize, "-o", tmp_path / "single").code == 0
    outcomes = []
    for attempt in range(3):
        out = tmp_path / f"fanned{attempt}"
        part = ("--shard-count", "2")
        one = start(*quantize, "-o", out, *part, "--shard-index", "0")
        time.sleep(rng.uniform(0.0, 1.0))
        two = start(*quantize, "-o", out, *part, "--shard-index", "0")
        other = start(*quantize, "-o", out, *part, "--shard-index", "1")
        runs = [finish(one, 120), finish(two, 120), finish(other, 120)]
        commit = parquant(*quantize, "-o", out)
        equal = commit.code == 0 and all(
            (out / p.name).read_bytes() == p.read_bytes() for p in (tmp_path / "single").glob("*.parquet")
        )
        codes = sorted(r.code or 0 for r in runs[:2])
        ok = codes in ([0, 0], [0, 75]) and runs[2].code == 0 and equal
        outcomes.append(_judge(campaign, scenario, [*runs, commit], ok, f"workers {codes}, commit {commit.code}"))
    assert set(outcomes) == {"recovered"}, campaign.notes
