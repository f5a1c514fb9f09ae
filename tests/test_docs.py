"""The documentation site: it builds strictly, every exit code has a troubleshooting entry, and the
messages the docs quote are still what the code prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from parquant.errors import EXIT_CODES

from .conftest import REPO

TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"


def test_every_exit_code_has_a_troubleshooting_entry() -> None:
    text = TROUBLESHOOTING.read_text()
    anchors = set(re.findall(r"\{#exit-(\d+)\}|id=\"exit-(\d+)\"", text))
    found = {int(a or b) for a, b in anchors}
    assert found >= set(EXIT_CODES), f"no entry for exit codes {sorted(set(EXIT_CODES) - found)}"


def test_quoted_messages_are_still_in_the_code() -> None:
    """Each ```text block of the troubleshooting page is a piece of a message the code prints."""
    source = "\n".join(p.read_text() for folder in ("pkg", "cmd") for p in (REPO / folder).rglob("*.py"))
    quotes = re.findall(r"```text\n(.*?)\n```", TROUBLESHOOTING.read_text(), flags=re.S)
    assert len(quotes) >= 15
    missing = [quote for quote in quotes if quote not in source]
    assert missing == [], f"quoted in docs/troubleshooting.md but no longer in the code: {missing}"


def test_the_site_builds_strictly_with_generated_reference_pages(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "docs" / "generate.py")], check=True, cwd=REPO)
    cli = (REPO / "docs" / "reference" / "cli.md").read_text()
    assert "## parquant quantize" in cli and "--method" in cli and "int4-rtn-asym" in cli
    assert "| 79 | precision gate failed |" in (REPO / "docs" / "reference" / "exit-codes.md").read_text()
    assert "`PARQUANT_CALIBRATION_DATA`" in (REPO / "docs" / "reference" / "config.md").read_text()
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "import_checkpoint" in api and "QuantMethod" in api  # mkdocstrings rendered the docstrings
    assert 'id="exit-79"' in (tmp_path / "site" / "troubleshooting" / "index.html").read_text()
