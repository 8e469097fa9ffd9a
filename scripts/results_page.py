#!/usr/bin/env python3
"""Write the book's results page (book/results.md): every run the executed notebooks show, and how to redo it.

Usage:
  python scripts/results_page.py                      the study: book/executed/ + data/results/ -> book/results.md
  python scripts/results_page.py --executed _build/quick/book/executed --results _build/quick/results \\
      --out _build/quick/book/results.md              the quick look, from its own status and rows

Sources, per chapter in _toc.yml order:
  * ``<executed>/status.json``: the runner's last outcome of the chapter (its run id, status, start, seconds,
    re-run command). It is the source of truth for a chapter whose last run succeeded.
  * the executed notebook's outputs: every run id printed there (its environment table, rows read from another
    run). A chapter whose last run failed still shows the previous run, found this way.
  * ``<results>/runs.csv`` (the runner's ledger) and ``<results>/environment/<run_id>.json`` (git SHA, benchmark
    version, machine) for each run.

The page is generated at build time (scripts/build_html.sh) and git-ignored, so it is never stale.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

# page_run and run_version: for the tests, which load this script as a module
from mmdet_speedup.study.ledger import (ChapterRuns, benchmark_version, chapter_runs, load_env,  # noqa: F401
                                        load_ledger, load_status, machine, page_run, run_version, toc_chapters)

ROOT = Path(__file__).resolve().parents[1]


# -- one run's facts ----------------------------------------------------------------------------------------
@dataclass
class Run:
    run_id: str
    chapter: str  # the chapter the run executed
    role: str  # shown | failed | read, on the page of ``page``
    page: str = ""
    git_sha: str = ""
    version: str = ""
    machine: str = ""
    started: str = ""
    seconds: float | None = None
    budget_s: float | None = None
    status: str = ""
    size: str = ""
    rerun: str = ""
    rebuild: str = "make html"


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def describe(run_id: str, chapter: str, role: str, status: dict[str, dict], ledger: dict[str, dict],
             results: Path) -> Run:
    env = load_env(results, run_id)
    row = ledger.get(run_id, {})
    s = status.get(chapter) or {}
    s = s if s.get("run_id") == run_id else {}
    page, chapter = chapter, row.get("chapter") or env.get("notebook") or chapter
    size = row.get("size") or s.get("size") or "study"
    return Run(
        run_id=run_id, chapter=chapter, role=role, page=page,
        git_sha=env.get("git_sha") or row.get("git_sha", ""),
        version=env.get("benchmark_version") or row.get("benchmark_version", ""),
        machine=machine(env),
        started=s.get("started") or row.get("started") or env.get("timestamp", ""),
        seconds=_float(s.get("seconds", row.get("seconds"))),
        budget_s=_float(s.get("budget_s", row.get("budget_s"))),
        status=s.get("status") or row.get("status") or ("not in the ledger" if not row else ""),
        size=size,
        # the status file keeps the exact command (with any -p overrides); the ledger does not
        rerun=s.get("rerun") or f".venv/bin/python scripts/run_study.py {size} {chapter}",
        rebuild=s.get("rebuild") or ("bash scripts/build_html.sh quick" if size == "quick" else "make html"),
    )


def collect(chapters: list[str], executed: Path, results: Path) -> tuple[list[ChapterRuns], list[Run]]:
    status, ledger = load_status(executed), load_ledger(results)
    per_chapter = [chapter_runs(c, executed, results, status, ledger) for c in chapters]
    runs: dict[str, Run] = {}
    for cr in per_chapter:
        for rid, role in ([(cr.shown, "shown")] + [(cr.failed, "failed")] + [(r, "read") for r in cr.reads]):
            if rid and rid not in runs:
                runs[rid] = describe(rid, cr.chapter, role, status, ledger, results)
    return per_chapter, list(runs.values())


# -- the page -----------------------------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _date(started: str) -> str:
    return started.replace("T", " ")[:16] if started else "-"


def _link(chapter: str) -> str:
    return f"[{chapter}](executed/{chapter}.ipynb)"


def _checkout(sha: str) -> list[str]:
    base = sha.removesuffix("-dirty")
    lines = [f"git checkout {base}"] if base else ["# no git SHA recorded"]
    if sha.endswith("-dirty"):
        lines.insert(0, "# the run's working tree had uncommitted changes: this commit is the nearest")
    return lines


def chapters_table(per_chapter: list[ChapterRuns], runs: dict[str, Run], current: str) -> list[str]:
    lines = ["| Chapter | Run shown | Benchmark | Started | Took |", "|---|---|---|---|---|"]
    for cr in per_chapter:
        r = runs.get(cr.shown or "")
        if r is None:
            lines.append(f"| {_link(cr.chapter)} | no successful run | - | - | - |")
            continue
        version = r.version + ("" if r.version == current else " (older)")
        cells = [_link(cr.chapter), f"`{r.run_id}`", version, _date(r.started), _duration(r.seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def run_section(r: Run, current: str) -> list[str]:
    role = {"shown": "the run its page shows",
            "failed": "the chapter's last attempt; it did not succeed, so the page shows the previous run",
            "read": f"rows of this run are printed on {_link(r.page)}"}[r.role]
    version = r.version or "not recorded"
    if r.version and r.version != current and r.role != "failed":
        version += f" (the library is now at {current}: these numbers predate its current measurement)"
    budget = f" of a {_duration(r.budget_s)} budget" if r.budget_s else ""
    return [
        f"### `{r.run_id}`", "",
        f"- chapter: {_link(r.chapter)}, {role}",
        f"- status: {r.status or '-'} ({r.size} size), started {_date(r.started)}, took {_duration(r.seconds)}{budget}",
        f"- git: `{r.git_sha or '-'}`; benchmark version: {version}",
        f"- machine: {r.machine}",
        "", "To reproduce it:", "", "```bash", *_checkout(r.git_sha), r.rerun, r.rebuild, "```", "",
    ]


def other_runs(ledger: dict[str, dict], shown: set[str]) -> list[str]:
    rest = [row for rid, row in ledger.items() if rid not in shown]
    if not rest:
        return []
    lines = ["## Other runs in the ledger", "",
             "Runs recorded in `runs.csv` that no page shows (superseded, failed, interrupted or run elsewhere); "
             "their rows stay in the results.", "",
             "| Run | Chapter | Status | Started | Benchmark |", "|---|---|---|---|---|"]
    for row in rest:
        lines.append(f"| `{row['run_id']}` | {row.get('chapter', '-')} | {row.get('status', '-')} | "
                     f"{_date(row.get('started', ''))} | {row.get('benchmark_version', '-')} |")
    return lines + [""]


def render(chapters: list[str], executed: Path, results: Path, current: str) -> str:
    per_chapter, runs = collect(chapters, executed, results)
    by_id = {r.run_id: r for r in runs}
    ledger = load_ledger(results)
    lines = [
        "# Results: the runs behind each chapter", "",
        "Every chapter page is a notebook executed by `scripts/run_study.py`; each execution is a run, named by "
        "its run id, with its rows in the results CSVs, its environment in "
        "`environment/<run id>.json` and a line in the ledger `runs.csv`. This page is written at build time "
        f"by `scripts/results_page.py` from those records. The library's benchmark version is {current}; "
        "numbers from runs at another version are not comparable with it.", "",
        "## Chapters", "", *chapters_table(per_chapter, by_id, current), "",
        "## Runs", "",
        "Each run with what it ran on and how to run it again: check out its commit, run its chapter with "
        "the runner, then rebuild the book.", "",
    ]
    for r in runs:
        lines += run_section(r, current)
    lines += other_runs(ledger, set(by_id))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executed", type=Path, default=ROOT / "book" / "executed")
    ap.add_argument("--results", type=Path, default=ROOT / "data" / "results")
    ap.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    ap.add_argument("--out", type=Path, default=ROOT / "book" / "results.md")
    args = ap.parse_args(argv)
    text = render(toc_chapters(args.toc), args.executed, args.results, benchmark_version())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"results page: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
