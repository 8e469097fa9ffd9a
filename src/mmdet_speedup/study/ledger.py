"""The run ledger: which runs the study made, what each page shows, and where their records are.

Torch-free, so the scripts that build the book (results page, landing page, GPU pages, browser check) and the
study runner import it like any module. ``runs.csv`` beside the rows holds one line per chapter run;
``environment/<run_id>.json`` the machine and settings; ``status.json`` beside the executed notebooks the
outcome of each chapter's last run.
"""
from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cpu import cpu_label
from ..records import BENCHMARK_VERSION, append_rows

#: The GPU run set's folder of executed notebooks, beside ``executed/``.
CUDA = "executed-cuda"
LEDGER_COLUMNS = ("run_id", "chapter", "size", "status", "seconds", "budget_s", "started", "git_sha",
                  "benchmark_version", "message", "device")
@dataclass
class Outcome:
    """One chapter run, as the ledger and ``status.json`` hold it."""

    chapter: str
    status: str  # ok | over budget | failed | interrupted
    seconds: float
    budget_s: float
    run_id: str
    started: str
    size: str
    message: str = ""
    rerun: str = ""
    rebuild: str = ""
    failed_copy: str = ""
    device: str = ""  # the injected device parameter ("" where the chapter kept its own default)

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED


RUN_ID = re.compile(r"\b\d{8}T\d{6}-[0-9a-f]{6}\b")
SUCCEEDED = ("ok", "over budget")


# -- reading the records ------------------------------------------------------------------------------------
def benchmark_version() -> str:
    """The benchmark version rows are written under now (``records.BENCHMARK_VERSION``)."""
    return BENCHMARK_VERSION


def load_status(executed: Path) -> dict[str, dict]:
    try:
        return json.loads((executed / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def load_ledger(results: Path) -> dict[str, dict]:
    """runs.csv by run id (a run id is written once, when its chapter ends)."""
    try:
        with (results / "runs.csv").open(newline="") as f:
            return {row["run_id"]: row for row in csv.DictReader(f)}
    except OSError:
        return {}


def load_env(results: Path, run_id: str) -> dict:
    try:
        return json.loads((results / "environment" / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return {}


def toc_chapters(toc: Path) -> list[str]:
    """Executed-notebook pages in the table of contents, by file stem, in book order."""
    import yaml

    data = yaml.safe_load(toc.read_text()) or {}
    files = [c["file"] for c in data.get("chapters", []) if isinstance(c, dict) and "file" in c]
    return [Path(f).name for f in files if Path(f).parent.name == "executed"]


def output_run_ids(notebook: Path) -> list[str]:
    """Run ids printed in the notebook's outputs (not its sources), first appearance first."""
    try:
        nb = json.loads(notebook.read_text())
    except (OSError, ValueError):
        return []
    seen: dict[str, None] = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            for rid in RUN_ID.findall(json.dumps(out)):
                seen.setdefault(rid, None)
    return list(seen)


# -- which runs a chapter's page refers to ------------------------------------------------------------------
@dataclass
class ChapterRuns:
    chapter: str
    shown: str | None  # the run whose notebook the page is
    failed: str | None = None  # the last attempt, when it failed (the page keeps the previous run)
    reads: list[str] = field(default_factory=list)  # other runs whose rows the page prints


def _own_run(ids: list[str], chapter: str, results: Path, ledger: dict[str, dict]) -> str | None:
    """Of the run ids in a notebook, the one that executed it: its records name this chapter."""
    for rid in ids:
        if ledger.get(rid, {}).get("chapter") == chapter or load_env(results, rid).get("notebook") == chapter:
            return rid
    return ids[0] if ids else None


def chapter_runs(chapter: str, executed: Path, results: Path, status: dict[str, dict] | None = None,
                 ledger: dict[str, dict] | None = None) -> ChapterRuns:
    status = load_status(executed) if status is None else status
    ledger = load_ledger(results) if ledger is None else ledger
    s = status.get(chapter) or {}
    ids = output_run_ids(executed / f"{chapter}.ipynb")
    if s.get("run_id") and s.get("status") in SUCCEEDED:
        shown, failed = s["run_id"], None
    else:
        shown, failed = _own_run(ids, chapter, results, ledger), s.get("run_id")
    return ChapterRuns(chapter, shown, failed, [r for r in ids if r not in (shown, failed)])


def page_run(page: str, executed: Path, results: Path) -> str | None:
    """The run a page (``book/executed/<chapter>``) was executed by; None for pages that are not notebooks."""
    chapter = Path(page).name
    if not (executed / f"{chapter}.ipynb").is_file():
        return None
    return chapter_runs(chapter, executed, results).shown


def run_version(run_id: str, results: Path) -> str | None:
    """A run's benchmark version: its environment record, else the ledger."""
    return load_env(results, run_id).get("benchmark_version") or load_ledger(results).get(run_id, {}).get(
        "benchmark_version") or None


def machine(env: dict) -> str:
    """CPU model, cores, matrix ISA and the GPU (or none), from the environment record."""
    if not env:
        return "not recorded"
    flags = " ".join(env.get("cpu_flags") or []) or "no bf16/AMX"
    cpu = f"{cpu_label(env)}, {env.get('cpu_count', '?')} cores ({flags})"
    gpu = env.get("gpu")
    if gpu:
        return f"{cpu}; GPU {gpu} (CUDA {env.get('cuda') or '?'})"
    return f"{cpu}; no GPU, device cpu"


def toc_pages(toc_path: Path) -> list[str]:
    """All document paths (no suffix) named in a jb-book _toc.yml."""
    import yaml

    data = yaml.safe_load(toc_path.read_text())
    pages: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    pages.append(node[key])
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    out = []
    for page in pages:
        for suffix in (".md", ".ipynb", ".rst", ".py"):
            if page.endswith(suffix):
                page = page[: -len(suffix)]
        out.append(page)
    return out


def write_status(out_dir: Path, outcome: Outcome) -> None:
    """``status.json`` beside the executed notebooks: the book's build reads it to flag a failed chapter."""
    path = out_dir / "status.json"
    status = json.loads(path.read_text()) if path.is_file() else {}
    status[outcome.chapter] = asdict(outcome)
    path.write_text(json.dumps(dict(sorted(status.items())), indent=1) + "\n")


def write_ledger(results: Path, outcome: Outcome, git_sha: str, version: str) -> None:
    row = {**asdict(outcome), "seconds": round(outcome.seconds, 1), "git_sha": git_sha,
           "benchmark_version": version}
    append_rows(results / "runs.csv", [row], LEDGER_COLUMNS)


def defaults(notebooks: Path, chapter: str) -> dict[str, Any]:
    """The chapter's parameters cell (``notebooks/<chapter>.py``), as literal values (the types a parameter must
    keep)."""
    src = (Path(notebooks) / f"{chapter}.py").read_text()
    lines, inside = [], False
    for line in src.splitlines():
        if line.startswith("# %%"):
            if inside:
                break
            inside = '"parameters"' in line.partition("tags=")[2]  # papermill's tag, among others ("hide-cell")
            continue
        if inside:
            lines.append(line)
    out = {}
    for node in ast.parse("\n".join(lines)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


