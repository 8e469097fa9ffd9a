"""The built book renders in a real browser, offline (headless Debian chromium).

Skipped when /usr/bin/chromium is missing (scripts/install_chromium.sh installs it as root) or when the
book has not been built (`make html`).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build" / "html"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1280,2000",
]


def screenshot(page: Path, out: Path, profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_ladder_page_renders(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: /usr/bin/chromium is missing "
                    "(run scripts/install_chromium.sh as root to enable this test)")
    page = BUILD / "book" / "executed" / "06_ladder.html"
    if not page.is_file():
        pytest.skip(f"no built page at {page}: run `make html` first (make test does)")
    import numpy as np
    from PIL import Image

    out = tmp_path / "ladder.png"
    res = screenshot(page, out, tmp_path / "profile")
    assert out.is_file(), f"chromium wrote no screenshot (rc={res.returncode}):\n{res.stderr[-2000:]}"
    with Image.open(out) as im:
        px = np.asarray(im.convert("RGB"), dtype=float)
    assert px.shape[:2] == (2000, 1280), px.shape
    assert px.std() > 0, "the screenshot is blank"
    # Text was drawn: a real page has a sizeable share of non-background pixels.
    assert (px.min(axis=2) < 128).mean() > 0.001, "the screenshot has (almost) no dark pixels: no text?"
