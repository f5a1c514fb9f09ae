"""CPU counting for torch's threads: affinity, cgroup quotas, the helper threads, the user's override."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parquant import cpus


def test_cgroup_v2_quota_caps_the_affinity_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(cpus, "_CGROUP_V2", quota)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)))
    quota.write_text("250000 100000\n")  # --cpus 2.5
    assert cpus.cgroup_cpu_quota() == 2.5 and cpus.usable_cpus() == 2
    assert cpus.compute_threads(helper_threads=1) == 1
    quota.write_text("max 100000\n")
    assert cpus.cgroup_cpu_quota() is None and cpus.usable_cpus() == 64
    quota.write_text("50000 100000\n")  # half a CPU still runs one thread
    assert cpus.usable_cpus() == 1 and cpus.compute_threads(helper_threads=1) == 1


def test_cgroup_v1_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "q").write_text("300000\n")
    (tmp_path / "p").write_text("100000\n")
    monkeypatch.setattr(cpus, "_CGROUP_V2", tmp_path / "absent")
    monkeypatch.setattr(cpus, "_CGROUP_V1", (tmp_path / "q", tmp_path / "p"))
    assert cpus.cgroup_cpu_quota() == 3.0
    (tmp_path / "q").write_text("-1\n")
    assert cpus.cgroup_cpu_quota() is None


def test_torch_threads_are_set_and_restored_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with cpus.torch_threads(1) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with cpus.torch_threads(1) as threads:
        assert threads == before and torch.get_num_threads() == before
