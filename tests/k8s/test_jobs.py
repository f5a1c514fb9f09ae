"""Stage Job rendering (pure: no cluster) and the executor's mapping of what Kubernetes reports."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from parquant.errors import ConfigError
from parquant.k8s import connect, default_namespace
from parquant.k8s.executor import _api_error
from parquant.k8s.jobs import (
    JobTemplates,
    cpu_replacement,
    fail_job_exit_codes,
    job_name,
    pod_failure_policy,
    render_job,
    stage_labels,
    strip_for_server,
)
from parquant.k8s.observe import failure_code as _failure_code
from parquant.pipeline import StageSpec

ROOT = Path(__file__).parent.parent.parent
TEMPLATES = ROOT / "deploy" / "base" / "templates"


def _templates() -> JobTemplates:
    return JobTemplates.load(str(TEMPLATES / "stage-job.yaml"), str(TEMPLATES / "gpu-patch.yaml"))


def test_job_names_are_dns_labels_stable_and_distinct() -> None:
    stage = StageSpec("Quantize FP8 / Static " * 5, "quantize", {"model": "s3://b/m", "output": "s3://b/q"})
    name = job_name("My_Pipeline", stage)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert job_name("My_Pipeline", stage) == name
    assert job_name("My_Pipeline", stage, "cpu") != name and job_name("My_Pipeline", stage, "cpu").endswith("-cpu")
    other = StageSpec(stage.name, "quantize", {"model": "s3://b/m", "output": "s3://b/other"})
    assert job_name("My_Pipeline", other) != name


def test_render_job_fills_name_labels_args_image_and_keeps_the_rest() -> None:
    templates = _templates()
    stage = StageSpec("import", "import", {"source": "s3://b/hf", "output": "s3://b/pq"})
    labels = stage_labels("demo", stage, "cpu")
    job = render_job(templates.cpu, name="pq-x", labels=labels, args=stage.argv(), image="reg/parquant:1")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["import", "s3://b/hf", "--output", "s3://b/pq"]
    assert container["image"] == "reg/parquant:1"
    assert (
        job["metadata"]["name"] == "pq-x"
        and job["spec"]["template"]["metadata"]["labels"]["parquant.io/stage"] == "import"
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert templates.cpu["spec"]["template"]["spec"]["containers"][0]["args"] == ["--help"]  # template untouched
    indexed = render_job(templates.cpu, name="pq-y", labels=labels, args=["import"], indexed_completions=20)
    assert (indexed["spec"]["completionMode"], indexed["spec"]["completions"], indexed["spec"]["parallelism"]) == (
        "Indexed",
        20,
        8,
    )


def test_gpu_template_asks_for_a_gpu_and_tolerates_gpu_nodes() -> None:
    gpu = _templates().gpu
    assert gpu is not None
    pod = gpu["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_pod_failure_policies_follow_the_exit_codes() -> None:
    """Stage Jobs get theirs from errors.py; the driver Job's, written in YAML, must say the same."""
    from parquant.errors import EXIT_CODES, JOB_FAIL_CODES, JOB_RETRY_CODES, OutOfMemoryError, ParquantError

    emitted = {cls.exit_code for cls in _subclasses(ParquantError)}
    assert set(JOB_FAIL_CODES) | set(JOB_RETRY_CODES) == emitted  # every code parquant emits, nothing else
    assert set(EXIT_CODES) >= emitted and OutOfMemoryError.exit_code in JOB_FAIL_CODES
    driver = yaml.safe_load((ROOT / "deploy" / "base" / "driver-job.yaml").read_text())
    assert driver["spec"]["podFailurePolicy"] == pod_failure_policy()
    template = yaml.safe_load((TEMPLATES / "stage-job.yaml").read_text())
    assert "podFailurePolicy" not in template["spec"]  # one source: render_job adds it
    assert render_job(template, name="x", labels={}, args=[])["spec"]["podFailurePolicy"] == pod_failure_policy()


def _subclasses(cls: type) -> set[type]:
    return {cls} | {grand for sub in cls.__subclasses__() for grand in _subclasses(sub)}


def test_gpu_patch_that_does_not_apply_is_a_config_error(tmp_path: Path) -> None:
    patch = tmp_path / "patch.yaml"
    patch.write_text("- op: replace\n  path: /spec/template/spec/nodeName/missing\n  value: x\n")
    with pytest.raises(ConfigError, match="does not apply"):
        JobTemplates.load(str(TEMPLATES / "stage-job.yaml"), str(patch))
    patch.write_text("op: add\n")
    with pytest.raises(ConfigError, match="JSON Patch"):
        JobTemplates.load(str(TEMPLATES / "stage-job.yaml"), str(patch))


def test_strip_for_server_and_fail_job_codes() -> None:
    job = render_job(_templates().cpu, name="x", labels={}, args=[], indexed_completions=2)
    assert fail_job_exit_codes(job) == {64, 65, 66, 69, 70, 71, 73, 77, 78, 79}
    assert strip_for_server(job, (1, 30)) == []
    assert strip_for_server(job, (1, 20)) == ["podFailurePolicy", "completionMode"]
    assert "podFailurePolicy" not in job["spec"] and fail_job_exit_codes(job) == set()


@pytest.mark.parametrize(
    ("method", "backend", "expected"),
    [
        ("fp8-static", "ptq", ("ptq", "fp8-dynamic")),
        ("int4-gptq", "ptq", ("ptq", "int4-rtn")),
        ("int4-awq", "angelslim", ("angelslim", "int4-awq")),
        ("int8-weight", "angelslim", ("ptq", "int8-weight")),
    ],
)
def test_cpu_replacement_of_a_quantize_stage(method: str, backend: str, expected: tuple[str, str]) -> None:
    stage = StageSpec("q", "quantize", {"model": "m", "output": "o", "method": method}, gpu=True)
    moved = cpu_replacement(stage, backend, "no GPU")
    assert (moved.params["backend"], moved.params["method"]) == expected
    assert moved.params["device"] == "cpu" and moved.env == {"PARQUANT_PLACEMENT_NOTE": "no GPU"} and not moved.gpu
    assert "placement" not in " ".join(moved.argv()) and stage.params["method"] == method
    job = render_job(_templates().cpu, name="x", labels={}, args=moved.argv(), env=moved.env)
    assert {"name": "PARQUANT_PLACEMENT_NOTE", "value": "no GPU"} in job["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]


def test_bad_templates_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the stage Job template"):
        JobTemplates.load(str(tmp_path / "missing.yaml"), None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        JobTemplates.load(str(bad), None)
    bad.write_text(yaml.safe_dump({"kind": "Deployment"}))
    with pytest.raises(ConfigError, match="must be a batch/v1 Job"):
        JobTemplates.load(str(bad), None)
    job = yaml.safe_load((TEMPLATES / "stage-job.yaml").read_text())
    job["spec"]["template"]["spec"]["containers"][0]["name"] = "main"
    bad.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError, match="must be named 'parquant'"):
        JobTemplates.load(str(bad), None)


def _pod(name: str, phase: str, exit_code: int | None, reason: str = "Error") -> Any:
    terminated = (
        SimpleNamespace(exit_code=exit_code, reason=reason) if exit_code is not None or reason != "Error" else None
    )
    status = SimpleNamespace(name="parquant", state=SimpleNamespace(terminated=terminated, waiting=None))
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, creation_timestamp=0),
        status=SimpleNamespace(phase=phase, container_statuses=[status]),
    )


def _failed_job(reason: str = "BackoffLimitExceeded") -> Any:
    return SimpleNamespace(
        status=SimpleNamespace(conditions=[SimpleNamespace(type="Failed", status="True", reason=reason)])
    )


def test_failure_codes_come_from_the_container_else_from_the_reason() -> None:
    assert _failure_code(_failed_job(), [_pod("a", "Failed", 65)])[0] == 65
    assert _failure_code(_failed_job(), [_pod("a", "Failed", 137, "OOMKilled")])[0] == 71
    assert _failure_code(_failed_job("DeadlineExceeded"), [])[0] == 75
    code, note = _failure_code(_failed_job("Weird"), [])
    assert code == 70 and "Weird" in note


@pytest.mark.parametrize(("status", "code"), [(401, 77), (403, 77), (404, 69), (422, 69), (500, 75), (429, 75)])
def test_api_errors_map_to_exit_codes(status: int, code: int) -> None:
    assert _api_error(SimpleNamespace(status=status, reason="x", body="{}"), "create Job j").exit_code == code


def test_connect_without_credentials_and_default_namespace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        connect(str(tmp_path / "no-kubeconfig"))
    assert default_namespace(str(tmp_path / "no-kubeconfig")) == "default"
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "models"}}],
                "current-context": "x",
            }
        )
    )
    assert default_namespace(str(kubeconfig)) == "models"
    assert connect(str(kubeconfig)).configuration.host == "https://127.0.0.1:1"


@pytest.mark.parametrize("gpu", [True, False])
def test_dry_run_prints_the_jobs_and_they_validate(cli: Any, gpu: bool) -> None:
    import kubernetes_validate

    spec = ROOT / "deploy" / "base" / "pipeline.yaml"
    args = [
        "pipeline",
        spec,
        "--executor",
        "kubernetes",
        "--dry-run",
        "--job-template",
        TEMPLATES / "stage-job.yaml",
        "--gpu-job-patch",
        TEMPLATES / "gpu-patch.yaml",
        "--cpu-image",
        "reg/parquant:cpu",
        "--gpu-image",
        "reg/parquant:gpu",
    ]
    result = cli(*args) if gpu else cli(*args, "--no-gpu")
    assert result.code == 0
    text = result.out[result.out.index("apiVersion:") :]
    jobs = list(yaml.safe_load_all(text))
    assert len(jobs) == 6
    for job in jobs:
        kubernetes_validate.validate(job, "1.37.0", strict=True)
    quantize = next(j for j in jobs if j["metadata"]["labels"]["parquant.io/stage"] == "quantize")
    container = quantize["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == ("reg/parquant:gpu" if gpu else "reg/parquant:cpu")
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == gpu
    assert container["args"][:2] == ["quantize", "s3://parquant-models/tiny-llama/parquet"]
