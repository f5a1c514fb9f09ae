"""The Kubernetes executor: one Job per stage, run in order, with the GPU -> CPU fallback.

It needs only what the deploy/ Role grants: jobs (create, get, list, watch, delete), pods and
pods/log (get, list, watch), events (get, list, watch), in its own namespace.

Resume: each stage's Job name is derived from the pipeline, the stage and a hash of its entry, so
a rerun (or a restarted driver pod) finds the Job it made before: a succeeded one is skipped, a
running one is waited for, a failed one is deleted and made again. Once Jobs are gone (their TTL),
the stages that write models still skip by themselves, from their outputs' fingerprints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParquantError, TemporaryFailure, UnavailableError
from ..pipeline import PipelineSpec, StageOutcome, StageSpec, redo_args, run_graph, storage_argv
from .jobs import (
    CONTAINER,
    JobTemplates,
    cpu_replacement,
    fail_job_exit_codes,
    job_name,
    render_job,
    stage_labels,
    strip_for_server,
)
from .observe import JobObserver, Watch, job_state

log = logging.getLogger("parquant")


@dataclass
class KubernetesSettings:
    namespace: str
    templates: JobTemplates
    cpu_image: str | None = None
    gpu_image: str | None = None
    gpu: bool = True  # False: every stage runs on the CPU template (the cpu overlay)
    gpu_schedule_timeout: float = 600.0
    cpu_fallback_backend: str = "ptq"  # or "angelslim" (AngelSlim on CPU)
    poll_seconds: float = 2.0
    stuck_seconds: float = 300.0  # how long an image pull may fail before the stage fails
    extra_args: list[str] = field(default_factory=list)  # logging flags, appended to every stage
    parallel: int = 1  # stages whose after: allows it run as concurrent Jobs, this many at once


class KubernetesExecutor:
    def __init__(self, api_client: Any, settings: KubernetesSettings, print_line: Callable[[str], None] = print):
        from kubernetes import client

        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.version = _server_version(client.VersionApi(api_client))
        self.settings = settings
        self.print_line = print_line
        self._active: set[str] = set()  # Jobs this driver made that have not ended
        # Exit codes a stripped podFailurePolicy would have failed the Job on, per Job name.
        self._fail_job_codes: dict[str, set[int]] = {}

    def run(self, spec: PipelineSpec, force: bool = False) -> list[StageOutcome]:
        """Every stage as a Job once the stages it runs after succeeded (pipeline.run_graph: the
        same schedule as the local executor), up to `settings.parallel` Jobs at a time."""

        def run_one(stage: StageSpec) -> StageOutcome:
            started = time.monotonic()
            try:
                outcome = self._run_stage(spec, stage, force)
            except ParquantError as exc:
                log.error("pipeline: %s: %s", stage.name, exc)
                outcome = StageOutcome(stage.name, "failed", exc.exit_code, 0.0, "kubernetes", str(exc))
            outcome.seconds = round(time.monotonic() - started, 2)
            return outcome

        return run_graph(spec, run_one, self.settings.parallel)

    def interrupt(self) -> None:
        """Delete the running stage's Jobs (and their pods): a stopped driver leaves no GPU pod behind."""
        for name in sorted(self._active):
            log.warning("pipeline: interrupted; deleting Job %s", name)
            self._delete(name)

    # -- one stage ---------------------------------------------------------------------------

    def _run_stage(self, spec: PipelineSpec, stage: StageSpec, force: bool) -> StageOutcome:
        on_gpu = stage.gpu and self.settings.gpu and self.settings.templates.gpu is not None
        name, cpu_name = job_name(spec.name, stage), job_name(spec.name, stage, "cpu")
        for candidate in (name, cpu_name) if on_gpu else (name,):
            found = self._existing(candidate, force)
            if found == "succeeded":
                log.info("pipeline: %s already done (Job %s succeeded), skipped", stage.name, candidate)
                return StageOutcome(stage.name, "skipped", 0, 0.0, "kubernetes", f"job {candidate}")
            if found == "running":
                on_gpu = on_gpu and candidate == name
                name = candidate
                self._active.add(name)
                break
        else:
            if stage.fan_out > 1:
                failed = self._fan_out(spec, stage)
                if failed is not None:
                    return StageOutcome(stage.name, "failed", failed.exit_code, 0.0, "kubernetes/cpu", failed.note)
            self._create(spec, stage, name, on_gpu, redo_args(stage, force))
        watch = self._wait(name, stage.name, self.settings.gpu_schedule_timeout if on_gpu else None)
        if watch.status == "unschedulable":
            why = (
                f"GPU pod unschedulable for more than {self.settings.gpu_schedule_timeout:g}s"
                + (f" ({watch.note})" if watch.note else "")
                + f": ran on the CPU image ({self.settings.cpu_fallback_backend} backend)"
            )
            log.warning("pipeline: %s: %s; deleting Job %s", stage.name, why, name)
            self._delete(name)
            replacement = cpu_replacement(stage, self.settings.cpu_fallback_backend, why)
            self._create(spec, replacement, cpu_name, False, redo_args(replacement, force))
            watch = self._wait(cpu_name, stage.name, None)
            watch.note = "; ".join(filter(None, [why, watch.note]))
            name = cpu_name
        placement = "gpu" if on_gpu and name != cpu_name else "cpu"
        if watch.status == "succeeded":
            return StageOutcome(stage.name, "done", 0, 0.0, f"kubernetes/{placement}", watch.note)
        return StageOutcome(stage.name, "failed", watch.exit_code, 0.0, f"kubernetes/{placement}", watch.note)

    def _fan_out(self, spec: PipelineSpec, stage: StageSpec) -> Watch | None:
        """A fan-out stage's workers (import, quantize): one Indexed Job (Kubernetes 1.22+) or one Job per index;
        None when all succeed.

        The stage's own Job runs afterwards: it finds every shard written and adds the manifest.
        """
        count = ["--shard-count", str(stage.fan_out)]
        if self.version >= (1, 22):
            names = [job_name(spec.name, stage, "parts")]
            if self._existing(names[0], False) != "succeeded":
                self._create(spec, stage, names[0], False, count, indexed=stage.fan_out)
        else:
            log.warning("pipeline: Kubernetes %d.%d has no Indexed Jobs: one Job per index", *self.version)
            names = [job_name(spec.name, stage, f"part{i}") for i in range(stage.fan_out)]
            for i, name in enumerate(names):
                if self._existing(name, False) != "succeeded":
                    self._create(spec, stage, name, False, [*count, "--shard-index", str(i)])
        for name in names:
            watch = self._wait(name, stage.name, None)
            if watch.status != "succeeded":
                for other in names:
                    self._delete(other)
                return watch
        return None

    def _existing(self, name: str, force: bool) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            job = self.batch.read_namespaced_job(name, self.settings.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(exc, f"read Job {name}") from None
        state = job_state(job)
        if state == "succeeded" and not force:
            return "succeeded"
        if state is None and not force:
            log.info("pipeline: Job %s is still running (driver restarted?): waiting for it", name)
            return "running"
        log.info("pipeline: deleting the earlier Job %s (%s) to run it again", name, state or "running")
        self._delete(name)
        return None

    def _create(
        self,
        spec: PipelineSpec,
        stage: StageSpec,
        name: str,
        on_gpu: bool,
        worker_args: list[str] | None = None,
        indexed: int | None = None,
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        job = stage_job(self.settings, spec, stage, name, on_gpu, worker_args, indexed)
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        fail_codes = fail_job_exit_codes(job)
        removed = strip_for_server(job, self.version)
        if removed:
            log.warning(
                "pipeline: Kubernetes %d.%d lacks %s: created without it%s",
                *self.version,
                ", ".join(removed),
                "; the driver fails the Job on those exit codes itself" if "podFailurePolicy" in removed else "",
            )
            if "podFailurePolicy" in removed:
                self._fail_job_codes[name] = fail_codes
        log.info(
            "pipeline: %s: Job %s on %s: parquant %s", stage.name, name, "GPU" if on_gpu else "CPU", " ".join(args)
        )
        # Active before it exists: an interrupt that lands while the create call is in flight must
        # still delete it (deleting a Job that was never made is a 404, which is fine).
        self._active.add(name)
        try:
            self.batch.create_namespaced_job(self.settings.namespace, job)
        except ApiException as exc:
            self._active.discard(name)
            raise _api_error(exc, f"create Job {name}") from None

    def _delete(self, name: str) -> None:
        """Foreground deletion: returns once the Job and its pods are gone (or after a minute)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(
                name, self.settings.namespace, body=client.V1DeleteOptions(propagation_policy="Foreground")
            )
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"delete Job {name}") from None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.batch.read_namespaced_job(name, self.settings.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    break
                raise _api_error(exc, f"read Job {name}") from None
            time.sleep(self.settings.poll_seconds)
        else:
            log.warning("pipeline: Job %s is still being deleted after 60s; going on", name)
        self._active.discard(name)

    def _wait(self, name: str, stage_name: str, unschedulable_limit: float | None) -> Watch:
        """Poll the Job and its pods until it ends (observe.py decides); stream each pod's log once it runs."""
        from kubernetes.client.exceptions import ApiException

        observer = JobObserver(
            unschedulable_limit, self.settings.stuck_seconds, frozenset(self._fail_job_codes.get(name, ()))
        )
        streamed: set[str] = set()
        while True:
            try:
                job = self.batch.read_namespaced_job(name, self.settings.namespace)
                pods = self.core.list_namespaced_pod(self.settings.namespace, label_selector=f"job-name={name}").items
            except ApiException as exc:
                raise _api_error(exc, f"watch Job {name}") from None
            for pod in pods:
                if pod.metadata.name not in streamed and (pod.status.phase or "Pending") != "Pending":
                    streamed.add(pod.metadata.name)
                    self._stream_log(pod.metadata.name, stage_name)
            decision = observer.observe(job, pods, time.monotonic())
            for pod_name, message in decision.unschedulable_pods:
                log.warning("pipeline: %s: pod %s cannot be scheduled yet: %s", stage_name, pod_name, message)
            if decision.outcome is not None:
                watch = self._explained(decision.outcome, pods) if decision.explain else decision.outcome
                if decision.delete_job:
                    self._delete(name)
                elif watch.status != "unschedulable":
                    self._active.discard(name)
                return watch
            time.sleep(self.settings.poll_seconds)

    def _explained(self, watch: Watch, pods: list[Any]) -> Watch:
        """Add the pods' latest warning events (FailedScheduling, BackOff, FailedMount...) to the note."""
        from kubernetes.client.exceptions import ApiException

        warnings = []
        for pod in pods:
            try:
                events = self.core.list_namespaced_event(
                    self.settings.namespace, field_selector=f"involvedObject.name={pod.metadata.name}"
                ).items
            except ApiException:
                return watch  # events only explain; without them the outcome stands
            warnings += [e for e in events if e.type == "Warning"]
        warnings.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
        told = list(dict.fromkeys(f"{e.reason}: {_short(e.message)}" for e in reversed(warnings)))[:2][::-1]
        if told:
            log.warning("pipeline: events: %s", " | ".join(told))
            watch.note = "; ".join(filter(None, [watch.note, "events: " + " | ".join(told)]))
        return watch

    def _stream_log(self, pod: str, stage_name: str) -> None:
        """Follow a pod's log on a thread; without a reachable kubelet it says so once and goes on."""

        def follow() -> None:
            try:
                response = self.core.read_namespaced_pod_log(
                    pod, self.settings.namespace, container=CONTAINER, follow=True, _preload_content=False
                )
                for raw in response.stream():
                    for line in raw.decode("utf-8", "replace").splitlines():
                        self.print_line(f"[{stage_name}] {line}")
            except Exception as exc:  # logs are a convenience, never a failure
                log.warning("pipeline: %s: cannot stream the log of pod %s (%s)", stage_name, pod, _short(exc))

        threading.Thread(target=follow, name=f"log-{pod}", daemon=True).start()


def stage_job(
    settings: KubernetesSettings,
    spec: PipelineSpec,
    stage: StageSpec,
    name: str,
    on_gpu: bool,
    worker_args: list[str] | None = None,
    indexed: int | None = None,
) -> dict[str, Any]:
    """The Job a stage runs as: its template (GPU or CPU), image, labels and the stage's argv."""
    templates = settings.templates
    template = templates.gpu if on_gpu and templates.gpu is not None else templates.cpu
    image = settings.gpu_image if on_gpu else settings.cpu_image
    args = stage.argv() + (worker_args or []) + storage_argv(spec.storage_options) + settings.extra_args
    return render_job(
        template,
        name=name,
        labels=stage_labels(spec.name, stage, "gpu" if on_gpu else "cpu"),
        args=args,
        image=image or None,
        indexed_completions=indexed,
        env=stage.env,
    )


def planned_jobs(settings: KubernetesSettings, spec: PipelineSpec) -> list[dict[str, Any]]:
    """What `--dry-run` shows: each stage's first Job (fan-out workers before their import)."""
    jobs = []
    for stage in spec.stages:
        on_gpu = stage.gpu and settings.gpu and settings.templates.gpu is not None
        if stage.fan_out > 1:
            workers = ["--shard-count", str(stage.fan_out)]
            name = job_name(spec.name, stage, "parts")
            jobs.append(stage_job(settings, spec, stage, name, False, workers, stage.fan_out))
        jobs.append(stage_job(settings, spec, stage, job_name(spec.name, stage), on_gpu))
    return jobs


def _server_version(version_api: Any) -> tuple[int, int]:
    info = version_api.get_code()
    minor = "".join(ch for ch in str(info.minor) if ch.isdigit()) or "0"
    return int(info.major), int(minor)


def _api_error(exc: Any, action: str) -> ParquantError:
    if exc.status in (401, 403):
        from ..errors import PermissionDeniedError

        return PermissionDeniedError(
            f"Kubernetes refused to {action} ({exc.status} {exc.reason}): check the driver's ServiceAccount and Role"
        )
    if exc.status == 404:
        return UnavailableError(f"cannot {action}: {exc.reason} (does the namespace exist?)")
    if exc.status == 422:
        return UnavailableError(f"Kubernetes rejected the Job to {action}: {_short(exc.body)}; fix the stage template")
    return TemporaryFailure(f"Kubernetes API error while trying to {action} ({exc.status} {exc.reason}): retry")


def _short(value: Any) -> str:
    return " ".join(str(value).split())[:300]


__all__ = ["KubernetesExecutor", "KubernetesSettings", "planned_jobs", "stage_job"]
