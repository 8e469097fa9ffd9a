"""The ladder's rows and what chapter 06 reads from them, on hand-made rows (no model built, no timing),
plus the fewer-proposals row on the small test model."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from mmdet_speedup import STOCK, ladder
from mmdet_speedup import stages as S


def _pilot(faster: set[str]):
    """A pilot that calls a candidate faster when it differs from its base in one of ``faster``'s fields."""
    from mmdet_speedup.stats import Interval, verdict

    def pilot(base, candidate):
        changed = {f for f in ("precision", "channels_last", "preprocess", "masks", "roi_align", "fold_bn", "compile")
                   if getattr(base, f) != getattr(candidate, f)}
        win = bool(changed & faster)
        return verdict(Interval(2.0, 1.8, 2.2, 7) if win else Interval(1.0, 0.95, 1.05, 7))
    return pilot


def test_rungs_on_the_cpu_and_cuda():
    names = [n for n, _ in ladder.levers("cpu")]
    assert names == ["+precision", "+auto preprocess", "+raw masks", "+torchvision RoIAlign", "+threaded RoIAlign",
                     "+fold BN", "+bf16 weights", "+compile"]
    cuda = dict(ladder.levers(torch.device("cuda")))
    assert "+torchvision RoIAlign" not in cuda and cuda["+precision"] == dict(precision="fp16", channels_last=True)
    assert "+fp16 weights" in cuda


def test_climb_keeps_only_what_helps_and_builds_on_the_better():
    c = ladder.climb(ladder.levers("cpu"), _pilot({"precision", "masks", "compile"}))
    assert c.kept == {"+precision": True, "+auto preprocess": False, "+raw masks": True, "+torchvision RoIAlign": False,
                      "+threaded RoIAlign": False, "+fold BN": False, "+bf16 weights": True, "+compile": True}
    # a rung that did not help stays, marked; the next rung builds on the rung below it
    assert c.parent["+auto preprocess"] == "+precision" and c.parent["+raw masks"] == "+precision"
    assert c.choices["+raw masks"] == STOCK.replace(precision="bf16", channels_last=True, masks="raw")
    assert c.parent["+threaded RoIAlign"] == "+raw masks" and c.choices["+threaded RoIAlign"].roi_align == "threaded"
    assert c.choices["+compile"] == STOCK.replace(precision="bf16-weights", channels_last=True, masks="raw", compile=True)
    assert c.path == "+compile" and c.pilot["+fold BN"].word == "no measurable difference"


def test_climb_with_nothing_helping_stays_on_stock():
    lad = ladder.Ladder("cpu", 300)
    lad.climb(_pilot(set()))
    assert lad.path == "stock" and not any(lad.climbed.kept.values())
    assert lad.fewer == "+300 proposals (changes results)" == lad.rows[-1]
    assert lad.rows[:4] == ["legacy", "stock", ladder.AA, "+precision"] and lad.choices[ladder.AA] == STOCK
    assert ladder.split_case("3840x2304>1333x800") == ("3840x2304", "1333x800")


def test_ladder_verdicts_against_the_rung_below_and_stock():
    lad = ladder.Ladder("cpu", 300)
    lad.climbed = ladder.climb(ladder.levers("cpu")[:2], _pilot({"precision"}))
    noise = [1.0, 1.02, 0.99, 1.01, 0.98, 1.0, 1.01]
    rows = _rows("c", {"stock": [100 * k for k in noise], ladder.AA: [101 * k for k in noise[::-1]],
                       "+precision": [50 * k for k in noise], "+auto preprocess": [50.5 * k for k in noise]})
    v = lad.verdicts(rows)
    assert v.loc["+precision", "vs the rung below"].startswith("faster (2.0x")
    assert v.loc["+auto preprocess", "built on"] == "+precision"
    assert v.loc["+auto preprocess", "vs the rung below"].startswith("no measurable difference")
    assert v.loc["+auto preprocess", "vs stock"].startswith("faster") and not v.loc["+auto preprocess", "kept"]


def _rows(case: str, totals: dict[str, list[float]], stages: dict[str, float] | None = None) -> pd.DataFrame:
    """Profiler-like rows: one image, a ``total`` per repeat per variant, fixed stage times and workload."""
    out = []
    for variant, tot in totals.items():
        for rep, ms in enumerate(tot):
            out.append({"case": case, "variant": variant, "stage": S.TOTAL, "repeat": rep, "image": "a.jpg", "ms": ms,
                        "status": "ok", "rpn_nms_in": 1000 + rep, "bbox_nms_in": 100, "dets_out": 50})
            for stage, v in (stages or {}).items():
                out.append({"case": case, "variant": variant, "stage": stage, "repeat": rep, "image": "a.jpg",
                            "ms": v, "status": "ok"})
    return pd.DataFrame(out)


def test_case_table_speedups_workload_and_agreement():
    rows = _rows("c", {"stock": [100.0, 100.0], "+compile": [40.0, 60.0]}, {S.CONSUMER_RLE: 10.0})
    eq = pd.DataFrame({"row": ["+compile", "+compile"], "case": ["c", "c"], "matched_ref": [0.9, 1.0],
                       "box_iou_mean": [0.99, 0.97], "mask_iou_mean": [0.8, 0.9]})
    t = ladder.case_table(rows, eq, ["legacy", "stock", "+compile"])
    assert list(t.index) == ["legacy", "stock", "+compile"] and t.loc["legacy"].drop("results").isna().all()
    assert t.loc["+compile", S.TOTAL] == 50.0
    assert t.loc["+compile", "total + rle"] == 60.0
    assert t.loc["+compile", "speed-up"] == pytest.approx(2.0)
    assert t.loc["+compile", "speed-up with rle"] == pytest.approx(110 / 60)
    assert t.loc["stock", "rpn_nms_in"] == 1000.5 and t.loc["stock", "dets_out"] == 50
    assert t.loc["+compile", "matched_ref"] == pytest.approx(0.95)
    assert t.loc["+compile", "box_iou_mean"] == pytest.approx(0.98)
    assert math.isnan(t.loc["stock", "matched_ref"]) and t.loc["stock", "results"] == ""
    assert t.loc["+compile", "results"] == "changes results"  # 0.95 matched: under the 0.99 the rule asks
    assert (t.loc["+compile", "n"], t.loc["+compile", "verdict"]) == (2, "no measurable difference")  # n < 3


def test_tables_split_cases_and_tolerate_cases_without_agreement():
    rows = pd.concat([_rows("a", {"stock": [100.0], "+compile": [50.0]}),
                      _rows("b", {"stock": [300.0], "+compile": [100.0]})])
    eq = pd.DataFrame({"row": ["+compile"], "case": ["a"], "matched_ref": [1.0], "box_iou_mean": [1.0],
                       "mask_iou_mean": [1.0]})
    lad = ladder.Ladder("cpu", 100)
    lad.climb(_pilot({"compile"}))
    tables = lad.tables(rows, eq, ["a", "b"])
    assert tables["a"].loc["+compile", "speed-up"] == 2.0 and tables["b"].loc["+compile", "speed-up"] == 3.0
    assert tables["a"].loc["+compile", "matched_ref"] == 1.0 and tables["b"]["matched_ref"].isna().all()
    assert list(tables["a"].index) == lad.rows
    assert ladder.case_table(rows[rows["case"] == "a"], None, lad.rows)["box_iou_mean"].isna().all()
    spread = lad.per_case(rows, ["a", "b"], ladder.total_spread)
    assert spread.index.names == ["case", "row"] and list(spread.columns) == ["median", "p10", "p90", "n"]
    assert spread.loc[("b", "stock"), "median"] == 300.0 and spread.loc[("b", "stock"), "n"] == 1
    assert math.isnan(spread.loc[("a", "legacy"), "median"])


def _table(stock: dict[str, float], speedups: dict[str, float]) -> pd.DataFrame:
    t = pd.DataFrame([stock], index=["stock"])
    for row, sp in speedups.items():
        t.loc[row] = float("nan")
        t.loc[row, "speed-up"] = sp
    t.loc["stock", "speed-up"] = 1.0
    return t


def test_amdahl_bound_counts_what_no_row_touches():
    stock = {S.LOAD: 5.0, S.BACKBONE: 60.0, S.RPN: 20.0, S.RPN_NMS: 4.0, S.ROI_BBOX: 10.0, S.ROI_BBOX_NMS: 1.0,
             S.TOTAL: 100.0}  # stages sum to 95: 5 ms of glue
    b = ladder.amdahl_bound(_table(stock, {"+compile": 2.5, "+fewer": 3.0}), "+compile", "+fewer")
    assert b["untouched ms"] == pytest.approx(5 + 4 + 1 + 5)
    assert b["Amdahl bound"] == pytest.approx(100 / 15)
    assert (b["stock ms"], b["reached"], b["with fewer proposals"]) == (100.0, 2.5, 3.0)
    # medians do not add exactly: stages summing past total are no negative glue
    over = ladder.amdahl_bound(_table({**stock, S.TOTAL: 90.0}, {"+compile": 2.0}), "+compile")
    assert over["untouched ms"] == pytest.approx(10.0) and "with fewer proposals" not in over
    lad = ladder.Ladder("cpu", 7)
    lad.climb(_pilot({"compile"}))
    bounds = lad.bounds({"x>y": _table(stock, {"+compile": 2.5, lad.fewer: 4.0})})
    assert list(bounds.index) == ["x>y"] and bounds.loc["x>y", "with fewer proposals"] == 4.0


def test_findings_in_words():
    row = pd.Series({S.LOAD: 1.0, S.BACKBONE: 30.0, S.ROI_MASK: 40.0, S.TOTAL: 100.0, "consumer.rle": 500.0})
    assert ladder.biggest_stage(row) == S.ROI_MASK  # total and consumer stages are not stages of the model
    tables = {"a": pd.DataFrame({S.TOTAL: [130.0, 100.0]}, index=["legacy", "stock"]),
              "b": pd.DataFrame({S.TOTAL: [100.0, 100.0]}, index=["legacy", "stock"])}
    ratios = ladder.legacy_vs_stock(tables)
    assert ratios.to_dict() == {"a": pytest.approx(1.3), "b": 1.0}
    assert ladder.ratios_in_words(ratios) == "1.30x at a, 1.00x at b"
    assert ladder.legacy_verdict(1.3).startswith("mmdet 3.3 already fixed")
    assert "larger inputs" in ladder.legacy_verdict(1.02)


SEED = pd.DataFrame([("mmdet 2.19 (seed)", "1333x800", v, st, ms) for st, (a, b) in
                     {"pre-processing": (10.0, 2.0), "backbone": (30.0, 15.0), "rpn_head": (8.0, 8.0),
                      "roi_head": (20.0, 5.0), "total": (70.0, 35.0)}.items()
                     for v, ms in (("inference", a), ("inference_raw_mask", b))]
                    + [("other system", "1333x800", "inference", "total", 1.0)],
                    columns=["system", "scale", "variant", "stage", "value"])


def test_seed_speedups_from_the_published_figures():
    assert ladder.seed_speedups(SEED).loc["1333x800", "total"] == 2.0
    assert ladder.seed_speedups().loc["1333x800", "total"] == pytest.approx(72.30 / 33.45)  # data/reference


def test_seed_comparison_maps_our_stages_onto_the_seed():
    t = pd.DataFrame({S.LOAD: [2.0, 2.0], S.PREPROCESS: [6.0, 1.0], S.DATA_PREPROCESSOR: [2.0, 1.0],
                      S.BACKBONE: [40.0, 10.0], S.NECK: [10.0, 5.0], S.RPN: [10.0, 5.0], S.ROI_BBOX: [20.0, 10.0],
                      S.ROI_MASK: [10.0, 5.0], S.MASK_POSTPROCESS: [30.0, 5.0], S.TOTAL: [130.0, 44.0]},
                     index=["legacy", "+compile"])
    tables = {"1333x800>1333x800": t, "3840x2304>1333x800": t, "640x480>640x480": t}
    cmp = ladder.seed_comparison(tables, "legacy", "+compile", SEED, ladder.stage_map())
    assert list(cmp["case"].unique()) == ["1333x800>1333x800"]  # resized, or a scale the seed did not publish
    c = cmp.set_index("seed stage")
    assert c.loc["pre-processing", "our stages"] == "load+preprocess+data_preprocessor"
    assert c.loc["pre-processing", "our speed-up (this machine)"] == pytest.approx(10 / 4)
    assert c.loc["backbone", "our speed-up (this machine)"] == pytest.approx(50 / 15)
    assert c.loc["roi_head", "our speed-up (this machine)"] == pytest.approx(60 / 20)
    assert c.loc["roi_head", "seed speed-up (RTX 3080, published)"] == 4.0
    assert c.loc["total", "our speed-up (this machine)"] == pytest.approx(130 / 44)
    assert ladder.seed_comparison({"640x480>480x320": t}, "legacy", "+compile", SEED).empty


def test_fewer_proposals_row_runs_a_copy_and_is_checked_against_the_stock_workload(mask_rcnn):
    lad = ladder.Ladder("cpu", 100)
    lad.climb(_pilot({"precision"}))
    fewer = lad.fewer_model(mask_rcnn)
    assert fewer.rpn_head.test_cfg["max_per_img"] == 100 and fewer.cfg.model.test_cfg.rpn["max_per_img"] == 100
    assert mask_rcnn.rpn_head.test_cfg["max_per_img"] == 300  # the stock model keeps its workload
    makers = lad.predictors(mask_rcnn, fewer)
    assert list(makers) == lad.rows
    p = makers[lad.fewer]()
    assert p.reference.model is mask_rcnn and p.reference.choices == STOCK
    assert p.choices == lad.choices[lad.path]
    assert p.pipeline.model.rpn_head.test_cfg["max_per_img"] == 100
    stock = makers["stock"]()
    assert stock.pipeline.model is mask_rcnn and stock.reference.model is mask_rcnn
