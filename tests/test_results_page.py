"""The results page (scripts/results_page.py): every run the executed notebooks show, and how to redo it."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mmdet_speedup.study import ledger
from tests.support import load_script

ROOT = Path(__file__).resolve().parent.parent


results_page = load_script("results_page")

OK, FAILED, PREVIOUS, READ = ("20261201T100000-aaaaaa", "20261201T110000-bbbbbb", "20261130T090000-cccccc",
                              "20261129T080000-dddddd")
OLD = "20261128T070000-eeeeee"


def _notebook(path: Path, printed: list[str]) -> None:
    """A notebook whose outputs print run ids (its sources name another, which must not count)."""
    cells = [{"cell_type": "code", "source": ["# run 20260101T000000-ffffff in a comment"], "metadata": {},
              "execution_count": 1, "outputs": [{"output_type": "stream", "name": "stdout", "text": [f"run {r}\n"]}
                                                for r in printed]}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def _env(results: Path, run_id: str, chapter: str, version: str, sha: str, gpu: str | None = None) -> None:
    (results / "environment" / f"{run_id}.json").write_text(json.dumps({
        "run_id": run_id, "notebook": chapter, "benchmark_version": version, "git_sha": sha,
        "timestamp": "2026-12-01T10:00:05", "cpu_model": "AMD EPYC", "cpu_flags": ["avx512_bf16"],
        "cpu_count": 2, "gpu": gpu, "cuda": "13.0" if gpu else None, "params": {"device": "auto"}}))


@pytest.fixture
def records(tmp_path):
    """Two chapters: 01_a ran fine (on a GPU, from a dirty tree); 02_b's last run failed, so its page is the
    previous run, which also prints rows of a third run. One older run is in the ledger only."""
    executed, results = tmp_path / "executed", tmp_path / "results"
    executed.mkdir()
    (results / "environment").mkdir(parents=True)
    _notebook(executed / "01_a.ipynb", [OK])
    _notebook(executed / "02_b.ipynb", [READ, PREVIOUS])
    (executed / "status.json").write_text(json.dumps({
        "01_a": {"chapter": "01_a", "status": "ok", "seconds": 50.2, "budget_s": 300, "run_id": OK,
                 "started": "2026-12-01T10:00:00", "size": "study", "message": "",
                 "rerun": ".venv/bin/python scripts/run_study.py study 01_a -p cases '[\"1x1\"]'"},
        "02_b": {"chapter": "02_b", "status": "failed", "seconds": 3.0, "budget_s": 300, "run_id": FAILED,
                 "started": "2026-12-01T11:00:00", "size": "study", "message": "boom",
                 "rerun": ".venv/bin/python scripts/run_study.py study 02_b"}}))
    ledger = [
        (OLD, "01_a", "ok", 40.0, "2026-11-28T07:00:00", "1111111", "1.0"),
        (READ, "01_a", "ok", 41.0, "2026-11-29T08:00:00", "2222222", "2.0"),
        (PREVIOUS, "02_b", "ok", 700.0, "2026-11-30T09:00:00", "3333333", "1.0"),
        (OK, "01_a", "ok", 50.2, "2026-12-01T10:00:00", "4444444-dirty", "2.0"),
        (FAILED, "02_b", "failed", 3.0, "2026-12-01T11:00:00", "5555555", "2.0"),
    ]
    with (results / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run_id", "chapter", "size", "status", "seconds", "budget_s", "started", "git_sha",
                    "benchmark_version", "message"])
        for rid, ch, status, secs, started, sha, version in ledger:
            w.writerow([rid, ch, "study", status, secs, 300, started, sha, version, ""])
    _env(results, OK, "01_a", "2.0", "4444444-dirty", gpu="NVIDIA H100 80GB HBM3")
    _env(results, PREVIOUS, "02_b", "1.0", "3333333")
    _env(results, READ, "01_a", "2.0", "2222222")
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/method\n"
                   "  - file: book/executed/02_b\n  - file: book/executed/01_a\n  - file: book/results\n")
    return executed, results, toc


def test_runs_per_chapter(records):
    executed, results, _ = records
    a = results_page.chapter_runs("01_a", executed, results)
    assert (a.shown, a.failed, a.reads) == (OK, None, [])
    b = results_page.chapter_runs("02_b", executed, results)
    # the failed run is named, the page's run is the previous one (its records name the chapter), not the one read
    assert (b.shown, b.failed, b.reads) == (PREVIOUS, FAILED, [READ])
    assert results_page.page_run("book/executed/02_b", executed, results) == PREVIOUS
    assert results_page.page_run("book/intro", executed, results) is None
    assert results_page.run_version(PREVIOUS, results) == "1.0"
    assert results_page.run_version(FAILED, results) == "2.0"  # no environment record: the ledger says


def test_page_lists_every_run_with_how_to_reproduce_it(records, tmp_path):
    executed, results, toc = records
    out = tmp_path / "book" / "results.md"
    assert results_page.main(["--executed", str(executed), "--results", str(results), "--toc", str(toc),
                              "--out", str(out)]) == 0
    text = out.read_text()
    table = text.split("## Chapters")[1].split("## Runs")[0]
    # toc order; the page's run, its version flagged against the library's, start and duration
    assert table.index("02_b") < table.index("01_a")
    current = results_page.benchmark_version()
    mark = "" if current == "2.0" else " (older)"
    assert f"| [01_a](executed/01_a.ipynb) | `{OK}` | 2.0{mark} | 2026-12-01 10:00 | 50 s |" in table
    assert f"| [02_b](executed/02_b.ipynb) | `{PREVIOUS}` | 1.0 (older) | 2026-11-30 09:00 | 11.7 min |" in table

    runs = text.split("## Runs")[1].split("## Other runs")[0]
    for rid in (OK, FAILED, PREVIOUS, READ):
        assert f"### `{rid}`" in runs
    section = runs.split(f"### `{OK}`")[1].split("###")[0]
    assert "git checkout 4444444\n" in section and "uncommitted changes" in section
    assert ".venv/bin/python scripts/run_study.py study 01_a -p cases '[\"1x1\"]'" in section  # status's exact command
    assert "GPU NVIDIA H100 80GB HBM3 (CUDA 13.0)" in section and "AMD EPYC, 2 cores" in section
    assert "make html" in section
    failed = runs.split(f"### `{FAILED}`")[1].split("###")[0]
    assert "did not succeed" in failed and "status: failed" in failed and "machine: not recorded" in failed
    read = runs.split(f"### `{READ}`")[1].split("###")[0]
    assert "rows of this run are printed on [02_b]" in read and "scripts/run_study.py study 01_a" in read
    previous = runs.split(f"### `{PREVIOUS}`")[1]
    assert "git checkout 3333333" in previous and "no GPU, device cpu" in previous

    other = text.split("## Other runs in the ledger")[1]
    assert OLD in other and OK not in other
    assert "20260101T000000-ffffff" not in text  # a run id in a notebook's source is not a reference


def test_quick_look_runs_rebuild_the_quick_look(records, tmp_path):
    executed, results, toc = records
    status = json.loads((executed / "status.json").read_text())
    status["01_a"].update(size="quick", rebuild="bash scripts/build_html.sh quick")
    (executed / "status.json").write_text(json.dumps(status))
    text = results_page.render(results_page.toc_chapters(toc), executed, results, "2.0")
    assert "bash scripts/build_html.sh quick" in text.split(f"### `{OK}`")[1].split("###")[0]


def test_benchmark_version_is_the_librarys():
    from mmdet_speedup.records import BENCHMARK_VERSION

    assert results_page.benchmark_version() == BENCHMARK_VERSION


def test_the_study_page_names_every_run_its_notebooks_print(tmp_path):
    """On the repository's own records: each chapter's status run and every run id in its outputs."""
    executed = ROOT / "book" / "executed"
    chapters = results_page.toc_chapters(ROOT / "_toc.yml")
    text = results_page.render(chapters, executed, ROOT / "data" / "results", results_page.benchmark_version())
    status = results_page.load_status(executed)
    for chapter in chapters:
        assert f"[{chapter}](executed/{chapter}.ipynb)" in text
        if chapter in status:
            assert status[chapter]["run_id"] in text
        for rid in ledger.output_run_ids(executed / f"{chapter}.ipynb"):
            assert f"### `{rid}`" in text, (chapter, rid)


def test_the_page_is_generated_by_the_build_and_never_committed():
    build = (ROOT / "scripts" / "build_html.sh").read_text()
    assert build.count("scripts/results_page.py") == 2  # the study and the quick look
    assert build.index("results_page.py") < build.index('"$JB" build')
    assert "/book/results.md" in (ROOT / ".gitignore").read_text().splitlines()
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["chapters"][-1] == {"file": "book/results"}


def test_built_results_page():
    page = ROOT / "_build" / "html" / "book" / "results.html"
    if not page.is_file():
        pytest.skip(f"no built page at {page}: run `make html` first (make test does)")
    html = page.read_text()
    status = results_page.load_status(ROOT / "book" / "executed")
    for s in status.values():
        assert s["run_id"] in html


def test_the_machine_names_the_cpu_generation_where_the_record_has_it():
    old = {"cpu_model": "AMD EPYC", "cpu_flags": ["avx512_bf16"], "cpu_count": 2}
    new = {**old, "cpu_id": {"vendor": "AuthenticAMD", "family": 26, "model": 2, "stepping": 1, "uarch": "Zen 5"}}
    assert results_page.machine(old).startswith("AMD EPYC, 2 cores (avx512_bf16)")
    assert results_page.machine(new).startswith("AMD EPYC (Zen 5), 2 cores (avx512_bf16)")
