"""What the driver makes of a stage Job and its pods: pure decisions, no API calls.

The executor reads the Job and its pods each poll and asks `JobObserver.observe(job, pods, now)`
what to do: keep waiting, or stop with an outcome (and whether to delete the Job, whether to look
up the pods' warning events to explain it). Everything here runs on plain objects shaped like the
Kubernetes client's models, so the whole state machine is unit-tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .jobs import CONTAINER

# Waiting reasons that will not fix themselves, with the exit code and the fix to print.
STUCK_WAITING = {
    "ErrImagePull": (69, "the image cannot be pulled: check the image name and the pull secret"),
    "ImagePullBackOff": (69, "the image cannot be pulled: check the image name and the pull secret"),
    "InvalidImageName": (69, "the image name is invalid: fix --cpu-image / --gpu-image"),
    "CreateContainerConfigError": (78, "the container cannot be configured (missing Secret or ConfigMap?)"),
}
# Terminated reasons without one of our exit codes.
TERMINATED_REASONS = {"OOMKilled": 71, "DeadlineExceeded": 75}


@dataclass
class Watch:
    """How a wait on a Job ended."""

    status: str  # "succeeded", "failed", "unschedulable"
    exit_code: int = 0
    note: str = ""


@dataclass(frozen=True)
class Decision:
    """One poll's verdict: `outcome` None means keep waiting."""

    outcome: Watch | None = None
    delete_job: bool = False  # the driver ends the Job itself (it would not end on its own)
    explain: bool = False  # add the pods' warning events to the outcome's note
    unschedulable_pods: tuple[tuple[str, str], ...] = ()  # (pod, scheduler's message), said once each


@dataclass
class JobObserver:
    """The memory of one Job's watch between polls, and the rules applied to each poll.

    `unschedulable_limit`: seconds a pod may stay Unschedulable (a GPU stage's wait for a node)
    before the outcome is "unschedulable"; None waits for ever. `fail_codes`: exit codes that end
    the Job at once where the server predates podFailurePolicy (the driver does its job).
    """

    unschedulable_limit: float | None
    stuck_seconds: float
    fail_codes: frozenset[int] = frozenset()
    unschedulable_since: float | None = None
    stuck_since: dict[str, float] = field(default_factory=dict)
    told: set[str] = field(default_factory=set)

    def observe(self, job: Any, pods: list[Any], now: float) -> Decision:
        state = job_state(job)
        if state == "succeeded":
            return Decision(Watch("succeeded"))
        if state == "failed":
            return Decision(Watch("failed", *failure_code(job, pods)), explain=True)
        for pod in pods:
            code = exit_code(pod)
            if code is not None and code in self.fail_codes:
                note = f"exit code {code} (pod {pod.metadata.name}); not retried: a retry cannot fix it"
                return Decision(Watch("failed", code, note), delete_job=True, explain=True)
        newly = tuple(
            (pod.metadata.name, scheduling_message(pod))
            for pod in pods
            if unschedulable(pod) and pod.metadata.name not in self.told
        )
        self.told.update(name for name, _ in newly)
        if self.unschedulable_limit is not None:
            if any(unschedulable(pod) for pod in pods):
                self.unschedulable_since = self.unschedulable_since if self.unschedulable_since is not None else now
                if now - self.unschedulable_since > self.unschedulable_limit:
                    return Decision(Watch("unschedulable"), explain=True, unschedulable_pods=newly)
            else:
                self.unschedulable_since = None
        for pod in pods:
            reason = waiting_reason(pod)
            if reason in STUCK_WAITING:
                first = self.stuck_since.setdefault(pod.metadata.name, now)
                if now - first > self.stuck_seconds:
                    code, fix = STUCK_WAITING[reason]
                    outcome = Watch("failed", code, f"{reason}: {fix}")
                    return Decision(outcome, delete_job=True, explain=True, unschedulable_pods=newly)
        return Decision(unschedulable_pods=newly)


def job_state(job: Any) -> str | None:
    for condition in job.status.conditions or []:
        if condition.status == "True" and condition.type == "Complete":
            return "succeeded"
        if condition.status == "True" and condition.type == "Failed":
            return "failed"
    return None


def unschedulable(pod: Any) -> bool:
    return any(
        c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
        for c in pod.status.conditions or []
    )


def exit_code(pod: Any) -> int | None:
    for status in pod.status.container_statuses or []:
        terminated = status.state.terminated if status.state else None
        if status.name == CONTAINER and terminated is not None and terminated.exit_code:
            return int(terminated.exit_code)
    return None


def scheduling_message(pod: Any) -> str:
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled":
            return str(c.message or c.reason)
    return "no reason given"


def waiting_reason(pod: Any) -> str | None:
    for status in pod.status.container_statuses or []:
        if status.state and status.state.waiting:
            return str(status.state.waiting.reason)
    return None


def failure_code(job: Any, pods: list[Any]) -> tuple[int, str]:
    """The exit code of the Job's last failed container (our own codes), else one for the reason."""
    condition = next((c for c in job.status.conditions or [] if c.type == "Failed" and c.status == "True"), None)
    reason = condition.reason if condition else ""
    failed = [p for p in pods if p.status.phase == "Failed"]
    failed.sort(key=lambda p: p.metadata.creation_timestamp or 0)
    for pod in reversed(failed):
        for status in pod.status.container_statuses or []:
            terminated = status.state.terminated if status.state else None
            if status.name == CONTAINER and terminated is not None:
                if terminated.reason in TERMINATED_REASONS and terminated.exit_code in (None, 137, 143):
                    return TERMINATED_REASONS[terminated.reason], f"{terminated.reason} (pod {pod.metadata.name})"
                return int(terminated.exit_code), f"exit code {terminated.exit_code} (pod {pod.metadata.name})"
    if reason == "DeadlineExceeded":
        return 75, "the Job ran past activeDeadlineSeconds: raise it in the stage template or give it a bigger node"
    return 70, f"the Job failed ({reason or 'no reason given'}) and no container exit code is known"
