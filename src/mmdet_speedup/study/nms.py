"""Chapter 04, NMS: the workbench's fits, C4 against FPN, the pre-NMS sweep, Detectron's zoo, and what they say.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import stages as S
from ..stats import FASTER, aa_floor, floor_text, aa_of, ratio_interval, ratio_table, verdict
from .words import Md, findings_markdown, verdict_of

def _medians(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    ok = df[df["status"] == "ok"] if "status" in df else df
    return ok.groupby([*by, "n"], as_index=False)["ms"].median()


def fit_slope(df: pd.DataFrame, *, n_min: int | None = None,
              by: Sequence[str] = ("implementation", "box_set", "num_classes", "iou_threshold")) -> pd.DataFrame:
    """Least-squares slope of log(median ms) against log(n), per group: 1 is linear, 2 quadratic.

    ``by`` columns missing from ``df`` are dropped; ``n_min`` drops the small n where fixed overhead
    hides the asymptotic cost.
    """
    by = [c for c in by if c in df.columns]
    med = _medians(df if n_min is None else df[df["n"] >= n_min], by)
    out = []
    for key, g in med.groupby(by):
        g = g[g["ms"] > 0]
        slope = float(np.polyfit(np.log(g["n"]), np.log(g["ms"]), 1)[0]) if g["n"].nunique() >= 2 else float("nan")
        key = key if isinstance(key, tuple) else (key,)
        out.append({**dict(zip(by, key)), "slope": slope, "n_min": int(g["n"].min()) if len(g) else None,
                    "n_max": int(g["n"].max()) if len(g) else None, "points": int(g["n"].nunique())})
    return pd.DataFrame(out, columns=[*by, "slope", "n_min", "n_max", "points"])


def crossover(df: pd.DataFrame, a: str = "offset", b: str = "per_class", **where) -> int | None:
    """The smallest n from which ``b`` is faster than ``a`` at every larger measured n by the verdict rule, or None.

    At each n the repeats of ``a`` and ``b`` (taken back to back) give a paired ratio interval; "faster" is
    ``stats.verdict`` on it, so a win inside the repeats' spread never counts. Filter to one box_set /
    iou_threshold / num_classes first (or pass them as ``where``).
    """
    for col, val in where.items():
        df = df[df[col] == val]
    ok = df[(df["status"] == "ok") & df["implementation"].isin([a, b])] if "status" in df else df
    wins = []
    for n, g in ok.groupby("n"):
        wide = g.pivot_table(index="repeat", columns="implementation", values="ms", aggfunc="sum").dropna()
        if a not in wide or b not in wide or wide.empty:
            continue
        wins.append((int(n), verdict(ratio_interval(wide[a], wide[b])).word == FASTER))
    if not wins or not wins[-1][1]:
        return None
    i = len(wins) - 1  # walk back from the largest n while b stays faster
    while i > 0 and wins[i - 1][1]:
        i -= 1
    return wins[i][0]


def slope_table(df: pd.DataFrame, iou_threshold: float, n_min: int | None = None) -> pd.DataFrame:
    """``fit_slope`` at one IoU threshold as a table: one row per implementation, one column per box set.

    ``n_min`` defaults to the middle of the measured sizes (the upper half of the sweep, where fixed overhead
    no longer hides the asymptotic cost).
    """
    if n_min is None:
        sizes = sorted(df["n"].unique())
        n_min = int(sizes[len(sizes) // 2])
    slopes = fit_slope(df, n_min=n_min)
    slopes = slopes[slopes["iou_threshold"] == iou_threshold]
    return slopes.pivot_table(index="implementation", columns="box_set", values="slope")


def steepest(slopes: pd.DataFrame) -> tuple[float, str]:
    """The steepest slope of a ``slope_table`` and where it is: ``(slope, "<implementation> on <box_set> boxes")``."""
    stacked = slopes.stack()
    impl, box_set = stacked.idxmax()
    return float(stacked.max()), f"{impl} on {box_set} boxes"


def crossovers(df: pd.DataFrame, iou_threshold: float, a: str = "offset",
               b: str = "per_class") -> dict[str, int | None]:
    """``crossover`` of ``a`` and ``b`` per box set at one IoU threshold: from which n ``b`` is faster (None: never)."""
    return {box_set: crossover(df, a, b, box_set=box_set, iou_threshold=iou_threshold)
            for box_set in sorted(df["box_set"].unique())}


def plot_sweep(df: pd.DataFrame, iou_threshold: float):
    """The workbench's chart: median ms against n per implementation (log-log), one panel per box set."""
    import seaborn as sns

    med = _medians(df[df["iou_threshold"] == iou_threshold], ["box_set", "implementation"])
    g = sns.relplot(data=med, x="n", y="ms", hue="implementation", col="box_set", kind="line", marker="o",
                    height=3.6, aspect=1.2, facet_kws={"sharey": False})
    g.set(xscale="log", yscale="log")
    for ax in g.axes.flat:
        ax.grid(alpha=0.3, which="both")
    device, classes = str(df["device"].iat[0]).split(":")[0], int(df["num_classes"].iat[0])
    g.fig.suptitle(f"NMS time against boxes in (IoU {iou_threshold}, {device}, {classes} classes)", y=1.04)
    return g


def plot_recall(recall: pd.DataFrame, ax=None, *, n: int = 12000, num_objects: int = 60):
    """A ``recall_table`` (made with ``n`` boxes around ``num_objects`` objects) as recall against k (log k)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    ax.plot(recall["k"], recall["recall"], marker="o")
    ax.set(xscale="log", xlabel=f"pre-NMS top-k (synthetic clusters, {n} boxes, {num_objects} objects)",
           ylabel="object recall", title="What a smaller N costs", ylim=(0, 1.05))
    ax.grid(alpha=0.3, which="both")
    return ax


#: The whole RoI head: the box head, the mask head and the masks' post-processing.
ROI_HEAD = "roi head"


def stage_comparison(rows: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Median ms per image per stage (``stage_table``), one row per variant in ``order``, with a ``roi head``
    column (``roi_bbox + roi_mask + mask_postprocess``) and the median work each variant did (``WORK_COLUMNS``)."""
    from mmdet_speedup.profiler import stage_table  # imports mmdet: only when profiler rows are read

    t = stage_table(rows).reindex(list(order))
    t[ROI_HEAD] = t[[c for c in (S.ROI_BBOX, S.ROI_MASK, S.MASK_POSTPROCESS) if c in t]].sum(axis=1)
    ok = rows[rows["status"] == "ok"]
    return t.join(ok.groupby("variant")[list(WORK_COLUMNS)].median())


def c4_fpn_ratio(table: pd.DataFrame) -> pd.DataFrame:
    """C4's time over FPN's for ``rpn``, ``rpn.nms``, the RoI head and ``total``: one column per detector family,
    for every family with both a ``"<family> C4"`` and a ``"<family> FPN"`` row in ``table`` (a ``stage_comparison``)."""
    families = [v[:-3] for v in table.index if v.endswith(" C4") and f"{v[:-3]} FPN" in table.index]
    parts = [S.RPN, S.RPN_NMS, ROI_HEAD, S.TOTAL]
    return pd.DataFrame({f: table.loc[f"{f} C4", parts] / table.loc[f"{f} FPN", parts] for f in families},
                        index=parts).astype(float)


def pre_nms_medians(rows: pd.DataFrame) -> pd.DataFrame:
    """Pre-NMS sweep rows (variants ``"<arch> pre=<N>"``) as median ms of ``rpn`` and ``rpn.nms`` per arch and N,
    with the boxes NMS took in (``nms_in``: median ``rpn_nms_in``) and ``series``, ``"<arch> <stage>"`` (a chart's line).
    """
    ok = rows[(rows["status"] == "ok") & rows["stage"].isin([S.RPN, S.RPN_NMS])]
    ok = ok.assign(arch=ok["variant"].str.split(" pre=").str[0])
    out = ok.groupby(["arch", "rpn_pre_nms", "stage"], as_index=False).agg(
        ms=("ms", "median"), nms_in=("rpn_nms_in", "median"))
    return out.assign(series=out["arch"] + " " + out["stage"])


def pre_nms_table(medians: pd.DataFrame) -> pd.DataFrame:
    """``pre_nms_medians`` wide: one row per (arch, N), ms per stage, and ``nms_in``."""
    keys = ["arch", "rpn_pre_nms"]
    return medians.pivot_table(index=keys, columns="stage", values="ms").join(medians.groupby(keys)["nms_in"].first())


def pre_nms_growth(medians: pd.DataFrame, arch: str, stage: str = S.RPN_NMS) -> dict[str, float]:
    """How ``stage`` grows over ``arch``'s pre-NMS sweep: the smallest and largest N (``lo``, ``hi``) and the
    ratio of its median ms at ``hi`` to that at ``lo`` (``growth``)."""
    s = medians[(medians["arch"] == arch) & (medians["stage"] == stage)].set_index("rpn_pre_nms")["ms"].sort_index()
    return {"lo": float(s.index[0]), "hi": float(s.index[-1]), "growth": float(s.iloc[-1] / s.iloc[0])}


def detectron_zoo(path: str | Path | None = None, lr_schd: str = "1x") -> pd.DataFrame:
    """Detectron's published inference times (``data/reference/detectron_model_zoo.csv``) for one schedule:
    table, backbone, type, seconds per image in its GPU code (``inference_s_per_im``) and in its unoptimized
    CPU code (``inference_extra_s``)."""
    from mmdet_speedup.project import reference_dir

    dz = pd.read_csv(path or reference_dir() / "detectron_model_zoo.csv")
    return dz[dz["lr_schd"] == lr_schd][["table", "backbone", "type", "inference_s_per_im", "inference_extra_s"]]


def zoo_c4_over_fpn(zoo: pd.DataFrame) -> dict[str, float]:
    """From ``detectron_zoo``: end-to-end inference time (a + b, as published) of R-50-C4 over R-50-FPN, per type."""
    e2e = zoo[zoo["table"].str.contains("End-to-End", case=False)].set_index(["type", "backbone"])
    e2e = e2e["inference_s_per_im"] + e2e["inference_extra_s"].fillna(0)  # a + b: GPU code plus CPU code
    return {t: float(e2e.loc[(t, "R-50-C4")] / e2e.loc[(t, "R-50-FPN")])
            for t in e2e.index.get_level_values("type").unique()}


#: What each variant did, read from the profiler's rows: the RPN's pre-NMS N, the boxes each NMS took in, detections.
WORK_COLUMNS = ("rpn_pre_nms", "rpn_nms_in", "bbox_nms_in", "dets_out")


def _cross_text(n: int | None) -> str:
    if n is None:
        return ("no crossover by the verdict rule: the per-class loop is not faster than the offset trick at the "
                "largest n (with fewer than 3 repeats no verdict is given, so none is found)")
    return f"the per-class loop is faster than the offset trick by the verdict rule from n = {n} on"


def findings(rows: pd.DataFrame, slopes: pd.DataFrame, cross: Mapping[str, Any], table: pd.DataFrame,
        growth: Mapping[str, float], recall: pd.DataFrame, zoo: Mapping[str, float]) -> dict[str, Any]:
    """04: the kernels' fitted slopes per box set; C4 against FPN per part with intervals, and where the
    difference in total sits; the pre-NMS growth; recall at top-1000; Detectron's published direction."""
    arch = rows[rows["sweep"] == "arch"]
    kernels = [f"{box_set}: fitted slopes {slopes[box_set].min():.2f} to {slopes[box_set].max():.2f} "
               f"(`{slopes[box_set].idxmin()}` to `{slopes[box_set].idxmax()}`); {_cross_text(cross.get(box_set))}"
               for box_set in slopes.columns]
    parts, arch_items = (S.RPN, S.RPN_NMS, S.TOTAL), []
    aa = aa_of("Faster FPN")  # FPN profiled again in a sweep of its own, as each configuration is
    floors = {p: aa_floor(arch, "Faster FPN", aa, stages=(p,)) for p in parts}

    def against(c4: str, fpn: str, p: str) -> str:
        pair = arch[arch["variant"].isin([c4, fpn])]
        return verdict_of(ratio_table(pair, fpn, stages=(p,), floor=floors[p]), c4)

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
                          "; ".join(f"`{p}` {floor_text(floors[p])}" for p in parts))
    return {"nms_kernels": Md(findings_markdown(kernels)), "nms_arch": Md(findings_markdown(arch_items)),
            "nms_headline": Md(arch_items[0] + "." if arch_items else "No C4 and FPN pair ran."),
            "nms_c4_pre_lo": int(growth["lo"]), "nms_c4_pre_hi": int(growth["hi"]),
            "nms_c4_nms_growth": float(growth["growth"]),
            "nms_recall_1000": float(recall.set_index("k").loc[1000, "recall"]),
            "dz_faster_c4_over_fpn": float(zoo["Faster"]), "dz_mask_c4_over_fpn": float(zoo["Mask"]),
            "nms_zoo_direction": f"{direction} this run's median ratio for Faster R-CNN ({here:.2f}x)"}


def pre_nms_pipelines(model, name: str, values: Sequence[int], device) -> tuple[dict[str, Any], str]:
    """Per pre-NMS N (the config's own added), a function making the stock pipeline of a copy of ``model`` at that
    N, labelled like the sweep's rows (``<name> pre=<N>``); and the label of the config's own N (the reference)."""
    from functools import partial

    from ..models import clone, set_workload
    from ..pipeline import StagedPipeline
    from ..profiler import workload_of

    own = int(workload_of(model)["rpn_pre_nms"])

    def at(n: int):
        m = clone(model)
        set_workload(m, rpn_pre_nms=n)
        return StagedPipeline(m, device=device)

    return {f"{name} pre={n}": partial(at, n) for n in sorted({*map(int, values), own})}, f"{name} pre={own}"


def accuracy_findings(acc: pd.DataFrame, reference: str) -> str:
    """Each pre-NMS N against the config's own, in words (Markdown bullets)."""
    from .words import accuracy_text

    return findings_markdown(f"`{row}` against `{reference}`: {accuracy_text(acc, row)}."
                             for row in acc.index if row != reference)
