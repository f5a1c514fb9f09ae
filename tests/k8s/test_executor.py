"""The Kubernetes executor against a real control plane (see conftest.py), driven as the driver's
own ServiceAccount with the deploy/ Role, so the Role is proven sufficient as well as minimal."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from parquant.fs import resolve
from parquant.k8s import connect
from parquant.k8s.executor import KubernetesExecutor, KubernetesSettings
from parquant.k8s.jobs import JobTemplates, job_name
from parquant.pipeline import PipelineSpec
from parquant.store.reader import ModelReader
from parquant_cli.main import main

from .conftest import ROOT, apply_driver_rbac, driver_kubeconfig
from .kubelet import FakeKubelet

pytestmark = pytest.mark.control_plane

TEMPLATES = ROOT / "deploy" / "base" / "templates"
TINY = ROOT / "examples" / "tiny-llama"
DATA = ROOT / "examples" / "data"


def _write_spec(path: Path, name: str, stages: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "stages": stages}))
    return path


def _pipeline_argv(spec: Path, kubeconfig: Path, namespace: str, *extra: str) -> list[str]:
    return [
        "pipeline",
        str(spec),
        "--executor",
        "kubernetes",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        namespace,
        "--job-template",
        str(TEMPLATES / "stage-job.yaml"),
        "--gpu-job-patch",
        str(TEMPLATES / "gpu-patch.yaml"),
        "--poll-seconds",
        "0.3",
        "--log-format",
        "text",
        "--quiet",
        *extra,
    ]


def _jobs(admin_api: Any, namespace: str) -> dict[str, Any]:
    from kubernetes import client

    return {j.metadata.name: j for j in client.BatchV1Api(admin_api).list_namespaced_job(namespace).items}


def test_gpu_stage_unschedulable_falls_back_to_cpu_then_rerun_skips(
    admin_api: Any, namespace: str, kubelet: FakeKubelet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    apply_driver_rbac(admin_api, namespace)
    kubeconfig = driver_kubeconfig(admin_api, namespace, tmp_path / "driver.kubeconfig")
    out = tmp_path / "out"
    spec = _write_spec(
        tmp_path / "pipeline.yaml",
        "fallback",
        [
            {"name": "import", "stage": "import", "source": str(TINY), "output": str(out / "model")},
            {
                "name": "quantize",
                "stage": "quantize",
                "gpu": True,
                "model": str(out / "model"),
                "output": str(out / "fp8"),
                "method": "fp8-static",
                "calibration_data": str(DATA / "calibration.jsonl"),
                "num_samples": 8,
                "seq_len": 64,
            },
            {
                "name": "benchmark",
                "stage": "benchmark",
                "model": str(out / "fp8"),
                "batch_sizes": [1],
                "seq_lens": [32],
                "new_tokens": 4,
                "output": str(out / "bench.json"),
            },
            {"name": "report", "stage": "report", "results": [str(out / "bench.json")], "output": str(out / "report")},
        ],
    )
    code = main(_pipeline_argv(spec, kubeconfig, namespace, "--gpu-schedule-timeout", "3"))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    by_name = {s["name"]: s for s in summary["stages"]}
    assert [s["status"] for s in summary["stages"]] == ["done"] * 4
    assert by_name["quantize"]["executor"] == "kubernetes/cpu"
    assert "GPU pod unschedulable for more than 3s" in by_name["quantize"]["note"]
    assert by_name["import"]["executor"] == "kubernetes/cpu"

    # The GPU Job is gone (deleted in the foreground); its CPU replacement ran the PTQ method.
    stage = PipelineSpec.load(str(spec)).stages[1]
    jobs = _jobs(admin_api, namespace)
    assert job_name("fallback", stage) not in jobs
    replacement = jobs[job_name("fallback", stage, "cpu")]
    assert replacement.metadata.labels["parquant.io/placement"] == "cpu"
    args = replacement.spec.template.spec.containers[0].args
    assert args[args.index("--backend") + 1] == "ptq" and args[args.index("--method") + 1] == "fp8-dynamic"

    # The decision is in the manifest and in the report.
    with ModelReader(resolve(str(out / "fp8"))) as reader:
        made = reader.manifest.created_by
    assert made.backend == "ptq" and any("GPU pod unschedulable" in f for f in made.fallbacks)
    # ... with the scheduler's own reason, from the pod's events.
    assert any("FailedScheduling: 0/1 nodes are available" in f for f in made.fallbacks), made.fallbacks
    assert "GPU pod unschedulable" in (out / "report" / "report.md").read_text()

    # Pod logs came through the API server's log proxy from the (stand-in) kubelet.
    assert "[import] " in captured.out and "[quantize] " in captured.out

    # Rerun: every stage is found done and skipped; nothing runs on the node again.
    runs = len(kubelet.runs)
    code = main(_pipeline_argv(spec, kubeconfig, namespace, "--gpu-schedule-timeout", "3"))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and [s["status"] for s in summary["stages"]] == ["skipped"] * 4
    assert len(kubelet.runs) == runs


def test_failing_stage_stops_the_pipeline_with_its_exit_code(
    admin_api: Any, namespace: str, kubelet: FakeKubelet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    apply_driver_rbac(admin_api, namespace)
    kubeconfig = driver_kubeconfig(admin_api, namespace, tmp_path / "driver.kubeconfig")
    spec = _write_spec(
        tmp_path / "pipeline.yaml",
        "failing",
        [
            {"name": "inspect", "stage": "inspect", "model": str(tmp_path / "no-such-model")},
            {"name": "never", "stage": "inspect", "model": str(TINY)},
        ],
    )
    code = main(_pipeline_argv(spec, kubeconfig, namespace, "--no-gpu"))
    captured = capsys.readouterr()
    assert code == 66, captured.err[-2000:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert [(s["name"], s["status"], s["exit_code"]) for s in summary["stages"]] == [("inspect", "failed", 66)]
    # v1.20 has no podFailurePolicy: the driver applies its FailJob rule itself and deletes the Job
    # at the first exit 66 it sees. The Job controller may have started one retry by then, which
    # the deletion stops (SIGTERM: parquant exits 143, or -15 if the signal lands before its
    # handler is installed) or which ends with 66 too; the template's backoffLimit (3) alone
    # would have run it 4 times.
    assert "lacks podFailurePolicy" in captured.err
    codes = [code for _, _, code in kubelet.runs]
    assert codes[0] == 66 and len(codes) <= 2 and set(codes) <= {66, 143, -15}, codes
    stages = PipelineSpec.load(str(spec)).stages
    jobs = _jobs(admin_api, namespace)
    assert job_name("failing", stages[0]) not in jobs and job_name("failing", stages[1]) not in jobs


def test_independent_stages_run_as_concurrent_jobs(
    admin_api: Any, namespace: str, kubelet: FakeKubelet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The graph the local executor runs, on the cluster: two quantizations of one model start
    together once the import succeeded (`--parallel 2`), and the report waits for both."""
    apply_driver_rbac(admin_api, namespace)
    kubeconfig = driver_kubeconfig(admin_api, namespace, tmp_path / "driver.kubeconfig")
    out = tmp_path / "out"

    def quantize(name: str, method: str) -> dict[str, Any]:
        model, output = str(out / "model"), str(out / name)
        return {
            "name": name,
            "stage": "quantize",
            "model": model,
            "output": output,
            "method": method,
            "after": ["import"],
        }

    spec = _write_spec(
        tmp_path / "pipeline.yaml",
        "graph",
        [
            {"name": "import", "stage": "import", "source": str(TINY), "output": str(out / "model")},
            quantize("int8", "int8-weight"),
            quantize("fp8", "fp8-block"),
            {"name": "look", "stage": "inspect", "model": str(out / "fp8"), "after": ["int8", "fp8"]},
        ],
    )
    code = main(_pipeline_argv(spec, kubeconfig, namespace, "--no-gpu", "--parallel", "2"))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [
        ("import", "done"),
        ("int8", "done"),
        ("fp8", "done"),
        ("look", "done"),
    ]
    stages = {stage.name: job_name("graph", stage) for stage in PipelineSpec.load(str(spec)).stages}
    pods = {stage: next(p for p in kubelet.running if p.startswith(job)) for stage, job in stages.items()}
    (int8_start, int8_end), (fp8_start, fp8_end) = kubelet.running[pods["int8"]], kubelet.running[pods["fp8"]]
    assert int8_start < fp8_end and fp8_start < int8_end  # the two Jobs' pods ran at the same time
    assert kubelet.running[pods["import"]][1] <= min(int8_start, fp8_start)
    assert kubelet.running[pods["look"]][0] >= max(int8_end, fp8_end)


def test_interrupt_deletes_the_running_stage_job(admin_api: Any, namespace: str, tmp_path: Path) -> None:
    """A stopped driver (SIGTERM from Kubernetes) leaves no GPU pod waiting behind it."""
    apply_driver_rbac(admin_api, namespace)
    kubeconfig = driver_kubeconfig(admin_api, namespace, tmp_path / "driver.kubeconfig")
    spec = PipelineSpec.from_dict(
        {"name": "stopped", "stages": [{"stage": "quantize", "model": "s3://b/m", "output": "s3://b/q", "gpu": True}]},
        "x.yaml",
    )
    settings = KubernetesSettings(
        namespace,
        JobTemplates.load(str(TEMPLATES / "stage-job.yaml"), str(TEMPLATES / "gpu-patch.yaml")),
        gpu_schedule_timeout=600,
        poll_seconds=0.2,
    )
    executor = KubernetesExecutor(connect(str(kubeconfig)), settings)
    thread = threading.Thread(target=executor.run, args=(spec,), daemon=True)
    thread.start()
    name = job_name("stopped", spec.stages[0])
    deadline = time.monotonic() + 30
    while name not in _jobs(admin_api, namespace) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name in _jobs(admin_api, namespace)
    executor.interrupt()
    assert name not in _jobs(admin_api, namespace)


def test_driver_role_is_limited_to_its_namespace(admin_api: Any, namespace: str, tmp_path: Path) -> None:
    from kubernetes import client

    apply_driver_rbac(admin_api, namespace)
    api = connect(str(driver_kubeconfig(admin_api, namespace, tmp_path / "driver.kubeconfig")))
    core = client.CoreV1Api(api)
    core.list_namespaced_pod(namespace)  # allowed
    for forbidden in (
        lambda: core.list_namespaced_secret(namespace),
        lambda: core.list_namespaced_pod("default"),
        lambda: client.BatchV1Api(api).list_namespaced_job("kube-system"),
        lambda: core.delete_collection_namespaced_pod(namespace),
    ):
        with pytest.raises(client.ApiException) as error:
            forbidden()
        assert error.value.status == 403


def _executor(admin_api: Any, namespace: str, tmp_path: Path, **overrides: Any) -> KubernetesExecutor:
    apply_driver_rbac(admin_api, namespace)
    kubeconfig = driver_kubeconfig(admin_api, namespace, tmp_path / "driver.kubeconfig")
    settings = KubernetesSettings(
        namespace,
        JobTemplates.load(str(TEMPLATES / "stage-job.yaml"), str(TEMPLATES / "gpu-patch.yaml")),
        poll_seconds=0.2,
        **overrides,
    )
    return KubernetesExecutor(connect(str(kubeconfig)), settings, print_line=lambda line: None)


def test_image_that_cannot_be_pulled_fails_the_stage_with_69(
    admin_api: Any, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    executor = _executor(
        admin_api, namespace, tmp_path, cpu_image="registry.invalid/does-not-exist:1", stuck_seconds=1, gpu=False
    )
    spec = PipelineSpec.from_dict({"name": "pull", "stages": [{"stage": "inspect", "model": str(TINY)}]}, "x.yaml")
    [outcome] = executor.run(spec)
    assert (outcome.status, outcome.exit_code) == ("failed", 69)
    assert "ErrImagePull" in outcome.note and "image name" in outcome.note
    assert job_name("pull", spec.stages[0]) not in _jobs(admin_api, namespace)


def test_restarted_driver_waits_for_the_running_job_and_force_reruns_done_ones(
    admin_api: Any, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    executor = _executor(admin_api, namespace, tmp_path, gpu=False)
    stages = [{"stage": "import", "source": str(TINY), "output": str(tmp_path / "model")}]
    spec = PipelineSpec.from_dict({"name": "adopt", "stages": stages}, "x.yaml")
    executor._create(spec, spec.stages[0], job_name("adopt", spec.stages[0]), on_gpu=False)  # the first driver
    [outcome] = executor.run(spec)  # a new driver finds the Job running and waits for it
    assert outcome.status == "done" and len(kubelet.runs) == 1
    [outcome] = executor.run(spec)
    assert outcome.status == "skipped" and len(kubelet.runs) == 1
    [outcome] = executor.run(spec, force=True)  # --force: the done Job is deleted and run again
    assert outcome.status == "done" and len(kubelet.runs) == 2


def test_kubernetes_refusals_become_exit_codes(admin_api: Any, namespace: str, tmp_path: Path) -> None:
    executor = _executor(admin_api, namespace, tmp_path, gpu=False)
    executor.settings.namespace = "kube-system"  # the Role does not reach there
    spec = PipelineSpec.from_dict({"name": "denied", "stages": [{"stage": "inspect", "model": "m"}]}, "x.yaml")
    [outcome] = executor.run(spec)
    assert (outcome.status, outcome.exit_code) == ("failed", 77)
    assert "driver's ServiceAccount and Role" in outcome.note


def test_import_fans_out_one_job_per_index_then_commits(
    admin_api: Any, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    from .conftest import make_sharded_checkpoint

    executor = _executor(admin_api, namespace, tmp_path, gpu=False)
    source = make_sharded_checkpoint(tmp_path / "hf")
    stage = {
        "stage": "import",
        "source": str(source),
        "output": str(tmp_path / "model"),
        "fan_out": 2,
        "shard_size": "48KB",
        "chunk_size": 8192,
    }
    spec = PipelineSpec.from_dict({"name": "fan", "stages": [stage]}, "x.yaml")
    [outcome] = executor.run(spec)
    assert outcome.status == "done", outcome.note
    # v1.20 has no Indexed Jobs: one Job per index, then the stage's own Job writes the manifest.
    shard_args = sorted(args[args.index("--shard-index") + 1] for _, args, _ in kubelet.runs if "--shard-index" in args)
    assert shard_args == ["0", "1"] and len(kubelet.runs) == 3
    assert all(code == 0 for _, _, code in kubelet.runs)
    with ModelReader(resolve(str(tmp_path / "model"))) as reader:
        assert len(reader.manifest.shards) >= 2
    [again] = executor.run(spec)
    assert again.status == "skipped" and len(kubelet.runs) == 3


def test_quantize_fans_out_and_matches_one_worker(
    admin_api: Any, namespace: str, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    """A data-free quantize stage with `fan_out: 2`: worker Jobs write the shards, the stage's own
    Job commits, and the model is byte for byte what one local worker writes."""
    from parquant.quant.config import load_config
    from parquant.stages.quantize import quantize
    from parquant.store.writer import WriteOptions

    from .conftest import make_sharded_checkpoint

    executor = _executor(admin_api, namespace, tmp_path, gpu=False)
    source = make_sharded_checkpoint(tmp_path / "hf")
    write = {"shard_size": "48KB", "chunk_size": 8192}
    stages = [
        {"stage": "import", "source": str(source), "output": str(tmp_path / "model"), **write},
        {
            "stage": "quantize",
            "model": str(tmp_path / "model"),
            "output": str(tmp_path / "q"),
            "method": "fp8-block",
            "fan_out": 2,
            **write,
        },
    ]
    spec = PipelineSpec.from_dict({"name": "qfan", "stages": stages}, "x.yaml")
    outcomes = executor.run(spec)
    assert [o.status for o in outcomes] == ["done", "done"], [o.note for o in outcomes]
    quantize_runs = [args for _, args, _ in kubelet.runs if args and "quantize" in args]
    assert sorted(a[a.index("--shard-index") + 1] for a in quantize_runs if "--shard-index" in a) == ["0", "1"]
    assert len(quantize_runs) == 3 and all(code == 0 for _, _, code in kubelet.runs)
    config = load_config(flags={"method": "fp8-block"}, environ={})
    quantize(
        str(tmp_path / "model"),
        str(tmp_path / "single"),
        config,
        write=WriteOptions(chunk_bytes=8192, shard_bytes=48 * 1024),
    )
    shards = sorted(p.name for p in (tmp_path / "q").glob("*.parquet"))
    assert len(shards) >= 2 and shards == sorted(p.name for p in (tmp_path / "single").glob("*.parquet"))
    for name in shards:
        assert (tmp_path / "q" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
