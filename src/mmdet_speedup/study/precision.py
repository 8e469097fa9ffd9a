"""Chapter 02, reduced precision: each lever against the one below it, the pick, its accuracy and agreement.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .. import stages as S
from ..stats import aa_floor, best_of, ratio_table, row_interval
from .words import Md, accuracy_text, findings_markdown, table_findings, tied_text, verdict_of


def findings(rows: pd.DataFrame, ratios: pd.DataFrame, eq: pd.DataFrame, low: str, acc: pd.DataFrame,
             aa: str = "fp32 (A/A)") -> dict[str, Any]:
    """02: every row against fp32; each lever on top of the one before; the pick's RoI heads, total, accuracy
    and agreement."""
    feat, roi = (S.BACKBONE, S.NECK), (S.ROI_BBOX, S.ROI_MASK)
    floor = row_interval(ratios.loc[aa])
    best = best_of(rows, [v for v in ratios.index if v not in ("fp32", aa)], stages=feat, floor=floor)
    pick = best.lowest  # the row the steps below follow: the lowest median, named tied where it does not clear

    ran = set(rows.loc[rows["status"] == "ok", "variant"])

    def why_not(v: str) -> str:
        err = rows.loc[(rows["variant"] == v) & (rows["status"] == "error"), "message"]
        return str(err.iloc[0]) if len(err) else "no rows"

    def step(a: str, b: str, stages=feat) -> str:
        missing = [v for v in (a, b) if v not in ran]
        if missing:
            return f"not measured: `{missing[0]}` did not run ({why_not(missing[0])})"
        floor_of = aa_floor(rows, "fp32", aa, stages=stages)  # the sweep's floor, on the same stages
        return verdict_of(ratio_table(rows[rows["variant"].isin([a, b])], a, stages=stages, floor=floor_of), b)

    total = step("fp32", pick, (S.TOTAL,))
    matched = float(eq.loc[pick, ["matched_ref", "matched_test"]].min())
    steps = [f"channels_last on top of `{low}` autocast, backbone + neck: {step(low, f'{low} +cl')}",
             f"BatchNorm folded on top of `{low} +cl`: {step(f'{low} +cl', f'{low} +cl +foldbn')}",
             f"`{low}-weights` instead of autocast, both with channels_last: {step(f'{low} +cl', f'{low}-weights +cl')}",
             f"Backbone + neck: {tied_text(best)}",
             f"`{pick}` (the lowest backbone + neck median) against `fp32`, RoI heads (`roi_bbox` + "
             f"`roi_mask`, which run under the same autocast): {step('fp32', pick, roi)}",
             f"`{pick}` against `fp32`, end to end: {total}"]
    return {"prec_findings": Md(table_findings(ratios, "fp32", "backbone + neck")),
            "prec_headline": Md(f"`{pick}` against `fp32`: backbone + neck {verdict_of(ratios, pick)}; end to end "
                                f"{total}; accuracy: {accuracy_text(acc, pick)}."
                                + ("" if best.clear else f" Backbone + neck: {tied_text(best)}.")
                                + ("" if low in ran else f" `{low}` did not run: {why_not(low)}.")),
            "prec_steps": Md(findings_markdown(steps)), "prec_pick": pick,
            "prec_pick_accuracy": Md(accuracy_text(acc, pick) + "."),
            "prec_pick_box_iou": float(eq.loc[pick, "box_iou_mean"]),
            "prec_pick_feat_err": float(eq.loc[pick, "feature_rel_err"]),
            "prec_pick_matched": matched}
