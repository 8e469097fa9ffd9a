"""Every page of the built book, in a real browser, offline (headless Debian chromium, scripts/check_browser.py).

One test per page in _toc.yml at a 1280 px wide window: no table or figure wider than the content column, no
broken or blank figure, no visible error output. A page whose notebook comes from a run at an older benchmark
version than the library's is stale: its width problems are expected failures (xfail) until it is re-run;
broken figures and errors still fail. The checker itself is shown to fail on synthetic pages.

Skipped when /usr/bin/chromium is missing (scripts/install_chromium.sh installs it as root) or when the
book has not been built (`make html`).
"""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.support import load_script, png_bytes

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build" / "html"


check_browser = load_script("check_browser")
PAGES = check_browser.toc_pages(ROOT / "_toc.yml")


def _need_chromium() -> None:
    if not check_browser.CHROMIUM.exists():
        pytest.skip(f"chromium not installed: {check_browser.CHROMIUM} is missing "
                    "(run scripts/install_chromium.sh as root to enable this test)")


def _need_build() -> None:
    if not (BUILD / "index.html").is_file():
        pytest.skip(f"no built book at {BUILD}/index.html: run `make html` first (make test does)")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> Path:
    _need_chromium()
    _need_build()
    return check_browser.mirror(BUILD, tmp_path_factory.mktemp("browser") / "html")


def _current_version() -> str:
    from mmdet_speedup.records import BENCHMARK_VERSION

    return BENCHMARK_VERSION


def _assert_screenshot(path: Path) -> None:
    import numpy as np
    from PIL import Image

    assert path.is_file(), f"chromium wrote no screenshot at {path}"
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"), dtype=float)
    assert px.shape[1] == check_browser.WIDTH and px.shape[0] >= 600, px.shape
    assert px.std() > 0, "the screenshot is blank"
    # Text was drawn: a real page has a sizeable share of dark pixels.
    assert (px.min(axis=2) < 128).mean() > 0.001, "the screenshot has (almost) no dark pixels: no text?"


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(page, mirrored, tmp_path):
    report = check_browser.check_page(mirrored, page, tmp_path / "profile")
    if page in check_browser.SCREENSHOTS:
        shot = BUILD / "_screenshots" / check_browser.SCREENSHOTS[page]
        check_browser.screenshot(mirrored / f"{page}.html", shot, report.height, tmp_path / "profile")
        _assert_screenshot(shot)
    hard = [str(p) for p in report.problems if p.kind != "wide"]
    assert not hard, "\n".join(hard)
    wide = [str(p) for p in report.problems if p.kind == "wide"]
    if not wide:
        return
    current = _current_version()
    stale = check_browser.stale_run(page, ROOT / "book" / "executed", ROOT / "data" / "results", current)
    if stale:
        pytest.xfail(f"stale page: run {stale[0]} is at benchmark version {stale[1]}, the library at {current}; "
                     f"re-run the chapter. Too wide today:\n" + "\n".join(wide))
    pytest.fail("\n".join(wide))


# -- the checker fails when it should -----------------------------------------------------------------------
def _png(blank: bool) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(blank, (20, 30))).decode()


def _page(body: str) -> str:
    """A page laid out like the theme: a 600 px content column, `article.bd-article`."""
    return ("<!DOCTYPE html><html><head><style>body{margin:0;font-family:sans-serif}"
            "article.bd-article{width:600px;padding:0 20px}"
            ".cell_output{overflow-x:auto}</style></head><body><main><article class='bd-article'>"
            f"<section><h1>Case</h1>{body}</section></article></main></body></html>")


WIDE_TABLE = "<table style='width:1500px'><tr><td>wide</td></tr></table>"
CASES = {
    "a too-wide table": (WIDE_TABLE, ["wide"]),
    "a too-wide table collapsed in a closed details": (
        f"<details><summary>All columns</summary><div style='overflow-x:auto'>{WIDE_TABLE}</div></details>", []),
    "a too-wide table in an open details": (f"<details open><summary>All</summary>{WIDE_TABLE}</details>", ["wide"]),
    "a too-wide table in a scrolling output": (
        f"<div class='cell_output'><div class='output text_html'>{WIDE_TABLE}</div></div>", ["wide"]),
    "a table within the column": ("<table><tr><td>a</td><td>b</td></tr></table>", []),
    "a missing image": ("<img src='no_such_figure.png'>", ["broken"]),
    "a blank image": (f"<img src='{_png(blank=True)}'>", ["blank"]),
    "a figure": (f"<figure><img src='{_png(blank=False)}'></figure>", []),
    "a visible traceback": (
        "<div class='cell_output'><div class='output traceback'><pre>Traceback (most recent call last):\n"
        "ValueError: boom</pre></div></div>", ["error"]),
    "a traceback on stderr": (
        "<div class='output stderr'><pre>Traceback (most recent call last):\nKeyError: 'x'</pre></div>",
        ["error"]),
    "a warning on stderr": ("<div class='output stderr'><pre>FutureWarning: deprecated</pre></div>", []),
    "a hidden error output": ("<div class='output error' style='display:none'>NameError</div>", []),
    "the chapter-failure admonition": (
        "<div class='admonition warning chapter-failed'><p class='admonition-title'>The last run of this "
        "chapter failed</p><p>Traceback (most recent call last): InputError: threads must be positive</p></div>",
        []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_checker_on_a_synthetic_page(case, tmp_path):
    _need_chromium()
    body, expected = CASES[case]
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "page.html").write_text(_page(body))
    report = check_browser.check_page(tmp_path / "html", "page", tmp_path / "profile")
    assert report.column_width == 600, report
    assert sorted(p.kind for p in report.problems) == expected, [str(p) for p in report.problems]


def test_command_line_exits_1_and_0_and_writes_screenshots(tmp_path):
    _need_chromium()
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/index\nchapters:\n  - file: book/chapter\n")
    build = tmp_path / "html"
    (build / "book").mkdir(parents=True)
    (build / "index.html").write_text('<a href="book/index.html">in</a>')
    (build / "book" / "index.html").write_text(_page("<p>" + "Some words. " * 200 + "</p>"))
    (build / "book" / "chapter.html").write_text(_page(WIDE_TABLE))
    shots = tmp_path / "shots"
    args = [str(build), "--toc", str(toc), "--screenshots", str(shots)]
    assert check_browser.main(args) == 1
    _assert_screenshot(shots / "landing.png")
    (build / "book" / "chapter.html").write_text(_page("<p>fine</p>"))
    assert check_browser.main(args) == 0


def test_stale_page_is_named_by_its_run(tmp_path):
    """A chapter page maps to its run (status.json) and the run to its benchmark version (environment JSON)."""
    import json

    executed, results = tmp_path / "executed", tmp_path / "results"
    (results / "environment").mkdir(parents=True)
    executed.mkdir()
    (executed / "01_x.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                     "nbformat_minor": 5}))
    (executed / "status.json").write_text(json.dumps({"01_x": {"status": "ok", "run_id": "20260101T000000-aaaaaa"}}))
    env = results / "environment" / "20260101T000000-aaaaaa.json"
    env.write_text(json.dumps({"benchmark_version": "1.0"}))
    assert check_browser.stale_run("book/executed/01_x", executed, results, "2.0") == ("20260101T000000-aaaaaa", "1.0")
    assert check_browser.stale_run("book/executed/01_x", executed, results, "1.0") is None
    assert check_browser.stale_run("book/intro", executed, results, "2.0") is None
