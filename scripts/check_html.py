#!/usr/bin/env python3
"""Check a built Jupyter Book for offline-safety and broken figures.

Usage: python scripts/check_html.py _build/html [--toc _toc.yml]

Checks, for the build directory given:
  1. every page named in _toc.yml (root and all `file:` entries) exists as HTML;
  2. every `src`/`href` (and `srcset`, `poster`, `data`) in every HTML page points inside the book:
     no http(s)://, protocol-relative //, mailto:, file: or other schemes, no absolute paths, no relative
     path escaping the build directory, and every in-book relative link resolves to an existing file
     (the #fragment and ?query are ignored);
  3. every <img> that is a PNG (a file in the build, or a base64 data: URI embedded by a notebook) decodes
     and is non-blank (pixel standard deviation > 0);
  4. no inline <script> names a URL outside the book: any http(s):// or quoted protocol-relative //host URL in
     its text (a CDN constant, importScripts, fetch(, a string assigned to src) is a problem, reported with
     its line in the page. XML namespace names (http://www.w3.org/...) are identifiers, never fetched.

HTML files under _static/ are theme templates (Jinja source), not pages, and are skipped.
Exit status 0 when clean, 1 with one problem per line otherwise.
"""
from __future__ import annotations

import argparse
import base64
import io
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mmdet_speedup.study.ledger import toc_pages

LINK_ATTRS = {"src", "href", "srcset", "poster", "data"}
ALLOWED_SCHEMES = {"data"}  # inline content only; everything else would leave the book
# A script can load from anywhere it can spell: any absolute URL, or //host in a string literal (a bare //
# starts a comment).
SCRIPT_URL = re.compile(r"""https?://[^\s"'`<>)\\]+|(?<=["'`(])//[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+[^\s"'`<>)\\]*""",
                        re.IGNORECASE)
NAMESPACE_URLS = ("http://www.w3.org/",)  # createElementNS and friends: names, not downloads


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str]] = []  # (tag, attr, value)
        self.scripts: list[tuple[int, str]] = []  # (line where the script's text starts, text)
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._in_script = True
        for name, value in attrs:
            if name in LINK_ATTRS and value is not None:
                if name == "srcset":
                    for part in value.split(","):
                        url = part.strip().split(" ")[0]
                        if url:
                            self.links.append((tag, name, url))
                else:
                    self.links.append((tag, name, value.strip()))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self._in_script = False  # <script/> has no text

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        # HTMLParser hands a script's text over as raw CDATA, in one piece or a few
        if self._in_script and data.strip():
            self.scripts.append((self.getpos()[0], data))


def script_urls(text: str) -> list[tuple[int, str]]:
    """(line offset within ``text``, URL) for every outside URL an inline script names."""
    found = []
    for m in SCRIPT_URL.finditer(text):
        url = m.group(0)
        if not url.lower().startswith(NAMESPACE_URLS):
            found.append((text.count("\n", 0, m.start()), url))
    return found


def _pixels(data: bytes):
    """Decode PNG bytes to a numpy array (Pillow if present, else matplotlib)."""
    import numpy as np

    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGBA"), dtype=float)
    except ImportError:
        import matplotlib.image as mpimg

        return np.asarray(mpimg.imread(io.BytesIO(data), format="png"), dtype=float)


def png_problem(data: bytes) -> str | None:
    """None when the PNG decodes and is non-blank, else a short reason."""
    try:
        px = _pixels(data)
    except Exception as exc:  # noqa: BLE001 - any decode failure is a finding
        return f"PNG does not decode ({type(exc).__name__}: {exc})"
    if px.size == 0:
        return "PNG is empty (0 pixels)"
    if float(px.std()) == 0.0:
        return f"PNG is blank (all {px.shape[0]}x{px.shape[1]} pixels identical)"
    return None


def check_build(build: Path, toc: Path | None = None) -> list[str]:
    build = build.resolve()
    problems: list[str] = []
    if not build.is_dir():
        return [f"{build}: build directory does not exist"]

    if toc is not None:
        if not toc.is_file():
            problems.append(f"{toc}: table of contents not found")
        else:
            for page in toc_pages(toc):
                if not (build / f"{page}.html").is_file():
                    problems.append(f"{page}.html: page named in {toc.name} is missing from the build")

    pages = sorted(p for p in build.rglob("*.html") if "_static" not in p.relative_to(build).parts)
    if not pages:
        problems.append(f"{build}: no HTML pages found")
    png_cache: dict[Path, str | None] = {}

    for page in pages:
        rel_page = page.relative_to(build).as_posix()
        parser = _Collector()
        try:
            parser.feed(page.read_text(encoding="utf-8", errors="replace"))
            parser.close()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{rel_page}: HTML does not parse ({exc})")
            continue
        for line, text in parser.scripts:
            for offset, url in script_urls(text):
                short = url if len(url) <= 80 else url[:77] + "..."
                problems.append(f"{rel_page}:{line + offset}: inline <script> loads {short!r} from outside the book")
        seen: set[tuple[str, str]] = set()
        for tag, attr, url in parser.links:
            if (attr, url) in seen:
                continue
            seen.add((attr, url))
            short = url if len(url) <= 80 else url[:77] + "..."
            where = f"{rel_page}: <{tag} {attr}={short!r}>"
            if url == "" or url.startswith("#"):
                continue
            if url.startswith("//"):
                problems.append(f"{where} is a protocol-relative external link")
                continue
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme and scheme not in ALLOWED_SCHEMES:
                problems.append(f"{where} leaves the book ({scheme}: link)")
                continue
            if scheme == "data":
                head, _, payload = url.partition(",")
                if tag == "img" and head.lower().startswith("data:image/png"):
                    if ";base64" not in head.lower():
                        problems.append(f"{where}: PNG data URI is not base64")
                        continue
                    try:
                        raw = base64.b64decode(payload, validate=False)
                    except Exception as exc:  # noqa: BLE001
                        problems.append(f"{where}: PNG data URI does not decode ({exc})")
                        continue
                    reason = png_problem(raw)
                    if reason:
                        problems.append(f"{rel_page}: embedded <img> {reason}")
                continue
            path = unquote(parts.path)
            if not path:
                continue  # a bare ?query on the page itself
            if path.startswith("/"):
                problems.append(f"{where} is an absolute path (outside the book)")
                continue
            target = (page.parent / path).resolve()
            if target != build and build not in target.parents:
                problems.append(f"{where} escapes the build directory")
                continue
            if target.is_dir() or path.endswith("/"):
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{where} points to a missing file")
                continue
            if tag == "img" and target.suffix.lower() == ".png":
                if target not in png_cache:
                    png_cache[target] = png_problem(target.read_bytes())
                if png_cache[target]:
                    problems.append(f"{where}: {png_cache[target]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", nargs="?", default="_build/html", type=Path)
    ap.add_argument("--toc", type=Path, default=None,
                    help="_toc.yml to check pages against (default: the repository's _toc.yml)")
    args = ap.parse_args(argv)
    toc = args.toc if args.toc is not None else Path(__file__).resolve().parent.parent / "_toc.yml"
    problems = check_build(args.build, toc)
    if problems:
        print(f"check_html: {len(problems)} problem(s) in {args.build}:")
        for p in problems:
            print(f"  - {p}")
        return 1
    n = sum(1 for p in args.build.rglob("*.html") if "_static" not in p.relative_to(args.build).parts)
    print(f"check_html: OK ({n} pages in {args.build}, all links and inline scripts in-book, no blank PNGs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
