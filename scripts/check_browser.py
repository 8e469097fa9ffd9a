#!/usr/bin/env python3
"""Check every page of the built book in headless Chromium at a 1280 px wide window.

Usage: python scripts/check_browser.py _build/html [--toc _toc.yml] [--screenshots DIR]

For each page named in _toc.yml, a copy of the page with a measuring script is opened in a mirror of the build
(symbolic links, so relative assets resolve and the build is never touched). After `load` the script reports:
  * wide: a table, figure, img, svg or cell output wider than the content column (the theme's
    `article.bd-article`). A table inside a horizontally scrolling wrapper still counts: its own width, not the
    wrapper's, is compared. Only the innermost offender is reported.
  * broken: an <img> that did not load (naturalWidth 0: a missing file or undecodable data).
  * blank: an <img> whose pixels are all the same colour (drawn into a canvas).
  * error: a visible Jupyter error output (`.output.error`, `.output.traceback`) or a visible stderr output
    holding a Python traceback. The chapter-failure box (scripts/chapter_status.py) is an admonition, not an
    output, and does not count.
Screenshots (full page, 1280 px wide) of the landing page and the ladder go to DIR (default:
<build>/_screenshots/): landing.png (the toc root, book/index) and ladder.png.

Exit status 0 when clean, 1 with one problem per line (2 when Chromium or the build is missing).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mmdet_speedup.study.ledger import benchmark_version, page_run, run_version, toc_pages

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
WIDTH = 1280
# Offline and quiet: no sync, no component updates, no first-run UI; file pages may read each other's pixels
# (the blank-figure check draws images into a canvas).
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--allow-file-access-from-files",
]
SCREENSHOTS = {"book/index": "landing.png", "book/executed/06_ladder": "ladder.png"}
MAX_SHOT_HEIGHT = 16000  # Chromium's largest texture; longer pages are cut there
REPORT = re.compile(r'<pre id="browser-check"[^>]*>(.*?)</pre>', re.S)  # the theme adds attributes
KINDS = ("wide", "broken", "blank", "error")

# Runs in the page after `load` (and MathJax, which may re-flow it), writes its findings into the DOM as JSON.
PROBE = r"""
(function () {
  const TOL = 1;  // sub-pixel rounding
  function where(el) {
    let s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    const cls = [...el.classList].filter(c => !c.startsWith('docutils')).slice(0, 3);
    if (cls.length) s += '.' + cls.join('.');
    // the n-th of its tag on the page: several tables can share a section
    s += ' no. ' + ([...document.getElementsByTagName(el.tagName)].indexOf(el) + 1);
    const sec = el.closest('section');
    const h = sec && sec.querySelector('h1, h2, h3, h4');
    const title = h ? h.textContent.replace(/[#¶]/g, '').trim().slice(0, 60) : '';
    return title ? s + ' in "' + title + '"' : s;
  }
  function visible(el) {
    if (!el.getClientRects().length) return false;
    const st = getComputedStyle(el);
    return st.display !== 'none' && st.visibility !== 'hidden';
  }
  function collapsed(el) {  // inside a closed <details>: a collapsed full table, a hidden cell; the reader opens it
    return el.closest('details:not([open])') !== null;
  }
  function contentWidth(el) {
    const st = getComputedStyle(el);
    return el.clientWidth - parseFloat(st.paddingLeft) - parseFloat(st.paddingRight);
  }
  function blank(img) {  // true, false, or null when the pixels cannot be read
    try {
      const c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      for (let i = 4; i < d.length; i += 4)
        if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2] || d[i + 3] !== d[3]) return false;
      return true;
    } catch (e) { return null; }
  }
  function report(obj) {
    const pre = document.createElement('pre');
    pre.id = 'browser-check';
    pre.textContent = JSON.stringify(obj);
    document.body.appendChild(pre);
  }
  function check() {
    try { report(measure()); } catch (e) { report({error: 'the probe failed: ' + e}); }
  }
  function measure() {
    const col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
    const colWidth = contentWidth(col);
    const out = {column: {selector: where(col), width: Math.round(colWidth)}, problems: [], counts: {},
                 height: document.documentElement.scrollHeight};
    const wide = [];
    const items = col.querySelectorAll('table, figure, img, svg, .cell_output');
    out.counts.measured = items.length;
    for (const el of items) {
      if (!visible(el) || collapsed(el) || (el.parentElement && el.parentElement.closest('svg'))) continue;  // parts of a drawing
      const w = Math.max(el.getBoundingClientRect().width, el.scrollWidth);
      if (w > colWidth + TOL) wide.push([el, w]);
    }
    for (const [el, w] of wide) {
      if (wide.some(([o]) => o !== el && el.contains(o))) continue;  // report the innermost offender
      out.problems.push({kind: 'wide', what: where(el),
                         detail: Math.round(w) + ' px wide, the column is ' + Math.round(colWidth) + ' px'});
    }
    const imgs = document.querySelectorAll('img');
    out.counts.images = imgs.length;
    for (const img of imgs) {
      const src = (img.getAttribute('src') || '').slice(0, 80);
      if (!img.complete || img.naturalWidth === 0)
        out.problems.push({kind: 'broken', what: where(img), detail: 'image did not load: ' + src});
      else if (blank(img) === true)
        out.problems.push({kind: 'blank', what: where(img),
                           detail: 'all ' + img.naturalWidth + 'x' + img.naturalHeight + ' pixels alike: ' + src});
    }
    for (const el of document.querySelectorAll('.output.error, .output.traceback, .output.stderr')) {
      const text = el.textContent;
      const isError = !el.classList.contains('stderr') || /Traceback \(most recent call last\)/.test(text);
      if (isError && visible(el))
        out.problems.push({kind: 'error', what: where(el), detail: text.trim().split('\n').pop().slice(0, 120)});
    }
    return out;
  }
  window.addEventListener('load', function () {
    const typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
    Promise.resolve(typeset).catch(() => {}).then(() => document.fonts.ready).then(() => setTimeout(check, 200));
  });
})();
"""


@dataclass
class Problem:
    page: str
    kind: str  # wide | broken | blank | error | load
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.what}: {self.detail}"


@dataclass
class PageReport:
    page: str
    problems: list[Problem] = field(default_factory=list)
    column_width: int = 0
    height: int = 0
    counts: dict = field(default_factory=dict)


# -- the mirror of the build --------------------------------------------------------------------------------
def mirror(build: Path, into: Path) -> Path:
    """A tree of symbolic links to the build's files: probe pages can sit beside the originals, untouched."""
    build = build.resolve()
    for folder, _, files in os.walk(build):
        rel = Path(folder).relative_to(build)
        (into / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            os.symlink(Path(folder) / name, into / rel / name)
    return into


def probe_copy(mirrored: Path, page: str) -> Path:
    """The page, with the probe before </body>, written next to the original (same relative links)."""
    original = mirrored / f"{page}.html"
    text = original.read_text(encoding="utf-8")
    script = f"<script>{PROBE}</script>"
    text = text.replace("</body>", script + "</body>", 1) if "</body>" in text else text + script
    copy = original.with_name(f"{original.stem}.browser-check.html")
    copy.write_text(text, encoding="utf-8")
    return copy


# -- Chromium -----------------------------------------------------------------------------------------------
def chromium(args: list[str], profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def measure(page_file: Path, profile: Path) -> dict:
    """The probe's JSON report, or {"error": ...} when the page did not report."""
    try:
        res = chromium([f"--window-size={WIDTH},2000", "--virtual-time-budget=10000", "--dump-dom",
                        page_file.as_uri()], profile)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"chromium did not finish in {exc.timeout:.0f} s"}
    m = REPORT.search(res.stdout)
    if not m:
        return {"error": f"no report from the page (chromium rc={res.returncode}): {res.stderr.strip()[-300:]}"}
    return json.loads(html.unescape(m.group(1)))


def screenshot(page_file: Path, out: Path, height: int, profile: Path) -> subprocess.CompletedProcess:
    """A full-page shot: the window is as tall as the page (capped), 1280 px wide."""
    out.parent.mkdir(parents=True, exist_ok=True)
    h = max(600, min(height, MAX_SHOT_HEIGHT))
    return chromium([f"--window-size={WIDTH},{h}", "--virtual-time-budget=10000", f"--screenshot={out}",
                     page_file.as_uri()], profile)


def check_page(mirrored: Path, page: str, profile: Path) -> PageReport:
    report = PageReport(page)
    if not (mirrored / f"{page}.html").is_file():
        report.problems.append(Problem(page, "load", f"{page}.html", "page missing from the build"))
        return report
    data = measure(probe_copy(mirrored, page), profile)
    if "error" in data:
        report.problems.append(Problem(page, "load", f"{page}.html", data["error"]))
        return report
    report.column_width, report.height = data["column"]["width"], data["height"]
    report.counts = data.get("counts", {})
    report.problems = [Problem(page, p["kind"], p["what"], p["detail"]) for p in data["problems"]]
    return report


# -- which pages are stale ----------------------------------------------------------------------------------
def stale_run(page: str, executed: Path, results: Path, current: str) -> tuple[str, str] | None:
    """(run id, its benchmark version) when the page's notebook comes from a run older than ``current``."""
    run_id = page_run(page, executed, results)
    if not run_id:
        return None
    version = run_version(run_id, results)
    return (run_id, version) if version and version != current else None


# -- the command line ---------------------------------------------------------------------------------------
def check_build(build: Path, toc: Path, screenshots: Path | None = None) -> list[PageReport]:
    with tempfile.TemporaryDirectory(prefix="browser-check-") as tmp:
        mirrored = mirror(build, Path(tmp) / "html")
        reports = []
        for i, page in enumerate(toc_pages(toc)):
            profile = Path(tmp) / f"profile-{i}"
            report = check_page(mirrored, page, profile)
            reports.append(report)
            if screenshots is not None and page in SCREENSHOTS and report.height:
                screenshot(mirrored / f"{page}.html", screenshots / SCREENSHOTS[page], report.height, profile)
        return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", nargs="?", default=ROOT / "_build" / "html", type=Path)
    ap.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    ap.add_argument("--screenshots", type=Path, default=None, help="default: <build>/_screenshots")
    ap.add_argument("--executed", type=Path, default=ROOT / "book" / "executed",
                    help="status.json of the pages' runs, to name stale pages")
    ap.add_argument("--results", type=Path, default=ROOT / "data" / "results")
    args = ap.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"check_browser: {CHROMIUM} is missing (scripts/install_chromium.sh installs it)", file=sys.stderr)
        return 2
    if not (args.build / "index.html").is_file():
        print(f"check_browser: no built book at {args.build} (run `make html`)", file=sys.stderr)
        return 2
    reports = check_build(args.build, args.toc, args.screenshots or args.build / "_screenshots")
    current = benchmark_version()
    problems = []
    for r in reports:
        stale = stale_run(r.page, args.executed, args.results, current)
        note = f" [stale page: run {stale[0]} at benchmark {stale[1]}, library {current}]" if stale else ""
        problems += [f"{p}{note}" for p in r.problems]
    if problems:
        print(f"check_browser: {len(problems)} problem(s) in {len(reports)} pages of {args.build}:")
        print("\n".join(f"  - {p}" for p in problems))
        return 1
    print(f"check_browser: OK ({len(reports)} pages of {args.build} at {WIDTH} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
