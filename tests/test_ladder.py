"""The ladder's rows and what chapter 06 reads from them, on hand-made rows (no model built, no timing),
plus the fewer-proposals row on the small test model."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from mmdet_speedup import STOCK
from mmdet_speedup import stages as S
from mmdet_speedup.study import cases, ladder


NOISE = [1.0, 1.02, 0.99, 1.01, 0.98, 1.0, 1.01]
FIELDS = ("precision", "channels_last", "preprocess", "masks", "roi_align", "fold_bn", "compile", "runtime")


def _pilot(faster: set[str], calls: list | None = None):
    """A pilot whose recorded rows make a candidate 2x its base when it changes one of ``faster``'s fields, else
    the same time (within noise)."""
    def pilot(variants, sweep):
        base, cand = list(variants)[:2]
        win = any(getattr(variants[base], f) != getattr(variants[cand], f) for f in faster & set(FIELDS))
        totals = {base: [100 * k for k in NOISE], cand: [(50 if win else 100) * k for k in NOISE[::-1]]}
        if ladder.AA in variants:
            totals[ladder.AA] = [100 * k for k in NOISE[::-1]]
        if calls is not None:
            calls.append((sweep, list(variants)))
        return _rows("c", totals).assign(sweep=sweep, sweep_id=sweep)
    return pilot


def test_rungs_on_the_cpu_and_cuda():
    names = [n for n, _ in ladder.levers("cpu")]
    assert names == ["+precision", "+auto preprocess", "+raw masks", "+torchvision RoIAlign", "+threaded RoIAlign",
                     "+fold BN", "+bf16 weights", "+compile", "+OpenVINO"]
    cuda = dict(ladder.levers(torch.device("cuda")))
    assert "+OpenVINO" not in cuda
    assert "+torchvision RoIAlign" not in cuda and cuda["+precision"] == dict(precision="fp16", channels_last=True)
    assert "+fp16 weights" in cuda


def test_climb_keeps_only_what_helps_and_builds_on_the_better():
    c = ladder.climb(ladder.levers("cpu"), _pilot({"precision", "masks", "compile"}))
    assert c.kept == {"+precision": True, "+auto preprocess": False, "+raw masks": True, "+torchvision RoIAlign": False,
                      "+threaded RoIAlign": False, "+fold BN": False, "+bf16 weights": True, "+compile": True,
                      "+OpenVINO": True}
    # a rung that did not help stays, marked; the next rung builds on the rung below it
    assert c.parent["+auto preprocess"] == "+precision" and c.parent["+raw masks"] == "+precision"
    assert c.choices["+raw masks"] == STOCK.replace(precision="bf16", channels_last=True, masks="raw")
    assert c.parent["+threaded RoIAlign"] == "+raw masks" and c.choices["+threaded RoIAlign"].roi_align == "threaded"
    assert c.choices["+compile"] == STOCK.replace(precision="bf16-weights", channels_last=True, masks="raw", compile=True)
    assert c.decisions.loc["+fold BN", "word"] == "no measurable difference"
    # OpenVINO on the path: the study's plain precision, without the torch-only levers below it
    assert c.path == "+OpenVINO" and c.choices["+OpenVINO"] == STOCK.replace(
        precision="bf16", masks="raw", runtime="openvino")


def test_climb_with_nothing_helping_stays_on_stock():
    lad = ladder.Ladder("cpu", 300)
    lad.climb(_pilot(set()))
    assert lad.path == "stock" and not any(lad.climbed.kept.values())
    assert lad.fewer == "+300 proposals (changes results)" == lad.rows[-1]
    assert lad.rows[:4] == ["legacy", "stock", ladder.AA, "+precision"] and lad.choices[ladder.AA] == STOCK
    assert cases.split_case("3840x2304>1333x800") == ("3840x2304", "1333x800")


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


ACC = ["Δ box AP", "Δ mask AP", "accuracy"]


def _acc(case: str, deltas: dict[str, tuple[float, float]], n: int = 100) -> pd.DataFrame:
    """Accuracy rows as ``Chapter.accuracy`` records them: each row's box and mask delta interval."""
    return pd.DataFrame([{"row": r, "case": case, "images": n, "box_dAP": (lo + hi) / 2, "box_dAP_lo": lo,
                          "box_dAP_hi": hi, "mask_dAP": (lo + hi) / 2, "mask_dAP_lo": lo, "mask_dAP_hi": hi}
                         for r, (lo, hi) in deltas.items()])


def test_case_table_carries_each_scored_rows_accuracy():
    rows = _rows("c", {"stock": [100.0, 100.0], "+compile": [40.0, 60.0], "+fold BN": [90.0, 90.0]})
    acc = _acc("c", {"stock": (0.0, 0.0), "+compile": (-0.004, 0.003), "+fold BN": (-0.03, -0.02)})
    t = cases.case_table(rows, None, ["stock", "+compile", "+fold BN", "legacy"], acc)
    assert t["accuracy"].tolist() == ["reference", "keeps accuracy", "changes accuracy", ""]
    assert t.loc["+compile", "Δ box AP"] == "-0.001 (-0.004 to +0.003)"


def test_case_table_speedups_workload_and_agreement():
    rows = _rows("c", {"stock": [100.0, 100.0], "+compile": [40.0, 60.0]}, {S.CONSUMER_RLE: 10.0})
    eq = pd.DataFrame({"row": ["+compile", "+compile"], "case": ["c", "c"], "matched_ref": [0.9, 1.0],
                       "box_iou_mean": [0.99, 0.97], "mask_iou_mean": [0.8, 0.9]})
    t = cases.case_table(rows, eq, ["legacy", "stock", "+compile"])
    assert list(t.index) == ["legacy", "stock", "+compile"] and t.loc["legacy"].drop(["results", *ACC]).isna().all()
    assert (t[ACC] == "").all().all()  # nothing scored: the accuracy columns are empty
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
    assert cases.case_table(rows[rows["case"] == "a"], None, lad.rows)["box_iou_mean"].isna().all()
    spread = lad.per_case(rows, ["a", "b"], cases.total_spread)
    assert spread.index.names == ["case", "row"] and list(spread.columns) == ["median", "p10", "p90", "n"]
    assert spread.loc[("b", "stock"), "median"] == 300.0 and spread.loc[("b", "stock"), "n"] == 1
    assert math.isnan(spread.loc[("a", "legacy"), "median"])


def test_stage_bounds_of_the_path_on_the_small_model(mask_rcnn, image):
    """Bound (a) comes from this run's rows that keep accuracy; bound (b) from FLOPs and bytes over peaks."""
    lad = ladder.Ladder("cpu", 100)
    lad.climb(_pilot({"masks"}))
    assert lad.path == "+raw masks"
    stages = {S.LOAD: 2.0, S.PREPROCESS: 3.0, S.DATA_PREPROCESSOR: 1.0, S.BACKBONE: 400.0, S.NECK: 100.0,
              S.RPN: 80.0, S.ROI_BBOX: 40.0, S.ROI_MASK: 20.0, S.MASK_POSTPROCESS: 10.0}
    rows = pd.concat([_rows("c", {v: [800.0] * 3}, {s: ms * f for s, ms in stages.items()})
                      for v, f in (("stock", 2.0), ("+raw masks", 1.0), ("+compile", 0.5))])
    eq = pd.DataFrame({"row": ["+raw masks", "+compile"], "case": ["c", "c"], "matched_ref": [1.0, 0.5],
                       "matched_test": [1.0, 0.5], "box_iou_mean": [1.0, 0.5], "mask_iou_mean": [1.0, 0.5]})
    table = cases.case_table(rows, eq, lad.rows, _acc("c", {"stock": (0, 0), "+raw masks": (-0.002, 0.002),
                                                           "+compile": (-0.05, -0.02)}))
    peaks = {"matmul_gflops": {"float32": 100.0, "bfloat16": 200.0}, "copy_gbps": 10.0}
    b = lad.stage_bounds(mask_rcnn, str(image), table, peaks)
    assert list(b.index) == list(stages)
    assert b.loc[S.BACKBONE, "best measured ms"] == 400.0  # never +compile's 200: it changes accuracy
    assert (b["best row"] == "+raw masks").all() and (b["best measured ms"] <= b["path ms"]).all()
    assert 0 < b.loc[S.BACKBONE, "roofline floor ms"]  # GFLOP over 200 GFLOP/s
    assert b.loc[S.LOAD, "roofline floor ms"] < 2.0  # a decoded image over 10 GB/s


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
    assert c.loc["pre-processing", "ours (this machine)"] == pytest.approx(10 / 4)
    assert c.loc["backbone", "ours (this machine)"] == pytest.approx(50 / 15)
    assert c.loc["roi_head", "ours (this machine)"] == pytest.approx(60 / 20)
    assert c.loc["roi_head", "seed (RTX 3080, published)"] == 4.0
    assert c.loc["total", "ours (this machine)"] == pytest.approx(130 / 44)
    none = ladder.seed_comparison({"640x480>480x320": t}, "legacy", "+compile", SEED)
    assert none.empty and list(none.columns) == list(cmp.columns)  # a CI-size case: an empty table, same columns


def test_fewer_proposals_row_runs_a_copy_and_is_checked_against_the_stock_workload(mask_rcnn):
    lad = ladder.Ladder("cpu", 100)
    lad.climb(_pilot({"precision"}))
    fewer = lad.fewer_model(mask_rcnn)
    assert fewer.rpn_head.test_cfg["max_per_img"] == 100 and fewer.cfg.model.test_cfg.rpn["max_per_img"] == 100
    assert mask_rcnn.rpn_head.test_cfg["max_per_img"] == 300  # the stock model keeps its workload
    makers = lad.predictors(mask_rcnn, fewer)
    assert list(makers) == lad.rows
    p = makers[lad.fewer]()
    assert p.reference.pipeline.model is mask_rcnn and p.reference.pipeline.choices == STOCK
    assert p.choices == lad.choices[lad.path]
    assert p.pipeline.model.rpn_head.test_cfg["max_per_img"] == 100
    stock = makers["stock"]()
    assert stock.pipeline.model is mask_rcnn and stock.reference is p.reference  # stock runs once for all rows
    later = lad.predictors(mask_rcnn, fewer, every_row=False)
    assert list(later) == [lad.path, lad.fewer] and later[lad.path]().choices == lad.choices[lad.path]


def test_pilot_with_records_each_pilot_as_a_sweep_of_its_own():
    class Prof:
        calls = []

        def run(self, variants, samples, extra):
            self.calls.append((list(variants), extra))
            return pd.DataFrame()
    prof = Prof()
    ladder.pilot_with(prof, [], {"case": "c"})({"stock": STOCK, "+a": STOCK}, ladder.pilot_sweep("+a"))
    assert prof.calls == [(["stock", "+a"], {"case": "c", "sweep": "pilot +a"})]


def test_a_climb_measures_the_aa_once_and_the_findings_quote_each_pilot():
    calls = []
    lad = ladder.Ladder("cpu", 300)
    lad.climbed = ladder.climb(ladder.levers("cpu")[:2], _pilot({"preprocess"}, calls))
    assert [c[1] for c in calls] == [["stock", "+precision", ladder.AA], ["stock", "+auto preprocess"]]
    rows = pd.concat([_rows("c", {"stock": [100 * k for k in NOISE], ladder.AA: [100 * k for k in NOISE[::-1]],
                                  "+precision": [50 * k for k in NOISE], "+auto preprocess": [100 * k for k in NOISE]}),
                      _rows("c", {"stock": [1.0] * 3}).assign(sweep="pilot +precision")])  # pilot rows left out
    text = ladder.climb_findings(lad, rows)
    assert "`+precision` against `stock`: faster (2" in text and "not kept (its pilot: no measurable" in text
    assert "`+auto preprocess` against `stock`" in text and "kept (its pilot: faster" in text
