"""The verdict rule on hand-built rows, the bounds and the ladder's decisions, and the study layer's one home."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmdet_speedup import roofline, stages as S, stats
from mmdet_speedup.stats import FASTER, FLOOR, NO_DIFFERENCE, SLOWER, Interval, best_of, ratio_table, verdict

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "mmdet_speedup"


def rows_of(ms: dict[str, list[float]], sweep: dict[str, str] | None = None) -> pd.DataFrame:
    """Profiler-like rows: one image, ``total`` only, repeat i of every variant in the same sweep unless told."""
    return pd.DataFrame([{"variant": v, "stage": S.TOTAL, "repeat": i, "image": "a", "ms": x, "status": "ok",
                          "sweep_id": (sweep or {}).get(v, "s1")}
                         for v, xs in ms.items() for i, x in enumerate(xs)])


# -- the verdict rule ---------------------------------------------------------------------------------------
def test_the_aa_row_shows_its_interval_as_the_floor_and_gets_no_word():
    t = ratio_table(rows_of({"stock": [100, 101, 99, 100, 102], "stock (A/A)": [90, 91, 89, 90, 92]}), "stock",
                    aa="stock (A/A)")
    assert t.loc["stock (A/A)", "verdict"] == FLOOR
    assert t.loc["stock (A/A)", "text"].startswith("A/A floor (")
    assert t.loc["stock", "verdict"] == "baseline" and not t.isna().any().any()


def test_an_interval_wider_than_the_floor_but_straddling_it_is_no_difference():
    floor = Interval(1.0, 0.97, 1.03, 7)
    assert verdict(Interval(1.05, 0.99, 1.20, 7), floor).word == NO_DIFFERENCE  # includes 1
    assert verdict(Interval(1.03, 1.01, 1.08, 7), floor).word == NO_DIFFERENCE  # above 1, below the floor's top
    assert verdict(Interval(1.10, 1.04, 1.20, 7), floor).word == FASTER
    assert verdict(Interval(0.95, 0.90, 0.96, 7), floor).word == SLOWER
    assert verdict(Interval(0.98, 0.96, 0.99, 7), floor).word == NO_DIFFERENCE


def test_fewer_than_five_repeats_give_the_range_of_per_repeat_ratios_not_a_ci():
    iv = stats.ratio_interval([100, 110, 105], [50, 50, 60])
    assert iv.kind == "range" and (iv.lo, iv.hi) == pytest.approx((105 / 60, 110 / 50))
    t = ratio_table(rows_of({"stock": [100, 110, 105], "x": [50, 50, 60]}), "stock")
    assert "range" in t.loc["x", "text"] and "CI" not in t.loc["x", "text"]
    assert "CI" in ratio_table(rows_of({"stock": [100] * 5, "x": [50, 51, 52, 50, 49]}), "stock").loc["x", "text"]


def test_rows_of_two_sweeps_are_compared_unpaired_and_say_so():
    rows = rows_of({"stock": [100, 130, 100, 130, 100], "x": [60, 80, 60, 80, 60]}, sweep={"x": "s2"})
    t = ratio_table(rows, "stock")
    assert not t.loc["x", "paired"] and "unpaired" in t.loc["x", "text"]
    paired = ratio_table(rows.assign(sweep_id="s1"), "stock")
    assert paired.loc["x", "paired"] and paired.loc["x", "hi"] - paired.loc["x", "lo"] < t.loc["x", "hi"] - t.loc["x", "lo"]


def test_overlapping_rows_are_tied_and_a_clear_lead_is_named():
    rows = rows_of({"a": [50, 52, 51, 53, 50], "b": [51, 50, 52, 51, 52], "c": [80, 81, 79, 80, 82]})
    tied = best_of(rows, ["a", "b", "c"])
    assert tied.label is None and "c" not in tied.tied and tied.tied
    clear = best_of(rows, ["a", "c"])
    assert clear.label == "a"


# -- bounds -------------------------------------------------------------------------------------------------
def _table() -> pd.DataFrame:
    return pd.DataFrame({S.PREPROCESS: [5.0, 4.0, 1.0, 6.0], S.DATA_PREPROCESSOR: [5.0, 4.0, 9.5, 6.0],
                         S.BACKBONE: [100.0, 40.0, 30.0, 10.0], S.RPN: [20.0, 15.0, 14.0, 2.0],
                         "results": ["", "preserves results", "exact", "preserves results"],
                         "accuracy": ["reference", "keeps accuracy", "", "changes accuracy"]},
                        index=["stock", "path", "other", "int8"])


def test_a_bound_from_an_accuracy_changing_or_other_workload_row_is_refused():
    from mmdet_speedup.study.ladder import Ladder

    t = _table()
    lad = Ladder("cpu", 100)
    assert lad.bound_rows(t) == ["stock", "path", "other"]  # kept accuracy, or exactly stock's outputs
    keep = lad.bound_rows(t.rename(index={"other": lad.fewer}))
    assert "int8" not in keep and lad.fewer not in keep and "stock" in keep  # int8 preserves, but changes AP
    unscored = lad.bound_rows(t.assign(accuracy=""))
    assert unscored == ["stock", "other"]  # agreement alone no longer admits a row
    best = roofline.best_measured(t, ["stock", "path", "other"])
    assert best.loc[S.BACKBONE, "row"] == "other" and best.loc[S.BACKBONE, "ms"] == 30.0  # never int8's 10
    # the pre-processing halves come from one row: `path` (4 + 4), not `other`'s 1 beside `path`'s 4
    assert best.loc[S.PREPROCESS, "row"] == best.loc[S.DATA_PREPROCESSOR, "row"] == "path"


def test_a_row_that_beats_its_roofline_floor_withholds_the_bound():
    t = _table()
    best = roofline.best_measured(t, ["stock", "path", "other"])
    path = t.loc["path", [S.PREPROCESS, S.DATA_PREPROCESSOR, S.BACKBONE, S.RPN]].to_dict()
    b = roofline.bounds_table(t.loc["stock"].to_dict(), path, best, {S.BACKBONE: 35.0})  # other's 30 ms beats 35
    assert roofline.beaten_floors(b) == [S.BACKBONE]
    assert np.isnan(roofline.bound_speedups(b)["roofline bound"])
    ok = roofline.bounds_table(t.loc["stock"].to_dict(), path, best, {S.BACKBONE: 20.0})
    assert roofline.bound_speedups(ok)["roofline bound"] > roofline.bound_speedups(ok)["best measured bound"]


# -- the ladder's decisions ---------------------------------------------------------------------------------
def test_the_ladders_path_is_decided_from_its_recorded_rows():
    from mmdet_speedup.study import ladder

    cost = {"stock": 100.0, "+a": 60.0, "+b": 61.0, "+c": 40.0}  # +b is no faster than +a; +c is
    recorded = []

    def pilot(variants, sweep):
        rep = np.array([0.0, 1.0, -1.0])
        r = rows_of({label: list(cost[label if label != ladder.AA else "stock"] + rep) for label in variants})
        r = r.assign(sweep=sweep, sweep_id=sweep)
        recorded.append(r)
        return r

    rungs = [("+a", dict(masks="raw")), ("+b", dict(fold_bn=True)), ("+c", dict(compile=True))]
    c = ladder.climb(rungs, pilot)
    assert c.kept == {"+a": True, "+b": False, "+c": True} and c.parent["+c"] == "+a" and c.path == "+c"
    again = ladder.pilot_verdicts(pd.concat(recorded, ignore_index=True), [n for n, _ in rungs])
    assert ladder.path_of(again) == c.path and again["pilot"].tolist() == c.decisions["pilot"].tolist()
    assert ladder.main_rows(pd.concat(recorded)).empty


# -- one home for the study layer ---------------------------------------------------------------------------
def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(PKG)): ast.parse(p.read_text()) for p in PKG.rglob("*.py")}


def _imports(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
            out |= {"." * node.level + (node.module + "." if node.module else "") + a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_nothing_outside_study_imports_it():
    for name, tree in _modules().items():
        if name.startswith("study/") or name == "__init__.py":
            continue
        bad = [m for m in _imports(tree) if m.startswith((".study", "mmdet_speedup.study"))]
        assert not bad, f"{name} imports the study layer: {bad}"


def _sentence_literals(tree: ast.Module) -> list[int]:
    """Lines of f-strings that quote a row or stage name in backticks: the mark of a sentence for a page (an
    error message, raised, is not one)."""
    raised = {id(n) for r in ast.walk(tree) if isinstance(r, ast.Raise) for n in ast.walk(r)}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) and id(n) not in raised
            and any(isinstance(v, ast.Constant) and "`" in str(v.value) for v in n.values)]


def test_every_function_that_returns_a_chapters_sentence_lives_in_study():
    for name, tree in _modules().items():
        if name.startswith("study/"):
            continue
        assert not _sentence_literals(tree), f"{name} builds page sentences at lines {_sentence_literals(tree)}"
    assert _sentence_literals(_modules()["study/words.py"])  # the check sees sentences where they are


def test_the_ledger_imports_with_torch_unimportable():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'mmdet', 'mmcv', 'mmengine'):\n"
            "            raise ImportError(f'blocked: {name}')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from mmdet_speedup.study import ledger\n"
            "print(ledger.benchmark_version())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    from mmdet_speedup.records import BENCHMARK_VERSION

    assert out.stdout.strip() == BENCHMARK_VERSION


def test_scripts_neither_edit_sys_path_nor_parse_sources():
    for p in (REPO / "scripts").glob("*.py"):
        text = p.read_text()
        assert "sys.path" not in text, f"{p.name} edits sys.path"
        assert "import ast" not in text and "ast.parse" not in text, f"{p.name} parses sources with ast"
