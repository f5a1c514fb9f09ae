"""The driver's state machine (k8s/observe.py) on plain objects shaped like the client's models."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from parquant.k8s.observe import JobObserver


def _job(*conditions: tuple[str, str]) -> Any:
    return SimpleNamespace(
        status=SimpleNamespace(
            conditions=[SimpleNamespace(type=kind, status="True", reason=reason) for kind, reason in conditions]
        )
    )


def _pod(
    name: str,
    phase: str = "Pending",
    *,
    unschedulable: bool = False,
    waiting: str | None = None,
    exit_code: int | None = None,
) -> Any:
    conditions = []
    if unschedulable:
        conditions.append(
            SimpleNamespace(type="PodScheduled", status="False", reason="Unschedulable", message="0/3 nodes have GPUs")
        )
    terminated = SimpleNamespace(exit_code=exit_code, reason="Error") if exit_code is not None else None
    state = SimpleNamespace(terminated=terminated, waiting=SimpleNamespace(reason=waiting) if waiting else None)
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, creation_timestamp=0),
        status=SimpleNamespace(
            phase=phase, conditions=conditions, container_statuses=[SimpleNamespace(name="parquant", state=state)]
        ),
    )


def test_a_running_job_is_waited_for_and_a_complete_one_succeeds() -> None:
    observer = JobObserver(None, stuck_seconds=300)
    assert observer.observe(_job(), [_pod("p", "Running")], now=0).outcome is None
    decision = observer.observe(_job(("Complete", "")), [_pod("p", "Succeeded")], now=5)
    assert decision.outcome is not None and decision.outcome.status == "succeeded"
    assert not decision.delete_job and not decision.explain


def test_a_failed_job_reports_its_containers_exit_code_and_asks_for_events() -> None:
    decision = JobObserver(None, 300).observe(
        _job(("Failed", "BackoffLimitExceeded")), [_pod("p", "Failed", exit_code=65)], now=0
    )
    assert decision.outcome is not None and (decision.outcome.status, decision.outcome.exit_code) == ("failed", 65)
    assert decision.explain and not decision.delete_job


def test_unschedulable_gpu_pod_is_told_once_then_times_out_and_resets_when_scheduled() -> None:
    observer = JobObserver(unschedulable_limit=60, stuck_seconds=300)
    first = observer.observe(_job(), [_pod("p", unschedulable=True)], now=100)
    assert first.outcome is None and first.unschedulable_pods == (("p", "0/3 nodes have GPUs"),)
    assert observer.observe(_job(), [_pod("p", unschedulable=True)], now=150).unschedulable_pods == ()
    # scheduled after all: the clock starts again
    assert observer.observe(_job(), [_pod("p", "Running")], now=155).outcome is None
    assert observer.observe(_job(), [_pod("q", unschedulable=True)], now=200).outcome is None
    assert observer.observe(_job(), [_pod("q", unschedulable=True)], now=259).outcome is None
    late = observer.observe(_job(), [_pod("q", unschedulable=True)], now=261)
    assert late.outcome is not None and late.outcome.status == "unschedulable" and late.explain
    assert not late.delete_job  # the executor deletes it and starts the CPU replacement itself


def test_a_cpu_stage_waits_for_a_node_for_ever() -> None:
    observer = JobObserver(unschedulable_limit=None, stuck_seconds=300)
    for now in (0, 10_000, 10**6):
        assert observer.observe(_job(), [_pod("p", unschedulable=True)], now=now).outcome is None


def test_an_image_that_cannot_be_pulled_fails_the_stage_after_the_grace_time() -> None:
    observer = JobObserver(None, stuck_seconds=300)
    assert observer.observe(_job(), [_pod("p", waiting="ImagePullBackOff")], now=0).outcome is None
    assert observer.observe(_job(), [_pod("p", waiting="ImagePullBackOff")], now=299).outcome is None
    decision = observer.observe(_job(), [_pod("p", waiting="ImagePullBackOff")], now=301)
    assert decision.outcome is not None and decision.outcome.exit_code == 69 and "pull" in decision.outcome.note
    assert decision.delete_job
    # a pod merely creating its container is not stuck
    assert JobObserver(None, 0).observe(_job(), [_pod("p", waiting="ContainerCreating")], now=10**6).outcome is None


def test_without_pod_failure_policy_the_driver_fails_the_job_on_a_final_code() -> None:
    observer = JobObserver(None, 300, fail_codes=frozenset({65, 78}))
    retried = observer.observe(_job(), [_pod("a", "Failed", exit_code=74), _pod("b", "Running")], now=0)
    assert retried.outcome is None  # 74 is retried by the Job's backoff
    final = observer.observe(_job(), [_pod("a", "Failed", exit_code=65)], now=1)
    assert final.outcome is not None and final.outcome.exit_code == 65 and final.delete_job
    assert "not retried" in final.outcome.note
