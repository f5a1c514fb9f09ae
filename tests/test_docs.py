"""The documentation site: it builds strictly, every exit code has a troubleshooting entry, and the
messages the docs quote are still what the code prints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it (generated pages first, --strict)."""
    folder = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, str(REPO / "docs" / "generate.py")], check=True, cwd=REPO)
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def test_the_site_builds_strictly_with_generated_reference_pages(site: Path) -> None:
    cli = (REPO / "docs" / "reference" / "cli.md").read_text()
    assert "## parquant quantize" in cli and "--method" in cli and "int4-rtn-asym" in cli
    assert "| 79 | precision gate failed |" in (REPO / "docs" / "reference" / "exit-codes.md").read_text()
    assert "`PARQUANT_CALIBRATION_DATA`" in (REPO / "docs" / "reference" / "config.md").read_text()
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "import_checkpoint" in api and "QuantMethod" in api  # mkdocstrings rendered the docstrings
    assert 'id="exit-79"' in (site / "troubleshooting" / "index.html").read_text()


def test_the_site_renders_in_chromium(site: Path, tmp_path: Path) -> None:
    """A built page, as a browser shows it: styled (not bare HTML), with its navigation and code."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: `make test` installs Debian's chromium where it runs as root with apt")
    page = (site / "troubleshooting" / "index.html").as_uri()
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={tmp_path / 'p'}",
    ]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'class="md-nav' in dom and "Quick start" in dom and "Exit codes" in dom  # the navigation
    assert "<pre" in dom and "precision gate failed" in dom  # a code block with a quoted message
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, "--window-size=1280,1600", f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True
    )
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 50, "the page rendered blank"
    # Material's indigo header bar: the stylesheet loaded (a bare page has no such band)
    header = sum(count for count, (r, g, b) in colours if b > 150 and r < 100 and g < 120)
    assert header > 1280 * 20, "the site's stylesheet did not apply"
