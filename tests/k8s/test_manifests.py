"""Every deploy/ manifest through the real API server: server-side dry-run, and nothing dropped.

The dry-run runs admission, defaulting and validation as a real apply would. v1.20 silently drops
fields it does not know, so each response is compared with what was sent: the only field allowed
to vanish is the Jobs' podFailurePolicy (Kubernetes 1.26+), which is stripped before sending.
"""

from __future__ import annotations

import copy
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from parquant.k8s.jobs import strip_for_server

from .conftest import ROOT, render_overlay

pytestmark = pytest.mark.control_plane


def _dry_run(admin_api: Any, doc: dict[str, Any]) -> dict[str, Any]:
    from kubernetes.dynamic import DynamicClient

    resource = DynamicClient(admin_api).resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    namespace = doc["metadata"].get("namespace")
    # Server-side apply, as `kubectl apply --server-side --dry-run=server` sends it.
    applied = resource.server_side_apply(
        body=doc, name=doc["metadata"]["name"], namespace=namespace, field_manager="parquant-test", dry_run="All"
    )
    return dict(applied.to_dict())


def _missing(sent: Any, got: Any, path: str = "") -> list[str]:
    """Paths present in `sent` but absent or different in `got` (defaults added by the server are fine)."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [path]
        return [m for key, value in sent.items() for m in _missing(value, got.get(key), f"{path}.{key}")]
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [path]
        return [m for i, (a, b) in enumerate(zip(sent, got, strict=True)) for m in _missing(a, b, f"{path}[{i}]")]
    return [] if str(sent) == str(got) else [f"{path}: sent {sent!r}, got {got!r}"]


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_overlay_passes_server_side_dry_run(admin_api: Any, overlay: str) -> None:
    from kubernetes import client

    docs = render_overlay(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "ConfigMap", "Job", "Namespace", "Role", "RoleBinding", "ServiceAccount"]
    core = client.CoreV1Api(admin_api)
    if "parquant" not in [n.metadata.name for n in core.list_namespace().items]:
        core.create_namespace({"metadata": {"name": "parquant"}})
    for doc in docs:
        sent = copy.deepcopy(doc)
        if doc["kind"] == "Job":
            assert strip_for_server(sent, (1, 20)) == ["podFailurePolicy"]
        got = _dry_run(admin_api, sent)
        assert got["metadata"]["name"] == doc["metadata"]["name"]
        assert _missing(sent, got) == []
    driver = next(d for d in docs if d["kind"] == "Job")
    args = driver["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("--no-gpu" in args) == (overlay == "cpu")


@pytest.mark.parametrize("gpu", [False, True])
def test_stage_templates_pass_server_side_dry_run(admin_api: Any, gpu: bool) -> None:
    from parquant.k8s.jobs import JobTemplates, render_job

    folder = ROOT / "deploy" / "base" / "templates"
    templates = JobTemplates.load(str(folder / "stage-job.yaml"), str(folder / "gpu-patch.yaml"))
    doc = templates.gpu if gpu else templates.cpu
    assert doc is not None
    job = render_job(doc, name="pq-dry-run", labels={"parquant.io/stage": "x"}, args=["inspect", "s3://b/m"])
    job["metadata"]["namespace"] = "default"
    strip_for_server(job, (1, 20))
    got = _dry_run(admin_api, job)
    assert _missing(job, got) == []
    assert got["spec"]["template"]["spec"]["containers"][0]["args"] == ["inspect", "s3://b/m"]


def test_the_overlay_applies_again_after_the_pipeline_is_edited(admin_api: Any, tmp_path: Path) -> None:
    """`kubectl apply -k` after editing pipeline.yaml: no "field is immutable" from the driver Job,
    and the pipeline ConfigMap holds the edit (docs/deploy.md, "Re-running", says how to run it)."""
    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    deploy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", deploy)
    namespace = f"pq-apply-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace({"metadata": {"name": namespace}})
    dynamic = DynamicClient(admin_api)

    def apply() -> None:
        for doc in render_overlay("gpu", deploy):
            if doc["kind"] == "Namespace":
                continue
            doc["metadata"]["namespace"] = namespace
            if doc["kind"] == "Job":
                strip_for_server(doc, (1, 20))
            resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            resource.server_side_apply(
                body=doc,
                name=doc["metadata"]["name"],
                namespace=namespace,
                field_manager="kubectl",
                force_conflicts=True,
            )

    try:
        apply()
        pipeline = deploy / "base" / "pipeline.yaml"
        pipeline.write_text(pipeline.read_text().replace("name: tiny-llama", "name: tiny-llama-edited", 1))
        apply()  # the same Job template: accepted
        stored = core.read_namespaced_config_map("parquant-pipeline", namespace).data["pipeline.yaml"]
        assert "name: tiny-llama-edited" in stored
    finally:
        core.delete_namespace(namespace)
