"""Chapters 04 (NMS) and 05 (loading): the summaries they read off their rows, checked on rows built by hand."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from mmdet_speedup import stages as S
from mmdet_speedup.loader import overlap_bound
from mmdet_speedup.study import nms
from mmdet_speedup.study.loading import BOUND, SPEEDUP, SPEEDUP_EQUAL, exceeds_bound, loading_summary

matplotlib.use("Agg")

NS = [100, 300, 1000, 3000]


def bench_rows(times: dict[tuple[str, str], callable], ns=NS, iou=0.7, repeats=2) -> pd.DataFrame:
    """Workbench rows: ms = times[(implementation, box_set)](n), the same for every repeat."""
    return pd.DataFrame([{"implementation": impl, "box_set": box_set, "n": n, "iou_threshold": iou, "repeat": r,
                          "ms": f(n), "status": "ok", "num_classes": 5, "device": "cuda:0"}
                         for (impl, box_set), f in times.items() for n in ns for r in range(repeats)])


# -- chapter 04: the workbench -------------------------------------------------------------------------------
def test_slope_table_fits_over_the_upper_half_of_the_sizes():
    # Quadratic from n = 1000 on, flat below: a fit over every n would come out well under 2.
    quad = bench_rows({("torchvision", "uniform"): lambda n: max(n, 1000) ** 2 * 1e-6,
                       ("torchvision", "clustered"): lambda n: n * 1e-3})
    other_iou = bench_rows({("torchvision", "uniform"): lambda n: n * 1e-3}, iou=0.5)
    t = nms.slope_table(pd.concat([quad, other_iou]), 0.7)
    assert list(t.index) == ["torchvision"] and sorted(t.columns) == ["clustered", "uniform"]
    assert t.loc["torchvision", "uniform"] == pytest.approx(2.0)
    assert t.loc["torchvision", "clustered"] == pytest.approx(1.0)
    assert nms.slope_table(quad, 0.7, n_min=100).loc["torchvision", "uniform"] < 1.9


def test_steepest_names_the_implementation_and_box_set():
    slopes = pd.DataFrame({"clustered": [1.1, 0.4], "uniform": [1.9, 1.6]}, index=["mmcv", "per_class"])
    assert nms.steepest(slopes) == (1.9, "mmcv on uniform boxes")


def test_crossovers_per_box_set():
    rows = bench_rows({("offset", "uniform"): lambda n: n, ("per_class", "uniform"): lambda n: 400 + n / 2,
                       ("offset", "clustered"): lambda n: n, ("per_class", "clustered"): lambda n: 2 * n}, repeats=3)
    assert nms.crossovers(rows, 0.7) == {"clustered": None, "uniform": 1000}
    # two repeats are too few for a verdict at any n: no crossover is claimed
    assert nms.crossovers(bench_rows({("offset", "uniform"): lambda n: n, ("per_class", "uniform"): lambda n: n / 2}),
                          0.7) == {"uniform": None}


def test_recall_table_sorts_distinct_ks_and_matches_topk_recall():
    from mmdet_speedup import nms as kernels

    t = kernels.recall_table([50, 5, 50], n=200, num_objects=10)
    assert list(t.columns) == ["k", "recall"] and list(t["k"]) == [5, 50]
    box_set = kernels.clustered_boxes(200, num_objects=10, seed=0)
    assert list(t["recall"]) == [kernels.topk_recall(box_set, k, 0.7) for k in (5, 50)]
    assert t["recall"].iloc[0] <= 0.5  # five boxes cannot recall more than five of ten objects


def test_charts_carry_their_labels():
    g = nms.plot_sweep(bench_rows({("offset", "uniform"): lambda n: n}), 0.7)
    assert g.fig._suptitle.get_text() == "NMS time against boxes in (IoU 0.7, cuda, 5 classes)"
    ax = nms.plot_recall(pd.DataFrame({"k": [10, 100], "recall": [0.5, 1.0]}), n=100, num_objects=5)
    assert ax.get_xlabel() == "pre-NMS top-k (synthetic clusters, 100 boxes, 5 objects)"
    assert ax.get_xscale() == "log"


# -- chapter 04: C4 versus FPN -------------------------------------------------------------------------------
def profile_rows(variant: str, ms: dict[str, float], repeats: int = 2, **work) -> list[dict]:
    """Profiler rows of one variant on one image: ``ms[stage]`` (repeat r adds r, so the median is ms + 0.5)."""
    return [{"variant": variant, "stage": stage, "ms": t + r, "repeat": r, "image": "a.jpg", "status": "ok", **work}
            for r in range(repeats) for stage, t in ms.items()]


def test_stage_comparison_adds_the_roi_head_and_the_work():
    rows = pd.DataFrame(
        profile_rows("Mask FPN", {S.RPN: 10, S.ROI_BBOX: 5, S.ROI_MASK: 3, S.MASK_POSTPROCESS: 1, S.TOTAL: 30},
                     rpn_pre_nms=1000, rpn_nms_in=3500, bbox_nms_in=45, dets_out=20)
        + profile_rows("Faster C4", {S.RPN: 20, S.ROI_BBOX: 50, S.TOTAL: 90},
                       rpn_pre_nms=6000, rpn_nms_in=5400, bbox_nms_in=360, dets_out=20)
        + [{"variant": "Faster C4", "stage": S.TOTAL, "ms": float("nan"), "repeat": -1, "image": "a.jpg",
            "status": "error", "rpn_pre_nms": 1, "rpn_nms_in": 1, "bbox_nms_in": 1, "dets_out": 1}])
    t = nms.stage_comparison(rows, ["Faster C4", "Mask FPN"])
    assert list(t.index) == ["Faster C4", "Mask FPN"]
    assert t.loc["Mask FPN", nms.ROI_HEAD] == pytest.approx(5.5 + 3.5 + 1.5)
    assert t.loc["Faster C4", nms.ROI_HEAD] == pytest.approx(50.5)  # no mask head: the box head alone
    assert t.loc["Faster C4", "rpn_nms_in"] == 5400 and t.loc["Mask FPN", "rpn_pre_nms"] == 1000


def test_c4_fpn_ratio_per_family():
    t = pd.DataFrame({S.RPN: [20.0, 10.0, 30.0, 10.0], S.RPN_NMS: [6.0, 1.0, 6.0, 2.0],
                      nms.ROI_HEAD: [40.0, 2.0, 60.0, 20.0], S.TOTAL: [100.0, 25.0, 120.0, 40.0]},
                     index=["Faster C4", "Faster FPN", "Mask C4", "Mask FPN"])
    r = nms.c4_fpn_ratio(t.assign(backbone=1.0))  # other columns are ignored
    assert list(r.columns) == ["Faster", "Mask"] and list(r.index) == [S.RPN, S.RPN_NMS, nms.ROI_HEAD, S.TOTAL]
    assert r["Faster"].tolist() == [2.0, 6.0, 20.0, 4.0]
    assert r["Mask"].tolist() == [3.0, 3.0, 3.0, 3.0]
    assert list(nms.c4_fpn_ratio(t.drop(index="Mask FPN")).columns) == ["Faster"]


def pre_nms_rows() -> pd.DataFrame:
    rows = []
    for arch, ns in (("Faster C4", (300, 1000)), ("Faster FPN", (100,))):
        for n in ns:
            rows += profile_rows(f"{arch} pre={n}", {S.RPN: n / 10, S.RPN_NMS: n / 100, S.BACKBONE: 50.0},
                                 rpn_pre_nms=n, rpn_nms_in=n - 7)
    rows.append({"variant": "Faster C4 pre=1000", "stage": S.RPN_NMS, "ms": 1e6, "repeat": 0, "image": "a.jpg",
                 "status": "error", "rpn_pre_nms": 1000, "rpn_nms_in": 0})
    return pd.DataFrame(rows)


def test_pre_nms_medians_table_and_growth():
    pm = nms.pre_nms_medians(pre_nms_rows())
    assert set(pm["stage"]) == {S.RPN, S.RPN_NMS}  # backbone rows and error rows dropped
    c4 = pm[(pm["arch"] == "Faster C4") & (pm["stage"] == S.RPN_NMS)].set_index("rpn_pre_nms")
    assert c4["ms"].tolist() == [3.5, 10.5] and c4["nms_in"].tolist() == [293, 993]
    assert set(pm["series"]) == {"Faster C4 rpn", "Faster C4 rpn.nms", "Faster FPN rpn", "Faster FPN rpn.nms"}

    t = nms.pre_nms_table(pm)
    assert list(t.index) == [("Faster C4", 300), ("Faster C4", 1000), ("Faster FPN", 100)]
    assert list(t.columns) == [S.RPN, S.RPN_NMS, "nms_in"]
    assert t.loc[("Faster C4", 1000), S.RPN] == 100.5

    assert nms.pre_nms_growth(pm, "Faster C4") == {"lo": 300.0, "hi": 1000.0, "growth": pytest.approx(10.5 / 3.5)}
    assert nms.pre_nms_growth(pm, "Faster C4", S.RPN)["growth"] == pytest.approx(100.5 / 30.5)


# -- chapter 04: Detectron's model zoo -----------------------------------------------------------------------
def test_zoo_keeps_one_schedule_and_reads_end_to_end_ratios(tmp_path):
    rows = [("End-to-End Faster & Mask R-CNN Baselines", b, t, s, v) for t, b, v in
            (("Faster", "R-50-C4", 0.2), ("Faster", "R-50-FPN", 0.1), ("Mask", "R-50-C4", 0.3),
             ("Mask", "R-50-FPN", 0.2)) for s in ("1x", "2x")]
    rows.append(("Fast & Mask R-CNN Baselines Using Precomputed RPN Proposals", "R-50-C4", "Mask", "1x", 9.0))
    csv = tmp_path / "zoo.csv"
    pd.DataFrame([{"table": t, "backbone": b, "type": ty, "lr_schd": s, "inference_s_per_im": v * (2 if s == "2x" else 1),
                   "inference_extra_s": 0.01, "note": ""} for t, b, ty, s, v in rows]).to_csv(csv, index=False)
    zoo = nms.detectron_zoo(csv)
    assert list(zoo.columns) == ["table", "backbone", "type", "inference_s_per_im", "inference_extra_s"]
    assert len(zoo) == 5
    ratios = nms.zoo_c4_over_fpn(zoo)
    # a + b as published; the precomputed-proposal row is not end-to-end
    assert ratios == {"Faster": pytest.approx(0.21 / 0.11), "Mask": pytest.approx(0.31 / 0.21)}


def test_zoo_reads_the_published_reference_file():
    zoo = nms.detectron_zoo(Path(__file__).resolve().parents[1] / "data" / "reference" / "detectron_model_zoo.csv")
    assert nms.zoo_c4_over_fpn(zoo) == {"Faster": pytest.approx(0.170 / 0.097), "Mask": pytest.approx(0.199 / 0.118)}


# -- chapter 05: serial against overlapped loading -----------------------------------------------------------
def serial_profile(scale: str, load: float, total: float) -> list[dict]:
    """Two images, one repeat; loading splits as load : preprocess : data_preprocessor = 2 : 1 : 1."""
    parts = {S.LOAD: load / 2, S.PREPROCESS: load / 4, S.DATA_PREPROCESSOR: load / 4, S.BACKBONE: total - load,
             S.TOTAL: total}
    return [{"scale": scale, "variant": "serial stages", "stage": st, "ms": ms * k, "repeat": 0, "image": img,
             "status": "ok", "images_per_s": float("nan")}
            for img, k in (("a.jpg", 0.5), ("b.jpg", 1.5)) for st, ms in parts.items()]


def loading_rows(scale: str, serial: float, overlapped: float, equal: float) -> list[dict]:
    return [{"scale": scale, "variant": v, "stage": S.TOTAL, "ms": 1e3 / ips * k, "repeat": r, "image": "stream of 6",
             "status": "ok", "images_per_s": ips * k}
            for r, k in ((0, 0.9), (1, 1.0), (2, 1.1))
            for v, ips in (("serial", serial), ("overlapped", overlapped), ("overlapped (equal priority)", equal))]


def test_loading_summary_bound_from_the_serial_profile_and_speedups():
    rows = pd.DataFrame(serial_profile("1333x800", load=4.0, total=400.0) + loading_rows("1333x800", 2.0, 2.0, 1.9)
                        + serial_profile("320x192", load=4.0, total=40.0) + loading_rows("320x192", 10.0, 11.0, 10.5)
                        + [{"scale": "320x192", "variant": "overlapped", "stage": S.TOTAL, "ms": float("nan"),
                            "repeat": -1, "image": "", "status": "error", "images_per_s": float("nan")}])
    s = loading_summary(rows)
    assert list(s.index) == ["1333x800", "320x192"] and s.index.name == "scale"  # the order the cases ran
    small = s.loc["320x192"]
    assert small["loading ms"] == pytest.approx(4.0) and small["serial total ms"] == pytest.approx(40.0)
    assert small["loading share"] == pytest.approx(0.1)
    assert small[BOUND] == pytest.approx(1 / 0.9)
    assert small[BOUND] == pytest.approx(overlap_bound({S.LOAD: 2.0, S.PREPROCESS: 1.0, S.DATA_PREPROCESSOR: 1.0,
                                                         S.TOTAL: 40.0}))
    assert small["serial img/s"] == pytest.approx(10.0) and small["overlapped img/s"] == pytest.approx(11.0)
    assert small[SPEEDUP] == pytest.approx(1.1) and small[SPEEDUP_EQUAL] == pytest.approx(1.05)
    assert small["reached / bound"] == pytest.approx(1.1 * 0.9)
    assert s.loc["1333x800", BOUND] == pytest.approx(1 / 0.99) and s.loc["1333x800", SPEEDUP] == pytest.approx(1.0)


def test_exceeds_bound_only_beyond_the_tolerance():
    case = {BOUND: 1.10, SPEEDUP: 1.0, SPEEDUP_EQUAL: 1.11}
    assert not exceeds_bound(case)  # 1.11 is within 1% of 1.10
    assert exceeds_bound({**case, SPEEDUP: 1.12})
    assert exceeds_bound(case, tolerance=0.0)
