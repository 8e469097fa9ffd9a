"""Chapter 05, loading/compute overlap: the bound, each reader against serial, and what they say.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from ..loader import LOADING, overlap_bound
from ..stats import aa_in, aa_of, ratio_table
from .words import Md, findings_markdown, floor_finding, verdict_summary

BOUND, SPEEDUP, SPEEDUP_EQUAL = "bound (1/(1-f))", "speed-up", "speed-up, equal priority"

def loading_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Serial against overlapped throughput per model scale, with the bound from the serial profile.

    ``rows``: a run's ``Profiler.run`` rows (the serial profile: every variant not in ``LOADING``) and its
    ``Profiler.run_loading`` rows. Per scale, in the order the rows ran: the median loading ms per image
    (``load + preprocess + data_preprocessor``), the serial total, loading's share *f*, the bound 1 / (1 - f)
    (``overlap_bound`` of the per-stage medians), the median images/s of each ``LOADING`` variant, the
    speed-ups over ``serial`` and the share of the bound the low-priority reader reached (``reached / bound``).
    """
    import pandas as pd

    from .. import stages as S

    ok = rows[rows["status"] == "ok"]
    loading = ok["variant"].isin(list(LOADING))
    per_img = ok[~loading].pivot_table(index=["scale", "repeat", "image"], columns="stage", values="ms")
    per_img = per_img.groupby("scale").median()
    load = per_img[S.LOAD] + per_img[S.PREPROCESS] + per_img[S.DATA_PREPROCESSOR]
    tp = ok[loading].pivot_table(index="scale", columns="variant", values="images_per_s", aggfunc="median")
    out = pd.DataFrame({"loading ms": load, "serial total ms": per_img[S.TOTAL], "loading share": load / per_img[S.TOTAL],
                        BOUND: per_img.apply(overlap_bound, axis=1), "serial img/s": tp["serial"],
                        "overlapped img/s": tp["overlapped"], "equal-priority img/s": tp["overlapped (equal priority)"]})
    out[SPEEDUP] = out["overlapped img/s"] / out["serial img/s"]
    out[SPEEDUP_EQUAL] = out["equal-priority img/s"] / out["serial img/s"]
    out["reached / bound"] = out[SPEEDUP] / out[BOUND]
    return out.reindex(pd.unique(ok["scale"])).rename_axis("scale")


def exceeds_bound(case: Mapping[str, float], tolerance: float = 0.01) -> bool:
    """Whether either reader's speed-up in one ``loading_summary`` row is above the bound by more than
    ``tolerance`` (a fraction): only noise can do that, so then no gain from overlap can be claimed."""
    return max(case[SPEEDUP], case[SPEEDUP_EQUAL]) > (1 + tolerance) * case[BOUND]


def findings(rows: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any]:
    """05: per model scale, loading's share and the overlap bound, then each reader against ``serial`` with
    its interval over passes, and whether a measured speed-up sits above the bound (only noise can do that)."""
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
