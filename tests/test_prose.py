"""The book's sentences are held to its rows: a comparative or ranking word in a chapter's hand-written
Markdown fails, unless it is inside generated text (a ``{glue:...}`` role, filled from the rows) or the cell
is about method rather than outcome and is marked so (the markdown cell's ``method`` tag)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Hand-written pages only: index.md and results.md are generated at build time (git-ignored).
GENERATED_PAGES = ("index.md", "results.md")
SOURCES = sorted((ROOT / "notebooks").glob("0*.py")) + sorted(
    p for p in (ROOT / "book").glob("*.md") if p.name not in GENERATED_PAGES)
#: Words that compare, rank or explain an outcome (whole words; a ``*`` ends a stem: dominates, dominant, ...).
RANKING = ("faster", "fastest", "slower", "slowest", "quicker", "most", "mostly", "least", "little", "less",
           "more", "best", "worst", "better", "worse", "dominat*", "larger", "largest", "smaller", "smallest",
           "bigger", "biggest", "bound", "bounds", "bounded", "cheaper", "cheapest", "costlier", "expensive",
           "higher", "highest", "lower", "lowest", "win", "wins", "beats", "outperform*", "significant*",
           "negligible", "majority", "bulk", "twice", "halves", "doubles", "bottleneck*")
WORD = re.compile(r"\b(%s)\b" % "|".join(w.replace("*", r"\w*") for w in RANKING), re.I)
#: Names that contain a ranking word without ranking anything.
NAMES = re.compile(r"Faster (R-CNN|FPN|C4)", re.I)
#: What is generated or literal: glue roles, inline code, links' targets, math, HTML comments.
GENERATED = re.compile(r"\{glue(:\w+)?\}`[^`]*`|``[^`]*``|`[^`]*`|\]\([^)]*\)|\$[^$]*\$|<!--.*?-->")
METHOD_TAG = "method"


def markdown_cells(path: Path) -> list[tuple[int, str, bool]]:
    """(first line, text, marked as method) of each markdown cell; a ``.md`` page is read block by block (a
    paragraph, a list item, a table row), each marked method only by its own ``<!-- method -->`` comment."""
    text = path.read_text()
    if path.suffix == ".md":
        return md_blocks(text)
    cells, current = [], None
    for no, line in enumerate(text.splitlines(), 1):
        if line.startswith("# %%"):
            current = None
            if "[markdown]" in line:
                current = [no, [], re.search(r"tags=\[[^\]]*\"%s\"" % METHOD_TAG, line) is not None]
                cells.append(current)
        elif current is not None:
            current[1].append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    return [(no, "\n".join(lines), method) for no, lines, method in cells]


def md_blocks(text: str) -> list[tuple[int, str, bool]]:
    """A Markdown page's blocks: (first line, text, marked ``<!-- method -->``); code fences are one block."""
    blocks, current, fence = [], None, False
    for no, line in enumerate(text.splitlines(), 1):
        starts = line.startswith(("- ", "* ", "| ")) or not line.strip() or line.startswith("#")
        if line.startswith("```"):
            fence = not fence
        if current is None or (starts and not fence):
            current = [no, []]
            blocks.append(current)
        current[1].append(line)
    return [(no, "\n".join(lines), "<!-- method -->" in "\n".join(lines)) for no, lines in blocks
            if "".join(lines).strip()]


def outcome_words(text: str) -> list[str]:
    """Ranking words in the hand-written part of ``text``; fenced code blocks, headings excluded."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        found += [m.group(0) for m in WORD.finditer(NAMES.sub("", GENERATED.sub("", line)))]
    return found


def test_outcome_words_found_outside_generated_text():
    assert outcome_words("bf16 is faster than fp32") == ["faster"]
    assert outcome_words("The backbone dominates the total.") == ["dominates"]
    assert outcome_words("{glue:md}`prec_findings` and `most` in code") == []
    assert outcome_words("{glue:text}`x_verdict` is the verdict; it runs {glue:text}`ratio:.2f`x") == []
    assert outcome_words("## The most expensive stage\nplain text") == []
    assert outcome_words("the ratio ($a$ over the lowest $b$)") == ["lowest"]
    assert outcome_words("Faster R-CNN at box boundaries; the lower bound") == ["lower", "bound"]
    assert outcome_words("the trained Faster FPN and Faster C4 are faster") == ["faster"]


def test_a_page_is_held_block_by_block(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\nA faster path. <!-- method -->\n\n- one item is faster\n- a plain item\n")
    cells = markdown_cells(page)
    assert [(m, outcome_words(t)) for _, t, m in cells] == [
        (False, []), (True, ["faster"]), (False, ["faster"]), (False, [])]


def test_markdown_cells_read_the_method_tag(tmp_path):
    src = tmp_path / "x.py"
    src.write_text('# %% [markdown]\n# faster\n\n# %% [markdown] tags=["method"]\n# faster\n\n# %%\nx = 1\n')
    cells = markdown_cells(src)
    assert [(m, outcome_words(t)) for _, t, m in cells] == [(False, ["faster"]), (True, ["faster"])]


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_hand_written_outcome_claims(path):
    problems = [f"{path.name}:{no}: {', '.join(words)}" for no, text, method in markdown_cells(path)
                if not method and (words := outcome_words(text))]
    assert not problems, ("comparative or ranking words outside generated text (glue the claim from the rows, "
                          "or tag the cell 'method' if it is about method):\n" + "\n".join(problems))
