"""Pipelines: spec validation, argv rendering, local execution, resume, failure stops the run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from parquant.errors import ConfigError
from parquant.pipeline import LocalExecutor, PipelineSpec, StageSpec

from .conftest import EXAMPLE_MODEL, REPO, CliResult

Cli = Callable[..., CliResult]


def test_argv_rendering() -> None:
    spec = StageSpec(
        "q",
        "quantize",
        {
            "model": "in",
            "output": "out",
            "method": "fp8-static",
            "force": True,
            "quiet": False,
            "ignore": ["lm_head", "*.gate"],
        },
    )
    assert spec.argv() == [
        "quantize",
        "in",
        "--output",
        "out",
        "--method",
        "fp8-static",
        "--force",
        "--ignore",
        "lm_head",
        "*.gate",
    ]
    assert StageSpec("r", "report", {"results": ["a.json", "b.json"], "output": "r"}).argv()[:3] == [
        "report",
        "a.json",
        "b.json",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "non-empty 'stages:'"),
        ({"stages": [{"stage": "frobnicate"}]}, "needs 'stage:'"),
        ({"stages": [{"stage": "import", "output": "x"}]}, "lacks source"),
        (
            {
                "stages": [
                    {"stage": "inspect", "model": "m", "name": "a"},
                    {"stage": "inspect", "model": "m", "name": "a"},
                ]
            },
            "two stages are named",
        ),
        ({"stages": [{"stage": "inspect", "model": "m"}], "executor": "k8s"}, "unknown key"),
        # a typo in a stage's option fails the spec at load, before any stage runs, naming the known ones
        ({"stages": [{"stage": "quantize", "model": "m", "output": "o", "metod": "x"}]}, "unknown key 'metod'.*method"),
        ({"stages": [{"stage": "inspect", "model": "m", "fan_out": 2}]}, "on import and quantize stages only"),
        # AngelSlim methods run on a GPU pod and cannot fan out
        (
            {"stages": [{"stage": "quantize", "model": "m", "output": "o", "method": "fp8-dynamic", "fan_out": 2}]},
            "fan_out splits the built-in PTQ over CPU pods",
        ),
        ({"stages": [{"stage": "import", "source": "s", "output": "o", "fan_out": 0}]}, "whole number >= 1"),
        ({"stages": [{"stage": "import", "source": "s", "output": "o", "fan_out": 2, "force": True}]}, "with force"),
    ],
)
def test_bad_specs(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PipelineSpec.from_dict(raw, "spec.yaml")


@pytest.mark.parametrize(
    ("params", "gpu"),
    [
        ({}, False),  # int8-weight, the default: built-in PTQ only
        ({"method": "fp8-static"}, True),
        ({"method": "fp8-dynamic", "backend": "ptq"}, False),
        ({"method": "int4-rtn"}, False),
        ({"method": "int4-awq", "gpu": False}, False),  # the entry decides
    ],
)
def test_quantize_stages_run_on_a_gpu_only_where_a_gpu_backend_offers_the_method(
    params: dict[str, object], gpu: bool
) -> None:
    spec = PipelineSpec.from_dict({"stages": [{"stage": "quantize", "model": "m", "output": "o", **params}]}, "s")
    assert spec.stages[0].gpu is gpu


def test_fan_out_is_part_of_the_stage_identity_not_its_argv() -> None:
    entry = {"stage": "import", "source": "s3://b/hf", "output": "s3://b/pq"}
    plain = PipelineSpec.from_dict({"stages": [entry]}, "p.yaml").stages[0]
    fanned = PipelineSpec.from_dict({"stages": [{**entry, "fan_out": 4}]}, "p.yaml").stages[0]
    assert fanned.fan_out == 4 and fanned.argv() == plain.argv() and fanned.digest() != plain.digest()


def test_local_pipeline_runs_resumes_and_stops_on_failure(tmp_path: Path, cli: Cli) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "t",
                "stages": [
                    {"stage": "import", "source": str(EXAMPLE_MODEL), "output": str(tmp_path / "m")},
                    {"stage": "quantize", "model": str(tmp_path / "m"), "output": str(tmp_path / "q")},
                    {"stage": "inspect", "model": str(tmp_path / "q")},
                ],
            }
        )
    )
    state = ["--state-dir", tmp_path / "state"]
    dry = cli("pipeline", spec, "--dry-run", *state)
    # int8-weight (the default) is a built-in PTQ method: a CPU stage
    assert dry.code == 0 and "2. 02-quantize [cpu]: parquant quantize" in dry.out
    first = cli("pipeline", spec, *state)
    assert first.code == 0, first.err
    statuses = [s["status"] for s in json.loads(first.out.strip().splitlines()[-1])["stages"]]
    assert statuses == ["done", "done", "done"]
    again = cli("pipeline", spec, *state)
    assert [s["status"] for s in json.loads(again.out.strip().splitlines()[-1])["stages"]] == ["skipped"] * 3
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        json.dumps(
            {
                "name": "b",
                "stages": [
                    {"stage": "inspect", "model": str(tmp_path / "q")},
                    {"stage": "quantize", "model": str(tmp_path / "q"), "output": str(tmp_path / "twice")},
                    {"stage": "inspect", "model": str(tmp_path / "twice")},
                ],
            }
        )
    )
    failed = cli("pipeline", broken, *state)
    assert failed.code == 65  # the failing stage's own exit code: re-quantizing is refused
    stages = json.loads(failed.out.strip().splitlines()[-1])["stages"]
    assert [s["status"] for s in stages] == ["done", "failed"]


def test_executor_uses_the_given_stage_runner(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    spec = PipelineSpec.from_dict(
        {
            "name": "x",
            "storage_options": {"endpoint_url": "http://127.0.0.1:1"},
            "stages": [{"stage": "inspect", "model": "m"}],
        },
        str(tmp_path / "x.yaml"),
    )
    outcomes = LocalExecutor(lambda argv: calls.append(argv) or 0, str(tmp_path)).run(spec)
    assert outcomes[0].status == "done"
    assert calls == [["inspect", "m", "--storage-option", "endpoint_url=http://127.0.0.1:1"]]


def test_kubernetes_dry_run_outside_a_cluster_uses_the_checkouts_templates(cli: Callable[..., CliResult]) -> None:
    result = cli("pipeline", REPO / "examples" / "pipelines" / "demo.yaml", "--executor", "kubernetes", "--dry-run")
    assert result.code == 0, result.err
    assert "using the checkout's Job template" in result.err
    assert result.out.count("kind: Job") >= 5


def test_pipeline_force_redoes_outputs_an_older_run_made_differently(tmp_path: Path, cli: Cli) -> None:
    """An upgrade that changes a default (e.g. the ignore list) makes a stage's earlier output other
    work: a plain rerun refuses it (73), `pipeline --force` redoes it with the stage's own --force."""
    assert cli("import", EXAMPLE_MODEL, "-o", tmp_path / "m").code == 0
    assert cli("quantize", tmp_path / "m", "-o", tmp_path / "q", "--ignore", "lm_head").code == 0
    spec = tmp_path / "p.yaml"
    stage = {"stage": "quantize", "model": str(tmp_path / "m"), "output": str(tmp_path / "q")}
    spec.write_text(json.dumps({"name": "f", "stages": [stage]}))
    state = ["--state-dir", tmp_path / "state"]
    assert cli("pipeline", spec, *state).code == 73
    forced = cli("pipeline", spec, *state, "--force")
    assert forced.code == 0, forced.err
    assert "parquant quantize" in forced.err and "--force" in forced.err
    config = json.loads((tmp_path / "q" / "parquant.json").read_text())["created_by"]["config"]
    assert config["ignore"] == ["lm_head", "*.gate", "*.router"]


def _statuses(result: CliResult) -> list[str]:
    return [s["status"] for s in json.loads(result.out.strip().splitlines()[-1])["stages"]]


def test_a_rerun_skips_a_stage_only_while_its_inputs_and_output_are_unchanged(tmp_path: Path, cli: Cli) -> None:
    """The state file alone used to decide: a deleted output or an input changed in place was
    still 'already done', exit 0."""
    import shutil

    source = tmp_path / "hf"
    shutil.copytree(EXAMPLE_MODEL, source)
    spec = tmp_path / "p.yaml"
    stages = [
        {"stage": "import", "source": str(source), "output": str(tmp_path / "m")},
        {"stage": "quantize", "model": str(tmp_path / "m"), "output": str(tmp_path / "q")},
    ]
    spec.write_text(json.dumps({"name": "w", "stages": stages}))
    state = ["--state-dir", tmp_path / "state"]
    assert _statuses(cli("pipeline", spec, *state)) == ["done", "done"]
    assert _statuses(cli("pipeline", spec, *state)) == ["skipped", "skipped"]

    shutil.rmtree(tmp_path / "q")  # an output deleted: that stage runs again, and only that one
    again = cli("pipeline", spec, *state)
    assert again.code == 0 and _statuses(again) == ["skipped", "done"], again.err
    assert "02-quantize ran before, but its output is missing" in again.err
    assert (tmp_path / "q" / "parquant.json").is_file()

    shard = next((tmp_path / "q").glob("*.parquet"))  # a shard the manifest names removed
    shard.unlink()
    damaged = cli("pipeline", spec, *state)
    assert _statuses(damaged) == ["skipped", "done"] and "its output changed or no longer verifies" in damaged.err
    assert f"but shard {shard.name} is missing: doing it again" in damaged.err  # the stage's own rule
    assert shard.is_file()

    config = source / "config.json"  # the input changed in place: import runs again and says why
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" ', 1))
    changed = cli("pipeline", spec, *state)
    assert "01-import ran before, but its input" in changed.err
    assert changed.code == 73 and _statuses(changed) == ["failed"]  # output made from other input: not overwritten
    assert _statuses(cli("pipeline", spec, *state, "--force")) == ["done", "done"]
    assert _statuses(cli("pipeline", spec, *state)) == ["skipped", "skipped"]


def test_a_recipe_file_edited_in_place_is_a_changed_input(tmp_path: Path, cli: Cli) -> None:
    """The recipe is what a quantize stage reads besides its model: editing it reruns the stage (which
    then refuses to overwrite the first recipe's model, 73), never a skip over a stale model."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("groups:\n  - {targets: [Linear], scheme: FP8_DYNAMIC}\n")
    spec = tmp_path / "p.yaml"
    stages = [
        {"stage": "import", "source": str(EXAMPLE_MODEL), "output": str(tmp_path / "m")},
        {"stage": "quantize", "model": str(tmp_path / "m"), "output": str(tmp_path / "q"), "recipe": str(recipe)},
    ]
    spec.write_text(json.dumps({"name": "r", "stages": stages}))
    state = ["--state-dir", tmp_path / "state"]
    assert _statuses(cli("pipeline", spec, *state)) == ["done", "done"]
    assert _statuses(cli("pipeline", spec, *state)) == ["skipped", "skipped"]
    recipe.write_text("groups:\n  - {targets: [Linear], scheme: FP8_BLOCK}\n")
    edited = cli("pipeline", spec, *state)
    assert "02-quantize ran before, but its input" in edited.err
    assert edited.code == 73 and _statuses(edited) == ["skipped", "failed"]


# -- a graph of stages ------------------------------------------------------------------------------


def _graph(tmp_path: Path, stages: list[dict[str, object]]) -> PipelineSpec:
    return PipelineSpec.from_dict({"name": "g", "stages": stages}, str(tmp_path / "g.yaml"))


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"stage": "inspect", "model": "m", "after": ["nope"]}], "after names nope, not another stage"),
        ([{"stage": "inspect", "model": "m", "name": "a", "after": ["a"]}], "after names a, not another stage"),
        (
            [
                {"stage": "inspect", "model": "m", "name": "a", "after": ["b"]},
                {"stage": "inspect", "model": "m", "name": "b", "after": ["a"]},
            ],
            r"form a cycle \(a -> b -> a\)",
        ),
        ([{"stage": "inspect", "model": "m", "after": "a"}], "after must be a list of stage names"),
    ],
)
def test_a_graph_with_unknown_names_or_a_cycle_is_refused(
    tmp_path: Path, stages: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _graph(tmp_path, stages)


def _inspect(name: str, after: list[str] | None = None) -> dict[str, object]:
    entry: dict[str, object] = {"stage": "inspect", "model": name, "name": name}
    return entry if after is None else {**entry, "after": after}


def test_a_failure_stops_its_dependents_and_nothing_else(tmp_path: Path) -> None:
    from parquant.pipeline import StageOutcome, run_graph

    spec = _graph(
        tmp_path,
        [_inspect("a"), _inspect("b"), _inspect("c", []), _inspect("d", ["c"]), _inspect("e", ["b", "d"])],
    )
    ran: list[str] = []

    def run_one(stage: StageSpec) -> StageOutcome:
        ran.append(stage.name)
        return StageOutcome(stage.name, "failed" if stage.name == "b" else "done", 65 if stage.name == "b" else 0, 0)

    outcomes = run_graph(spec, run_one)
    assert ran == ["a", "b", "c", "d"]  # e runs after b, which failed; c and d do not depend on it
    assert [(o.name, o.status) for o in outcomes] == [("a", "done"), ("b", "failed"), ("c", "done"), ("d", "done")]


def test_independent_stages_run_at_the_same_time(tmp_path: Path) -> None:
    """Three stages that wait for each other at a barrier: they finish only if they run at once."""
    import threading

    from parquant.pipeline import StageOutcome, run_graph

    spec = _graph(tmp_path, [_inspect("a", []), _inspect("b", []), _inspect("c", []), _inspect("d", ["a", "b", "c"])])
    barrier = threading.Barrier(3, timeout=10)
    order: list[str] = []

    def run_one(stage: StageSpec) -> StageOutcome:
        if stage.name != "d":
            barrier.wait()  # BrokenBarrierError if fewer than three run at once
        order.append(stage.name)
        return StageOutcome(stage.name, "done", 0, 0)

    outcomes = run_graph(spec, run_one, parallel=3)
    assert [o.status for o in outcomes] == ["done"] * 4 and order[-1] == "d"


def test_parallel_local_stages_run_as_child_processes(tmp_path: Path, cli: Cli) -> None:
    spec = tmp_path / "fan.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "fan",
                "stages": [
                    {"stage": "import", "source": str(EXAMPLE_MODEL), "output": str(tmp_path / "m"), "name": "m"},
                    {
                        "stage": "quantize",
                        "model": str(tmp_path / "m"),
                        "output": str(tmp_path / "int8"),
                        "method": "int8-weight",
                        "name": "int8",
                        "after": ["m"],
                    },
                    {
                        "stage": "quantize",
                        "model": str(tmp_path / "m"),
                        "output": str(tmp_path / "fp8"),
                        "method": "fp8-block",
                        "name": "fp8",
                        "after": ["m"],
                    },
                    {"stage": "inspect", "model": str(tmp_path / "fp8"), "name": "look", "after": ["int8", "fp8"]},
                ],
            }
        )
    )
    state = ("--state-dir", tmp_path / "state")
    planned = cli("pipeline", spec, "--dry-run", *state)
    assert "2. int8 [cpu, after m]" in planned.out and "4. look [cpu, after int8, fp8]" in planned.out
    ran = cli("pipeline", spec, "--parallel", "2", *state)
    assert ran.code == 0, ran.err
    stages = json.loads(ran.out.strip().splitlines()[-1])["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [
        ("m", "done"),
        ("int8", "done"),
        ("fp8", "done"),
        ("look", "done"),
    ]
    assert (tmp_path / "int8" / "parquant.json").exists() and (tmp_path / "fp8" / "parquant.json").exists()
    again = cli("pipeline", spec, "--parallel", "2", *state)  # resume state shared by the child processes
    assert [s["status"] for s in json.loads(again.out.strip().splitlines()[-1])["stages"]] == ["skipped"] * 4
    assert cli("pipeline", spec, "--parallel", "0", *state).code == 64
