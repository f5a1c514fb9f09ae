"""Stage Jobs: a pipeline stage rendered into a Kubernetes Job from the deploy/ templates.

The templates are the same files `kubectl apply -k deploy/...` ships in a ConfigMap, so what the
driver creates is exactly what was validated offline. This module is pure (dicts in, dicts out):
the executor owns every API call.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import JOB_FAIL_CODES, JOB_RETRY_CODES, ConfigError
from ..pipeline import StageSpec
from ..quant import methods
from ..stages.common import PLACEMENT_NOTE_VARIABLE

CONTAINER = "parquant"
LABEL_PREFIX = "parquant.io/"
MANAGED_BY = {"app.kubernetes.io/name": "parquant", "app.kubernetes.io/component": "stage"}
# Job fields a server too old to know them would drop or refuse: (field, first version with it).
NEWER_FIELDS = (("podFailurePolicy", (1, 26)), ("completionMode", (1, 21)))


@dataclass(frozen=True)
class JobTemplates:
    """The stage Job template, and its GPU version (the template with the GPU patch applied) when
    this cluster offers GPUs."""

    cpu: dict[str, Any]
    gpu: dict[str, Any] | None

    @classmethod
    def load(cls, template_path: str, gpu_patch_path: str | None) -> JobTemplates:
        cpu = _read_job(template_path)
        return cls(cpu, gpu_job(cpu, _read_patch(gpu_patch_path), gpu_patch_path) if gpu_patch_path else None)


def gpu_job(template: dict[str, Any], patch: list[dict[str, Any]], where: str = "the GPU patch") -> dict[str, Any]:
    """The stage template made a GPU one by a JSON Patch (RFC 6902): one template, one patch."""
    import jsonpatch

    try:
        patched: dict[str, Any] = jsonpatch.apply_patch(template, patch)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise ConfigError(f"{where} does not apply to the stage Job template ({exc})") from None
    return patched


def _read_patch(path: str | None) -> list[dict[str, Any]]:
    try:
        loaded = yaml.safe_load(Path(str(path)).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the GPU patch {path} ({exc.strerror}): pass --gpu-job-patch") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"GPU patch {path} is not valid YAML ({exc})") from None
    if not isinstance(loaded, list) or not all(isinstance(op, dict) and "op" in op for op in loaded):
        raise ConfigError(f"{path} must be a JSON Patch: a list of {{op, path, value}} operations")
    return loaded


def pod_failure_policy() -> dict[str, Any]:
    """Every Job's podFailurePolicy, from parquant's exit codes (errors.py): fail at once where a
    retry cannot help, count a retry for I/O and network trouble, ignore pod disruptions."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(JOB_FAIL_CODES)},
                "onPodConditions": [],  # Kubernetes 1.26 requires the key even where exit codes decide
            },
            {
                "action": "Count",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(JOB_RETRY_CODES)},
                "onPodConditions": [],
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _read_job(path: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the stage Job template {path} ({exc.strerror}): pass --job-template") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"stage Job template {path} is not valid YAML ({exc})") from None
    containers = (((loaded or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers")
    if not isinstance(loaded, dict) or loaded.get("kind") != "Job" or not containers:
        raise ConfigError(f"{path} must be a batch/v1 Job with spec.template.spec.containers")
    if not any(c.get("name") == CONTAINER for c in containers):
        raise ConfigError(f"{path}: the Job's container must be named {CONTAINER!r}")
    return loaded


def job_name(pipeline: str, stage: StageSpec, suffix: str = "") -> str:
    """A DNS-1123 name, stable for the same stage entry (so a rerun finds the Job it made before)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{pipeline}-{stage.name}".lower()).strip("-")
    tail = "-" + stage.digest()[:8] + (f"-{suffix}" if suffix else "")
    return f"pq-{slug[: 63 - 3 - len(tail)].rstrip('-')}{tail}"


def stage_labels(pipeline: str, stage: StageSpec, placement: str) -> dict[str, str]:
    return {
        **MANAGED_BY,
        LABEL_PREFIX + "pipeline": _label_value(pipeline),
        LABEL_PREFIX + "stage": _label_value(stage.name),
        LABEL_PREFIX + "digest": stage.digest()[:16],
        LABEL_PREFIX + "placement": placement,
    }


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return value or hashlib.sha256(text.encode()).hexdigest()[:12]


def render_job(
    template: dict[str, Any],
    *,
    name: str,
    labels: dict[str, str],
    args: list[str],
    image: str | None = None,
    indexed_completions: int | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A copy of `template` with this stage's name, labels, container args, image and environment."""
    job = copy.deepcopy(template)
    job.setdefault("apiVersion", "batch/v1")
    meta = job.setdefault("metadata", {})
    meta["name"] = name
    meta.pop("generateName", None)
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    pod_meta = job["spec"]["template"].setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
    container = next(c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER)
    container["args"] = list(args)
    if env:
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in env] + [
            {"name": k, "value": v} for k, v in env.items()
        ]
    job["spec"]["podFailurePolicy"] = pod_failure_policy()
    if image:
        container["image"] = image
    if indexed_completions is not None:
        job["spec"].update(
            completionMode="Indexed", completions=indexed_completions, parallelism=min(indexed_completions, 8)
        )
    return job


def strip_for_server(job: dict[str, Any], version: tuple[int, int]) -> list[str]:
    """Remove Job fields this server predates; returns what was removed (the caller logs it)."""
    removed = []
    for field_name, since in NEWER_FIELDS:
        if version < since and field_name in job["spec"]:
            del job["spec"][field_name]
            removed.append(field_name)
    return removed


def fail_job_exit_codes(job: dict[str, Any]) -> set[int]:
    """The container exit codes on which the Job's podFailurePolicy fails it at once (no retry)."""
    codes: set[int] = set()
    for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules", []):
        on_codes = rule.get("onExitCodes") or {}
        if rule.get("action") == "FailJob" and on_codes.get("operator") == "In":
            codes.update(int(v) for v in on_codes.get("values", []))
    return codes


def cpu_replacement(stage: StageSpec, backend: str, why: str) -> StageSpec:
    """The stage to run on the CPU image once its GPU pod could not be scheduled.

    Quantize keeps its method on AngelSlim-on-CPU when so configured, otherwise takes the built-in
    PTQ method closest to it; either way PARQUANT_PLACEMENT_NOTE puts the reason into the manifest
    (provenance fallbacks), which the benchmark result and the report carry on.
    """
    params = dict(stage.params)
    if stage.stage == "quantize":
        name = str(params.get("method") or methods.default_method())
        try:
            method = methods.get_method(name)
        except KeyError as exc:
            raise ConfigError(f"stage {stage.name}: {exc.args[0]}") from None
        if backend == methods.ANGELSLIM and method.offered_by(methods.ANGELSLIM):
            params.update(backend=methods.ANGELSLIM, device="cpu")
        else:
            params.update(backend=methods.PTQ, method=method.fallback, device="cpu")
    return StageSpec(
        stage.name, stage.stage, params, gpu=False, after=stage.after, env={**stage.env, PLACEMENT_NOTE_VARIABLE: why}
    )


__all__ = [
    "CONTAINER",
    "JobTemplates",
    "cpu_replacement",
    "fail_job_exit_codes",
    "job_name",
    "render_job",
    "stage_labels",
    "strip_for_server",
]
