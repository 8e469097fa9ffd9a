"""What each chapter says, generated from its rows: every comparison a verdict with its interval.

One function per chapter returns the values a chapter glues: a :class:`Md` value is glued as Markdown
(``{glue:md}``), anything else as text. A chapter's prose around them carries no comparative word of its own
(``tests/test_prose.py``), so a claim can only say what the rows say.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from . import stages as S
from .stats import (aa_floor, aa_in, aa_of, findings_markdown, floor_finding, ratio_table, ratio_tables,
                    table_findings, verdict_of, verdict_summary)


class Md(str):
    """Text a chapter glues as Markdown."""


def glue_all(values: Mapping[str, Any]) -> None:
    """Glue every value: :class:`Md` as Markdown, the rest as text (``book.glue``)."""
    from .book import glue
    from .stats import glue_markdown

    for name, value in values.items():
        glue_markdown(name, value) if isinstance(value, Md) else glue(name, value)


def preprocess(rows: pd.DataFrame, summary: pd.DataFrame, diffs: pd.DataFrame, big_case: str) -> dict[str, Any]:
    """01: each path against ``stock`` per case; what ``auto`` chose; bytes copied; decode beside pre-processing."""
    from .profiler import with_preprocess_case

    rows = with_preprocess_case(rows)
    tables = ratio_tables(rows, "stock", stages=(S.PREPROCESS, S.DATA_PREPROCESSOR), aa=aa_in(rows, "stock"))
    big, load = summary.xs(big_case), summary["load_ms"].groupby(level="case").median()
    pre = summary["pre_ms"].xs("stock", level="variant")
    said = [f"{c}: {verdict_summary(t, 'stock', 'pre-processing', skip=[aa_of('stock')])}" for c, t in tables.items()]
    floors = [f"{c}: {line}" for c, t in tables.items() if (line := floor_finding(t, "stock"))]
    return {"pre_findings": Md(findings_markdown(said)), "pre_headline": Md(said[-1]), "pre_big_case": big_case,
            "pre_floors": Md(findings_markdown(floors)),
            "pre_auto_chose": ", ".join(f"{c}: {v}" for c, v in summary["chosen"].xs("auto", level="variant").items()),
            "pre_copy": ", ".join(f"`{v}` {big.loc[v, 'MB copied']:.1f} MB" for v in ("legacy", "stock", "device")),
            "pre_load_vs_pre": ", ".join(f"{c}: {load[c]:.1f} ms against {pre[c]:.1f} ms" for c in pre.index),
            "pre_device_max_levels": float(diffs.loc["device", "max_levels"]),
            "pre_device_mean_levels": float(diffs.loc["device", "mean_levels"])}


def precision(rows: pd.DataFrame, ratios: pd.DataFrame, eq: pd.DataFrame, low: str, aa: str = "fp32 (A/A)") -> dict[str, Any]:
    """02: every row against fp32; each lever on top of the one before; the pick's RoI heads, total, agreement."""
    feat, roi = (S.BACKBONE, S.NECK), (S.ROI_BBOX, S.ROI_MASK)
    pick = str(ratios.drop(["fp32", aa])["median ms"].idxmin())

    def step(a: str, b: str, stages=feat) -> str:
        return verdict_of(ratio_table(rows, a, stages=stages, aa=aa), b)

    total = step("fp32", pick, (S.TOTAL,))
    steps = [f"channels_last on top of `{low}` autocast, backbone + neck: {step(low, f'{low} +cl')}",
             f"BatchNorm folded on top of `{low} +cl`: {step(f'{low} +cl', f'{low} +cl +foldbn')}",
             f"`{low}-weights` instead of autocast, both with channels_last: {step(f'{low} +cl', f'{low}-weights +cl')}",
             f"`{pick}` (the row with the lowest backbone + neck median) against `fp32`, RoI heads (`roi_bbox` + "
             f"`roi_mask`, which run under the same autocast): {step('fp32', pick, roi)}",
             f"`{pick}` against `fp32`, end to end: {total}"]
    return {"prec_findings": Md(table_findings(ratios, "fp32", "backbone + neck")),
            "prec_headline": Md(f"`{pick}` against `fp32`: backbone + neck {verdict_of(ratios, pick)}; end to end "
                                f"{total}."),
            "prec_steps": Md(findings_markdown(steps)), "prec_pick": pick,
            "prec_pick_box_iou": float(eq.loc[pick, "box_iou_mean"]),
            "prec_pick_feat_err": float(eq.loc[pick, "feature_rel_err"]),
            "prec_pick_matched": float(eq.loc[pick, ["matched_ref", "matched_test"]].min())}


def masks(rows: pd.DataFrame, input_size: str) -> dict[str, Any]:
    """03: the variants against ``full`` (alone and with the RLE consumer) and ``raw`` against ``legacy``."""
    case = rows[(rows["sweep"] == "size") & (rows["input_size"] == input_size)]
    aa = aa_in(case, "full")
    post = ratio_table(case, "full", stages=(S.MASK_POSTPROCESS,), aa=aa)
    bill = ratio_table(case, "full", stages=(S.MASK_POSTPROCESS, S.CONSUMER_RLE), aa=aa)
    legacy = ratio_table(case, "legacy", stages=(S.MASK_POSTPROCESS,),
                         floor=aa and aa_floor(case, "full", aa, stages=(S.MASK_POSTPROCESS,)))
    return {"mask_headline": Md(f"At {input_size}, `mask_postprocess`: `raw` against `full`, {verdict_of(post, 'raw')}"
                                f"; `raw` against `legacy`, {verdict_of(legacy, 'raw')}."),
            "mask_findings": Md(findings_markdown([
        verdict_summary(post, "full", "`mask_postprocess`", skip=[aa_of("full")]),
        f"`raw` against `legacy`: {verdict_of(legacy, 'raw')}",
        verdict_summary(bill, "full", "`mask_postprocess` + RLE of every instance", skip=[aa_of("full")]),
        *filter(None, [floor_finding(post, "full", "`mask_postprocess`")])]))}


def nms(rows: pd.DataFrame, slopes: pd.DataFrame, cross: Mapping[str, Any], table: pd.DataFrame,
        growth: Mapping[str, float], recall: pd.DataFrame, zoo: Mapping[str, float]) -> dict[str, Any]:
    """04: the kernels' fitted slopes per box set; C4 against FPN per part with intervals, and where the
    difference in total sits; the pre-NMS growth; recall at top-1000; Detectron's published direction."""
    from .nms import ROI_HEAD

    arch = rows[rows["sweep"] == "arch"]
    kernels = [f"{box_set}: fitted slopes {slopes[box_set].min():.2f} to {slopes[box_set].max():.2f} "
               f"(`{slopes[box_set].idxmin()}` to `{slopes[box_set].idxmax()}`); per-class loop and offset trick "
               f"cross at n = {cross.get(box_set)}" for box_set in slopes.columns]
    parts, arch_items = (S.RPN, S.RPN_NMS, S.TOTAL), []
    aa = aa_of("Faster FPN")  # FPN profiled again in a sweep of its own, as each configuration is
    floors = {p: aa_floor(arch, "Faster FPN", aa, stages=(p,)) for p in parts}

    def against(c4: str, fpn: str, p: str, held: bool = True) -> str:
        pair = arch[arch["variant"].isin([c4, fpn])]
        return verdict_of(ratio_table(pair, fpn, stages=(p,), floor=floors[p] if held else None), c4)

    for family in ("Faster", "Mask"):
        c4, fpn = f"{family} C4", f"{family} FPN"
        if {c4, fpn} <= set(arch["variant"]):
            said = [f"`{p}` {against(c4, fpn, p)}" for p in parts]
            diff = table.loc[c4] - table.loc[fpn]
            arch_items.append(f"`{c4}` against `{fpn}`: " + "; ".join(said) + f". Of the {diff[S.TOTAL]:.0f} ms "
                              f"between their total medians, the RoI head accounts for {diff[ROI_HEAD]:.0f} ms and "
                              f"`rpn.nms` for {diff[S.RPN_NMS]:.0f} ms")
    here = table.loc["Faster C4", S.TOTAL] / table.loc["Faster FPN", S.TOTAL]
    direction = "the same direction as" if (here > 1) == (zoo["Faster"] > 1) else "the opposite direction to"
    if all(floors.values()):
        arch_items.append(f"`{aa}` against `Faster FPN`, the noise floor every verdict above is held to: " +
                          "; ".join(f"`{p}` {against(aa, 'Faster FPN', p, held=False)}" for p in parts))
    return {"nms_kernels": Md(findings_markdown(kernels)), "nms_arch": Md(findings_markdown(arch_items)),
            "nms_headline": Md(arch_items[0] + "." if arch_items else "No C4 and FPN pair ran."),
            "nms_c4_pre_lo": int(growth["lo"]), "nms_c4_pre_hi": int(growth["hi"]),
            "nms_c4_nms_growth": float(growth["growth"]),
            "nms_recall_1000": float(recall.set_index("k").loc[1000, "recall"]),
            "dz_faster_c4_over_fpn": float(zoo["Faster"]), "dz_mask_c4_over_fpn": float(zoo["Mask"]),
            "nms_zoo_direction": f"{direction} this run's median ratio for Faster R-CNN ({here:.2f}x)"}


def loading(rows: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any]:
    """05: per model scale, loading's share and the overlap bound, then each reader against ``serial`` with
    its interval over passes, and whether a measured speed-up sits above the bound (only noise can do that)."""
    from .loader import BOUND, LOADING, exceeds_bound

    stream = rows[rows["variant"].isin(list(LOADING))]
    items = []
    for scale, case in summary.iterrows():
        one = stream[stream["scale"] == scale]
        table = ratio_table(one, "serial", aa=aa_in(one, "serial"))
        over = (" A measured speed-up sits above the bound, which only noise can do: no gain from overlap is "
                "claimed here." if exceeds_bound(case) else "")
        items.append(f"Model at {scale}: loading is {100 * case['loading share']:.1f}% of the serial time per "
                     f"image, so perfect overlap is bounded by {case[BOUND]:.3f}x. "
                     f"{verdict_summary(table, 'serial', 'time per image over the stream', skip=[aa_of('serial')])}"
                     f"{over} {floor_finding(table, 'serial')}".rstrip())
    return {"load_findings": Md(findings_markdown(items)), "load_headline": Md(items[-1] if items else "")}


def ladder(lad, rows: pd.DataFrame, tables: Mapping[str, pd.DataFrame], bounds: Mapping[str, Mapping[str, float]],
           repeats: Mapping[str, str]) -> dict[str, Any]:
    """06: per case the path against ``stock`` and against ``legacy`` (beside the seed's ratio from its own first
    row, mmdet 2.x: the same kind of baseline), ``legacy`` against ``stock``, where the path's time goes, the
    proposal cut; the climb in words at the first case."""
    from .ladder import AA, BASE, LEGACY, seed_speedups, split_case
    from .stats import share_sentence

    seed, path, head, tail = seed_speedups(), lad.path, [], []
    for case, t in tables.items():
        of = rows[rows["case"] == case]
        vs_stock, vs_legacy = ratio_table(of, BASE, aa=AA), ratio_table(of, LEGACY, aa=AA)
        scale = split_case(case)[1]
        published = (f"; the seed's ladder, from its mmdet 2.x row, gained {seed.loc[scale, 'total']:.2f}x at "
                     f"{scale} on an RTX 3080 (published)" if scale in seed.index else "")
        head.append(f"At {case}: `{path}` against `stock` end to end, {verdict_of(vs_stock, path)}; against "
                    f"`legacy` (mmdet 2.x's path), {verdict_of(vs_legacy, path)}{published}. Agreement with "
                    f"`stock`: {t.loc[path, 'results'] or 'not checked'}. Bounds from the stages: every stage at "
                    f"the lowest cost measured anywhere in the study {bounds[case]['best measured bound']:.2f}x, "
                    f"every stage at its roofline floor {bounds[case]['roofline bound']:.1f}x.")
        stage_ms = t.loc[path, [s for s in S.STAGES if s in t.columns]].dropna()
        tail.append(f"At {case}: `legacy` against `stock`, {verdict_of(vs_stock, LEGACY)}. "
                    f"{share_sentence(stage_ms, float(t.loc[path, S.TOTAL]), f'the time of `{path}`')} "
                    f"`{lad.fewer}` against `{path}`: {verdict_of(ratio_table(of, path), lad.fewer)}, with "
                    f"{t.loc[lad.fewer, 'matched_ref']:.2f} of `stock`'s detections matched.")
    first = rows[rows["case"] == next(iter(tables))]
    return {"lad_headline": Md(findings_markdown(head)), "lad_more": Md(findings_markdown(tail)),
            "lad_findings": Md(lad.findings(first)), "lad_repeats": "; ".join(f"{c}: {r}" for c, r in repeats.items())}
