"""Execute the chapters with papermill; a slow machine finishes late, a failed chapter never breaks the book.

    run_study.py study [chapters...]   study size (notebooks/params/<name>.yml) -> book/executed/, rows -> data/results/
    run_study.py quick [chapters...]   CI size -> _build/quick/book/executed/, rows -> _build/quick/results/
    run_study.py ci [chapters...]      CI size -> tests/nbval/ (nbval references), rows -> a throw-away folder

``--device cuda`` runs every chapter on the GPU (``device="cuda"`` injected) into its own run set: the executed
notebooks and their status.json go to ``executed-cuda/`` beside ``executed/`` (which it leaves alone); the rows go
to the same CSVs, told apart by their device and GPU columns. ``--device cpu`` injects ``device="cpu"`` into the
CPU run set; ``auto`` is the GPU's set where torch sees one, else the CPU's; no ``--device`` leaves each chapter
its own default (``device="auto"``).

Each chapter runs in its own papermill process into a temporary file, moved into place only when the chapter
succeeds: a failed or interrupted chapter leaves the previous executed copy as it was. A budget is a guide: a
chapter that runs past it finishes and is reported; only the ceiling (CEILING_FACTOR x budget) stops it, and
that is a failure like any other. Every chapter's outcome goes to ``<out>/status.json`` (the book shows a
failure on the chapter's page) and to ``runs.csv`` beside the rows (a failed run's rows stay, marked by it).
The exit status is non-zero when any chapter failed, after all chapters ran.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mmdet_speedup.accuracy import PASSES_ENV
from mmdet_speedup.records import BENCHMARK_VERSION
from mmdet_speedup.study import ledger
from mmdet_speedup.study.ledger import Outcome, write_ledger, write_status

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: Seconds a chapter is expected to take at study size, about 1.5x its last measured time (runs.csv holds them):
#: a guide, not a limit.
BUDGETS = {"00_model": 900, "01_preprocess": 350, "02_precision": 650, "03_masks": 150, "04_nms": 1300, "05_loading": 600,
           "06_ladder": 2400, "07_runtimes": 3000}
CI_BUDGET = 180
CEILING_FACTOR = float(os.environ.get("CEILING_FACTOR", 4))


def defaults(chapter: str) -> dict:
    return ledger.defaults(NOTEBOOKS, chapter)


OUT = {"study": ROOT / "book" / "executed", "quick": ROOT / "_build" / "quick" / "book" / "executed",
       "ci": ROOT / "tests" / "nbval"}
DEVICES = ("cpu", "cuda", "auto")


class ParameterError(ValueError):
    pass


# -- parameters ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def book_order() -> list[str]:
    """Every chapter (notebooks/0*.py) in the book's order (_toc.yml), so a later chapter can read an earlier one's
    rows; a chapter missing from the table of contents runs last."""
    names = sorted(f.stem for f in NOTEBOOKS.glob("0*.py"))
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = [Path(c["file"]).name for c in toc.get("chapters", []) if "file" in c]
    return [n for n in listed if n in names] + [n for n in names if n not in listed]


def _type_name(v) -> str:
    return "none" if v is None else type(v).__name__


def _same_kind(default, value) -> bool:
    if default is None or value is None:
        return True  # an optional parameter (checkpoint=None) takes a value, and a value may be cleared
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        kinds = {_type_name(d) for d in default}
        return isinstance(value, list) and (len(kinds) != 1 or all(_same_kind(default[0], v) for v in value))
    return type(default) is type(value)


def check_types(chapter: str, params: dict) -> None:
    """A parameter the chapter does not have, or of another type than its default, stops before any work.

    Values (a positive count, a WxH size) are the chapter's own to check (``mmdet_speedup.checks``).
    """
    known = defaults(chapter)
    for name, value in params.items():
        if name not in known:
            raise ParameterError(f"{chapter}: no parameter {name!r} (it has: {', '.join(known)})")
        if not _same_kind(known[name], value):
            raise ParameterError(f"{chapter}: parameter {name} must be {_type_name(known[name])} like its default "
                                 f"{known[name]!r}, got {_type_name(value)} {value!r}")


def chapter_parameters(chapter: str, size: str, overrides: dict) -> dict:
    params = {}
    yml = NOTEBOOKS / "params" / f"{chapter}.yml"
    if size == "study" and yml.is_file():
        params.update(yaml.safe_load(yml.read_text()) or {})
    params.update({k: v for k, v in overrides.items() if k in defaults(chapter)})
    check_types(chapter, params)
    return params


def parse_overrides(pairs: list[list[str]]) -> dict:
    return {name: yaml.safe_load(value) for name, value in pairs}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | None) -> str | None:
    """The device every chapter gets (None: each keeps its default); ``cuda`` without a GPU stops here."""
    if device is not None and device not in DEVICES:
        raise ParameterError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ParameterError("--device cuda: torch sees no CUDA device (install a CUDA build of torch and "
                             "torchvision, and check nvidia-smi)")
    return device


def out_dir_for(size: str, device: str | None) -> Path:
    """Where a size's executed notebooks go: a CUDA run is its own run set, ``executed-cuda`` beside ``executed``."""
    if device != "cuda":
        return OUT[size]
    if size == "ci":
        raise ParameterError("--device cuda has no ci size: the nbval references are the CPU run's")
    return OUT[size].with_name(OUT[size].name + "-cuda")


# -- records ------------------------------------------------------------------------------------------------
def error_line(notebook: Path, stderr: str) -> str:
    """The error's last line: the failing cell's ``ename: evalue``, else papermill's last stderr line."""
    try:
        nb = json.loads(notebook.read_text())
        for cell in nb.get("cells", []):
            for o in cell.get("outputs", []):
                if o.get("output_type") == "error":
                    value = (o.get("evalue") or "").strip().splitlines()
                    return f"{o.get('ename')}: {value[-1] if value else ''}".strip()
    except (OSError, ValueError):
        pass
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "papermill failed without a message"


# -- running ------------------------------------------------------------------------------------------------
def _stop(proc: subprocess.Popen) -> None:
    """End papermill and its kernel (their own process group), politely first."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def hide_injected(notebook: Path) -> None:
    """Collapse papermill's injected-parameters cell, like the chapter's own parameters cell (``hide-cell``): the
    reader sees results first. Only a tag changes; the cell and its parameters stay in the notebook."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            tags.append("hide-cell")
    nbformat.write(nb, notebook)


def run_chapter(chapter: str, size: str, out_dir: Path, results: Path, params: dict, budget: float,
                rerun: str, device: str | None = None) -> Outcome:
    from mmdet_speedup.records import new_run_id

    # In progress and failed copies live under _build/ (never parsed by the book), apart from ``out_dir``.
    (ROOT / "_build").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{chapter}-", dir=ROOT / "_build"))
    run_id = new_run_id()
    started = dt.datetime.now().isoformat(timespec="seconds")
    tmp_nb = work / f"{chapter}.ipynb"
    source = work / f"{chapter}.source.ipynb"
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "-q", "-o", str(source),
                    str(NOTEBOOKS / f"{chapter}.py")], check=True)
    params_file = work / f"{chapter}.params.yml"
    params_file.write_text(yaml.safe_dump(params))
    # every mode names the rows' folder: a chapter never falls back on the library's own search for it
    env = dict(os.environ, MMDET_SPEEDUP_RESULTS=str(results), MMDET_SPEEDUP_RUN_ID=run_id)
    env.pop("MPLBACKEND", None)  # figures vanish from executed notebooks under Agg
    cmd = [sys.executable, "-m", "papermill", str(source), str(tmp_nb), "-f", str(params_file), "--cwd",
           str(NOTEBOOKS), "-k", "python3", "--no-progress-bar", "--log-level", "WARNING"]
    ceiling = budget * CEILING_FACTOR
    print(f"=== {chapter} ({size}, budget {budget:.0f} s, run {run_id})", flush=True)
    t0 = time.monotonic()
    # Its own session: Ctrl-C reaches this runner, which then stops papermill and says what it kept.
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    outcome = Outcome(chapter, "ok", 0.0, budget, run_id, started, size, rerun=rerun,
                      rebuild="bash scripts/build_html.sh quick" if size == "quick" else "make html",
                      device=device or "")
    try:
        try:
            _, stderr = proc.communicate(timeout=ceiling)
        except subprocess.TimeoutExpired:
            _stop(proc)
            stderr = ""
            outcome.status = "failed"
            outcome.message = f"stopped at the ceiling of {ceiling:.0f} s ({CEILING_FACTOR:g} x the budget)"
    except KeyboardInterrupt:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
        outcome.status, outcome.seconds = "interrupted", time.monotonic() - t0
        outcome.message = "Ctrl-C"
        return outcome
    outcome.seconds = time.monotonic() - t0
    if outcome.status == "ok" and proc.returncode != 0:
        outcome.status, outcome.message = "failed", error_line(tmp_nb, stderr)
        sys.stderr.write(stderr[-4000:])
    if outcome.succeeded:
        hide_injected(tmp_nb)
        shutil.move(tmp_nb, out_dir / f"{chapter}.ipynb")
        if outcome.seconds > budget:
            outcome.status = "over budget"
            outcome.message = f"{chapter} took {outcome.seconds:.0f} s, budget {budget:.0f} s"
    elif tmp_nb.exists():
        failed = ROOT / "_build" / "failed" / (size + ("-cuda" if device == "cuda" else "")) / f"{chapter}.ipynb"
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp_nb, failed)
        outcome.failed_copy = str(failed.relative_to(ROOT))
    shutil.rmtree(work, ignore_errors=True)
    return outcome


def placeholder(out_dir: Path, chapter: str) -> None:
    """A page for a chapter that has never succeeded here, so the book still builds; the failure shows on it."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {chapter}\n\nThis chapter has no successful run in this folder "
                                               "yet; the box above says what happened to the last one.")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(out_dir / f"{chapter}.ipynb"))


def summary(outcomes: list[Outcome]) -> str:
    rows = [("chapter", "time", "budget", "status")]
    for o in outcomes:
        note = o.status if o.succeeded else f"{o.status}: {o.message}"
        rows.append((o.chapter, f"{o.seconds:.0f} s", f"{o.budget_s:.0f} s", note))
    rows.append(("total", f"{sum(o.seconds for o in outcomes):.0f} s",
                 f"{sum(o.budget_s for o in outcomes):.0f} s", ""))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]}".rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("size", choices=sorted(OUT))
    p.add_argument("chapters", nargs="*", help="chapter names (default: every notebooks/0*.py)")
    p.add_argument("--out", type=Path, help="folder for the executed notebooks (default: by size)")
    p.add_argument("--results", type=Path, help="folder for the rows (default: by size)")
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a parameter for every chapter that has it (YAML value), e.g. -p threads 4")
    p.add_argument("--budget", type=float, help="one budget in seconds for every chapter (default: per chapter)")
    p.add_argument("--device", choices=DEVICES, help="the device parameter of every chapter; cuda writes its own "
                   "run set (executed-cuda/). Default: each chapter's own (auto), into executed/")
    a = p.parse_intermixed_args(argv)  # options before or after the chapters: `study --device cpu 01_preprocess`

    chapters = a.chapters or book_order()
    try:  # every chapter's parameters are checked before the first one runs
        for c in chapters:
            if not (NOTEBOOKS / f"{c}.py").is_file():
                raise ParameterError(f"no such chapter: notebooks/{c}.py")
        overrides = parse_overrides(a.p)
        unknown = [k for k in overrides if not any(k in defaults(c) for c in chapters)]
        if unknown:
            raise ParameterError(f"no chapter has parameter(s) {', '.join(unknown)}")
        # ``-p device cuda`` is ``--device cuda``: GPU rows never land in the CPU run set
        device = resolve_device(a.device or overrides.pop("device", None))
        out_dir = (a.out or out_dir_for(a.size, device)).resolve()
        if device is not None:
            overrides["device"] = device
        params = {c: chapter_parameters(c, "study" if a.size == "study" else "ci", overrides) for c in chapters}
    except (ParameterError, yaml.YAMLError, SyntaxError, ValueError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    if a.results:
        results = a.results.resolve()
    elif a.size == "study":
        results = ROOT / "data" / "results"
    elif a.size == "quick":
        results = out_dir.parents[1] / "results"
    else:  # nbval references: their rows are thrown away
        results = Path(tempfile.mkdtemp(prefix="nbval-rows-"))
        atexit.register(shutil.rmtree, results, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    # one folder of accuracy passes for this run set: a pass a chapter made serves the later chapters
    passes = tempfile.mkdtemp(prefix="passes-")
    atexit.register(shutil.rmtree, passes, ignore_errors=True)
    os.environ[PASSES_ENV] = passes

    from mmdet_speedup.environment import git_sha

    sha = git_sha(ROOT)
    on = f" on {device}" if device else ""
    print(f"study ({a.size}{on}): {len(chapters)} chapter(s) -> {out_dir}, rows -> {results}, git {sha}", flush=True)
    outcomes: list[Outcome] = []
    for c in chapters:
        budget = a.budget or (BUDGETS.get(c, 600) if a.size == "study" else CI_BUDGET)
        extra = "".join(f" -p {k} {shlex.quote(json.dumps(v))}" for k, v in overrides.items()
                        if k in defaults(c) and k != "device")
        extra += f" --device {device}" if device else ""
        rerun = f".venv/bin/python scripts/run_study.py {a.size} {c}{extra}"
        o = run_chapter(c, a.size, out_dir, results, params[c], budget, rerun, device)
        outcomes.append(o)
        write_ledger(results, o, sha, BENCHMARK_VERSION)
        if a.size != "ci":  # nbval references get neither a status file nor a placeholder to replay
            write_status(out_dir, o)
            if not (out_dir / f"{c}.ipynb").exists():
                placeholder(out_dir, c)
        if o.status == "interrupted":
            print(f"\ninterrupted in {c} after {o.seconds:.0f} s: {out_dir / c}.ipynb is unchanged; the rows it "
                  f"wrote stay in {results} under run {o.run_id}, marked interrupted in runs.csv", file=sys.stderr)
            print(summary(outcomes), file=sys.stderr)
            return 130
        verdict = {"ok": "", "over budget": " (over budget)"}.get(o.status, f" FAILED: {o.message}")
        print(f"=== {c} took {o.seconds:.0f} s, budget {budget:.0f} s{verdict}", flush=True)
    print("\n" + summary(outcomes))
    failed = [o.chapter for o in outcomes if not o.succeeded]
    if failed:
        print(f"\n{len(failed)} chapter(s) failed: {', '.join(failed)}. Their pages keep the previous run and say "
              "so; re-run one with the command on its page.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
