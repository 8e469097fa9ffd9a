"""The cases of the ladder and the runtimes chapter, and the per-case table both read off their rows.

A case is ``"<input size>><model scale>"`` (WxH each), e.g. ``"3840x2304>1333x800"``: the image's size and the
scale the model runs at. Every ratio in a case table is against ``stock`` (mmdet 3.3's ``test_step``).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from .. import stages as S
from ..profiler import stage_summary, stage_table
from ..stats import aa_of, preservation_column, ratio_table

BASE = "stock"
#: The A/A row: ``stock`` profiled a second time in the same sweep; its ratio interval is the noise floor.
AA = aa_of(BASE)


WORKLOAD = ["rpn_nms_in", "bbox_nms_in", "dets_out"]


AGREEMENT = ["matched_ref", "matched_test", "box_iou_mean", "box_iou_min", "score_diff_max", "mask_iou_mean",
             "mask_identical"]


def split_case(case: str) -> tuple[str, str]:
    """``"3840x2304>1333x800"`` -> ``("3840x2304", "1333x800")``: the input size and the model's scale."""
    size, scale = case.split(">")
    return size, scale


def _of_case(df: pd.DataFrame | None, case: str) -> pd.DataFrame | None:
    return None if df is None else df[df["case"] == case]


def acc_of(accuracy: pd.DataFrame, case: str) -> pd.DataFrame:
    """One case's accuracy rows (``Chapter.accuracy``), one per row label (the last recorded), by label."""
    return accuracy[accuracy["case"] == case].drop_duplicates("row", keep="last").set_index("row")


def case_table(rows: pd.DataFrame, agreement: pd.DataFrame | None, order: Sequence[str],
               accuracy: pd.DataFrame | None = None) -> pd.DataFrame:
    """One case's ladder: median ms per image per stage (``stage_table``), ``total + rle`` (a consumer asking for
    every mask as RLE), the speed-up against ``stock`` with and without it (``stats.ratio_table``: the same ratio
    its interval ``lo``-``hi`` over ``n`` repeats and its verdict are read from, held to the A/A floor), the runtime of the converted parts
    (``runtime``, where recorded), the workload each row ran (median NMS inputs and
    detections out), its agreement with ``stock`` (mean over images; empty where not checked) and what that
    agreement says (``results``: exact, preserves results or changes results, ``stats.preservation``).

    With ``accuracy`` (the case's ``Chapter.accuracy`` rows, column ``row``): each scored row's delta box and
    mask AP against ``stock`` with their intervals and the accuracy rule's word (``accuracy``; empty where the
    row was not scored).

    ``rows``: the profiler's rows of one case; ``agreement``: its equivalence rows (column ``row``), or None.
    """
    t = stage_table(rows).reindex(list(order))
    t["total + rle"] = t[S.TOTAL] + t.get(S.CONSUMER_RLE, 0)
    aa = AA if AA in set(rows["variant"]) else None
    vs = ratio_table(rows, BASE, aa=aa).rename(columns={"ratio": "speed-up"})
    t = t.join(vs[["speed-up", "lo", "hi", "n", "verdict", "text", "paired"]])
    if S.CONSUMER_RLE in set(rows["stage"]):
        t["speed-up with rle"] = ratio_table(rows, BASE, stages=(S.TOTAL, S.CONSUMER_RLE), aa=aa)["ratio"]
    t = t.join(rows.groupby("variant")[WORKLOAD].median())
    if "runtime" in rows:  # where backbone, neck, RPN head and RoI heads ran (RoIAlign, NMS, masks: torch)
        t["runtime"] = rows.groupby("variant")["runtime"].first()
    if "chosen" in rows:  # the pre-processing path each row ran (``auto``'s pick, measured per input shape)
        t["preprocess ran"] = rows.dropna(subset=["chosen"]).groupby("variant")["chosen"].agg(
            lambda s: "/".join(sorted(set(map(str, s)))))
    agreement = agreement if agreement is not None else pd.DataFrame(columns=["row", *AGREEMENT])
    t = t.join(agreement.reindex(columns=["row", *AGREEMENT]).groupby("row")[AGREEMENT].mean())
    t["results"] = preservation_column(t).where(t["matched_ref"].notna(), "")
    return with_accuracy(t, accuracy)


def with_accuracy(t: pd.DataFrame, accuracy: pd.DataFrame | None) -> pd.DataFrame:
    """``t`` with the accuracy columns of the rows ``accuracy`` scored (last record of each row wins)."""
    from .words import delta_cell, row_accuracy

    t = t.copy()
    t["Δ box AP"], t["Δ mask AP"], t["accuracy"] = "", "", ""
    if accuracy is None or accuracy.empty:
        return t
    for label, r in accuracy.drop_duplicates("row", keep="last").set_index("row").iterrows():
        if label in t.index:
            t.loc[label, ["Δ box AP", "Δ mask AP"]] = [delta_cell(r, "box"), delta_cell(r, "mask")]
            t.loc[label, "accuracy"] = "reference" if label == BASE else row_accuracy(r)
    return t


def case_tables(rows: pd.DataFrame, agreement: pd.DataFrame | None, cases: Sequence[str],
                order: Sequence[str], accuracy: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """``case_table`` per case (a ``case`` column in each of the frames), rows in ``order``."""
    return {case: case_table(rows[rows["case"] == case], _of_case(agreement, case), order,
                             _of_case(accuracy, case)) for case in cases}


def total_spread(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, ``total`` ms per image over repeats and images: median, p10, p90 and n."""
    return stage_summary(rows[rows["stage"] == S.TOTAL]).set_index("variant")[["median", "p10", "p90", "n"]]
