"""Golden bytes: every method whose output is exact on any machine exports the very bytes recorded in
bench/results/method_digests.json (a refactoring must leave them identical). The GPTQ-family
AngelSlim methods, whose CPU math differs between machines, are checked by `make bench-digests`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_every_exact_method_exports_the_recorded_bytes() -> None:
    # In a process of its own, with the environment a user's shell has: transformers writes whether
    # the hub was offline when it was imported (`local_files_only`) into a saved tokenizer config,
    # and the test suite imports it offline.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    script = REPO / "bench" / "method_digests.py"
    recorded = REPO / "bench" / "results" / "method_digests.json"
    checked = subprocess.run(
        [sys.executable, str(script), "check", str(recorded), "--exact"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "files identical" in checked.stdout
