"""Chapter 03, mask post-processing: the sweep's summaries and what they say.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .. import stages as S
from ..masks import MASK_VARIANTS
from ..stats import aa_floor, aa_in, aa_of, ratio_table
from .words import Md, findings_markdown, floor_finding, verdict_of, verdict_summary

def sweep_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """``Profiler.run_masks`` rows, one row per (``input_size``, ``dets_per_image``, ``variant``).

    Columns: the median ms of ``mask_postprocess`` and of ``consumer.rle`` (over images and repeats), ``together``
    (the sum of those two medians), ``MiB held`` (median MiB the results hold, ``mask_bytes``), ``dets`` (median
    detections out) and ``megapixels`` of the input. Error rows are left out; rows come by image size, detections,
    then variant in ``MASK_VARIANTS`` order (other labels after them).
    """
    from ..models import megapixels

    keys = ["input_size", "dets_per_image", "variant"]
    ok = rows[rows["status"] == "ok"]
    med = ok.pivot_table(index=keys, columns="stage", values="ms", aggfunc="median")
    post = ok[ok["stage"] == S.MASK_POSTPROCESS].groupby(keys)
    out = pd.DataFrame({S.MASK_POSTPROCESS: med[S.MASK_POSTPROCESS], S.CONSUMER_RLE: med[S.CONSUMER_RLE]})
    out["together"] = out[S.MASK_POSTPROCESS] + out[S.CONSUMER_RLE]
    out["MiB held"] = post["mask_bytes"].median() / 2**20
    out["dets"] = post["dets_out"].median()
    out = out.reset_index()
    out["megapixels"] = out["input_size"].map(megapixels)
    rank = {v: i for i, v in enumerate(MASK_VARIANTS)}
    order = out.assign(_rank=out["variant"].map(rank).fillna(len(rank)))
    order = order.sort_values(["megapixels", "input_size", "dets_per_image", "_rank", "variant"], kind="stable")
    return out.loc[order.index].reset_index(drop=True)


def _case(summary: pd.DataFrame, input_size: str, dets_per_image: int) -> pd.DataFrame:
    case = summary[(summary["input_size"] == input_size) & (summary["dets_per_image"] == dets_per_image)]
    if case.empty:
        raise ValueError(f"no mask rows at {input_size} with {dets_per_image} detections per image")
    return case.set_index("variant")


def consumer_bill(summary: pd.DataFrame, input_size: str, dets_per_image: int) -> pd.DataFrame:
    """The consumer's bill of one case of ``sweep_summary``: per variant, median ms of ``mask_postprocess``, of the
    RLE consumer (``consumer.rle``) and of both together, what a consumer wanting every mask as COCO RLE pays."""
    bill = _case(summary, input_size, dets_per_image)[[S.MASK_POSTPROCESS, S.CONSUMER_RLE, "together"]]
    bill.columns.name = "part"
    return bill


def findings(summary: pd.DataFrame, input_size: str, dets_per_image: int) -> dict[str, float]:
    """One case's figures from ``sweep_summary`` (needs the ``full``, ``legacy``, ``box`` and ``raw`` variants).

    ``raw_vs_legacy``, ``raw_vs_full``, ``box_vs_full``: how many times faster ``mask_postprocess`` is;
    ``raw_rle_vs_full_rle``: ``full``'s post-processing plus RLE consumer over ``raw``'s; ``mem_<variant>_mb``: MB
    the results of ``full``, ``box`` and ``raw`` hold.
    """
    case = _case(summary, input_size, dets_per_image)
    post, together, mb = case[S.MASK_POSTPROCESS], case["together"], case["MiB held"]
    return {"raw_vs_legacy": float(post["legacy"] / post["raw"]), "raw_vs_full": float(post["full"] / post["raw"]),
            "box_vs_full": float(post["full"] / post["box"]),
            "raw_rle_vs_full_rle": float(together["full"] / together["raw"]),
            "mem_full_mb": float(mb["full"]), "mem_box_mb": float(mb["box"]), "mem_raw_mb": float(mb["raw"])}


def sentences(rows: pd.DataFrame, input_size: str) -> dict[str, Any]:
    """03: the variants against ``full`` (alone and with the RLE consumer) and ``raw`` against ``legacy``."""
    case = rows[(rows["sweep"] == "size") & (rows["input_size"] == input_size)]
    aa = aa_in(case, "full")
    post = ratio_table(case, "full", stages=(S.MASK_POSTPROCESS,), aa=aa)
    bill = ratio_table(case, "full", stages=(S.MASK_POSTPROCESS, S.CONSUMER_RLE), aa=aa)
    legacy = ratio_table(case, "legacy", stages=(S.MASK_POSTPROCESS,),
                         floor=aa and aa_floor(case, "full", aa, stages=(S.MASK_POSTPROCESS,)))
    return {"mask_headline": Md(f"At {input_size}, with a consumer that asks for every mask as COCO RLE (equal "
                                f"outputs): `raw` against `full`, {verdict_of(bill, 'raw')}. `mask_postprocess` "
                                f"alone (`raw` returns no pasted masks): `raw` against `full`, "
                                f"{verdict_of(post, 'raw')}; against `legacy`, {verdict_of(legacy, 'raw')}."),
            "mask_findings": Md(findings_markdown([
        verdict_summary(post, "full", "`mask_postprocess`", skip=[aa_of("full")]),
        f"`raw` against `legacy`: {verdict_of(legacy, 'raw')}",
        verdict_summary(bill, "full", "`mask_postprocess` + RLE of every instance", skip=[aa_of("full")]),
        *filter(None, [floor_finding(post, "full", "`mask_postprocess`")])]))}
