"""The built book is offline-safe and its figures are not blank (scripts/check_html.py).

`make test` builds the HTML first (`make html`); run alone, the build test is skipped when there is no
build. The unit test feeds the checker a tiny fake build so that it is shown to fail when it should.
"""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.support import load_script, png_bytes

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build" / "html"


check_html = load_script("check_html")


def _png(blank: bool) -> bytes:
    return png_bytes(blank)


def test_built_book_is_clean():
    if not (BUILD / "index.html").is_file():
        pytest.skip(f"no built book at {BUILD}/index.html: run `make html` first (make test does)")
    problems = check_html.check_build(BUILD, ROOT / "_toc.yml")
    assert not problems, "\n".join(problems)


def test_checker_reports_external_link_blank_png_and_missing_page(tmp_path):
    build = tmp_path / "html"
    (build / "book").mkdir(parents=True)
    (build / "book" / "fig.png").write_bytes(_png(blank=False))
    blank_b64 = base64.b64encode(_png(blank=True)).decode()
    good_b64 = base64.b64encode(_png(blank=False)).decode()
    (build / "index.html").write_text('<a href="book/intro.html">in</a>')
    (build / "book" / "intro.html").write_text(
        "<html><head>"
        '<script src="https://cdn.example.org/mathjax.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.org/a.css">'
        "</head><body>"
        '<a href="mailto:someone@example.org">mail</a>'
        '<a href="../../outside.html">escape</a>'
        '<a href="missing.html#top">missing</a>'
        '<a href="intro.html#ok">self</a>'
        '<img src="fig.png">'
        f'<img src="data:image/png;base64,{good_b64}">'
        f'<img src="data:image/png;base64,{blank_b64}">'
        "</body></html>"
    )
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/absent\n")

    problems = check_html.check_build(build, toc)
    text = "\n".join(problems)
    assert "https://cdn.example.org/mathjax.js" in text
    assert "//fonts.example.org/a.css" in text
    assert "mailto:" in text
    assert "escapes the build directory" in text
    assert "missing.html" in text
    assert "book/absent.html" in text
    assert sum("blank" in p for p in problems) == 1, text
    assert len(problems) == 7, text

    # the command-line entry point exits 1 and 0
    assert check_html.main([str(build), "--toc", str(toc)]) == 1
    clean = tmp_path / "clean"
    (clean / "book").mkdir(parents=True)
    (clean / "index.html").write_text('<a href="book/intro.html">in</a>')
    (clean / "book" / "intro.html").write_text(f'<img src="data:image/png;base64,{good_b64}">')
    clean_toc = tmp_path / "clean_toc.yml"
    clean_toc.write_text("format: jb-book\nroot: book/intro\n")
    assert check_html.main([str(clean), "--toc", str(clean_toc)]) == 0


def test_built_book_loads_nothing_from_unpkg():
    """sphinx-thebe wrote THEBE_JS_URL (unpkg.com) into every page; _config.yml leaves the extension out."""
    if not (BUILD / "index.html").is_file():
        pytest.skip(f"no built book at {BUILD}/index.html: run `make html` first (make test does)")
    pages = [p for p in BUILD.rglob("*.html") if "unpkg" in p.read_text(encoding="utf-8", errors="replace")]
    assert not pages, f"unpkg.com still named in {[p.relative_to(BUILD).as_posix() for p in pages]}"
    assert not list(BUILD.rglob("sphinx-thebe*")), "sphinx-thebe's assets are still copied into the build"


def test_checker_reads_inline_scripts(tmp_path):
    build = tmp_path / "html"
    build.mkdir()
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: index\n")
    (build / "index.html").write_text(
        "<html><head>\n"
        '<script>const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"</script>\n'
        "<script>\n"
        "// a comment, not a URL\n"
        "importScripts('//cdn.example.org/worker.js');\n"
        "fetch(\"http://data.example.org/rows.json\");\n"
        "el.src = '//cdn.example.org/x.js';\n"
        'var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");\n'
        "</script>\n"
        "</head><body><p>https://example.org in text is not loaded by anything</p></body></html>\n"
    )
    problems = check_html.check_build(build, toc)
    text = "\n".join(problems)
    assert "index.html:2: inline <script> loads 'https://unpkg.com/thebe@0.8.2/lib/index.js'" in text
    assert "index.html:5:" in text and "//cdn.example.org/worker.js" in text
    assert "index.html:6:" in text and "http://data.example.org/rows.json" in text
    assert "index.html:7:" in text and "//cdn.example.org/x.js" in text
    assert "w3.org" not in text and "example.org in text" not in text
    assert len(problems) == 4, text
    assert check_html.main([str(build), "--toc", str(toc)]) == 1

    # the same page with its scripts in-book passes
    (build / "index.html").write_text('<script>DOCUMENTATION_OPTIONS.pagename = "index"; // see notes</script>')
    assert check_html.main([str(build), "--toc", str(toc)]) == 0
