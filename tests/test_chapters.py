"""The chapters are story: code moves into the library, so a chapter's code is no longer than its prose."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.py"))


def line_counts(text: str) -> tuple[int, int]:
    """Non-blank lines of code cells and of markdown cells in a jupytext percent source, header excluded."""
    code = markdown = 0
    kind = None
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
        elif kind and line.strip():
            code, markdown = (code + 1, markdown) if kind == "code" else (code, markdown + 1)
    return code, markdown


def test_line_counts_skip_header_and_blank_lines():
    src = "# ---\n# jupyter: x\n# ---\n\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\ny = 2\n"
    assert line_counts(src) == (2, 3)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_code_no_longer_than_markdown(path):
    code, markdown = line_counts(path.read_text())
    assert code <= markdown, f"{path.name}: {code} code lines against {markdown} markdown lines"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_has_no_hand_rolled_mechanics(path):
    """What the library owns is not re-done in a chapter: no eval, no parameter lists, no seed-figure filtering."""
    text = path.read_text()
    assert "eval(" not in text
    assert "book.start(" not in text and "seed_figures()" not in text
    assert re.search(r"^ch = book\.Chapter\(\"%s\", globals\(\)\)$" % re.escape(path.stem), text, re.M)
