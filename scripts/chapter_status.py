"""Sphinx extension: a chapter whose last run failed says so at the top of its page.

``scripts/run_study.py`` writes ``status.json`` beside the executed notebooks; the notebook itself is the
previous successful copy (or a placeholder) and is never edited. The box is added to the page's doctree at
build time, so it appears and disappears with the status file alone.
"""
from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes

FAILED = ("failed", "interrupted")


def _status(srcdir: str, docname: str) -> dict | None:
    path = Path(srcdir) / Path(docname).parent / "status.json"
    try:
        return json.loads(path.read_text()).get(Path(docname).name)
    except (OSError, ValueError):
        return None


def failure_box(s: dict) -> nodes.Element:
    box = nodes.admonition(classes=["warning", "chapter-failed"])
    box += nodes.title(text=f"The last run of this chapter {s['status']}")
    p = nodes.paragraph()
    p += nodes.Text(f"Run {s['run_id']} (started {s['started']}, {s['size']} size) {s['status']} after "
                    f"{s['seconds']:.0f} s: ")
    p += nodes.strong(text=s["message"])
    p += nodes.Text(". What this page shows is the previous successful run, unchanged; the failed run's rows "
                    "stay in the results, marked in runs.csv, and no chart uses them.")
    box += p
    again = nodes.paragraph()
    again += nodes.Text("Re-run it with ")
    again += nodes.literal(text=s["rerun"])
    again += nodes.Text(" then ")
    again += nodes.literal(text=s.get("rebuild") or "make html")
    again += nodes.Text("." + (f" The failed notebook is kept at {s['failed_copy']}." if s.get("failed_copy") else ""))
    box += again
    return box


def add_failure_box(app, doctree) -> None:
    s = _status(app.srcdir, app.env.docname)
    if not s or s.get("status") not in FAILED:
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    parent, index = (section, 1) if section is not None else (doctree, 0)
    parent.insert(index, failure_box(s))


def outdated(app, env, added, changed, removed) -> list[str]:
    """Pages with a status entry are re-read every build: the status file changes without the notebook."""
    return [d for d in env.found_docs if _status(app.srcdir, d) is not None]


def setup(app):
    app.connect("doctree-read", add_failure_box)
    app.connect("env-get-outdated", outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
