"""Chapter 01, pre-processing: what its rows say, per case.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .. import stages as S
from ..stats import aa_in, aa_of, ratio_tables
from .words import Md, findings_markdown, floor_finding, verdict_summary


def findings(rows: pd.DataFrame, summary: pd.DataFrame, diffs: pd.DataFrame, big_case: str) -> dict[str, Any]:
    """01: each path against ``stock`` per case; what ``auto`` chose; bytes copied; decode beside pre-processing."""
    rows = with_preprocess_case(rows)
    tables = ratio_tables(rows, "stock", stages=(S.PREPROCESS, S.DATA_PREPROCESSOR), aa=aa_in(rows, "stock"))
    big, load = summary.xs(big_case), summary["load_ms"].groupby(level="case").median()
    pre = summary["pre_ms"].xs("stock", level="variant")
    said = [f"{c}: {verdict_summary(t, 'stock', 'pre-processing', skip=[aa_of('stock')])}" for c, t in tables.items()]
    floors = [f"{c}: {line}" for c, t in tables.items() if (line := floor_finding(t, "stock"))]
    return {"pre_findings": Md(findings_markdown(said)), "pre_headline": Md(said[-1]), "pre_big_case": big_case,
            "pre_floors": Md(findings_markdown(floors)),
            "pre_auto_chose": ", ".join(f"{c}: {v}" for c, v in summary["chosen"].xs("auto", level="variant").items()),
            "pre_copy": ", ".join(f"`{v}` {big.loc[v, 'MiB copied']:.1f} MiB" for v in ("legacy", "stock", "device")),
            "pre_load_vs_pre": ", ".join(f"{c}: {load[c]:.1f} ms against {pre[c]:.1f} ms" for c in pre.index),
            "pre_device_max_levels": float(diffs.loc["device", "max_levels"]),
            "pre_device_mean_levels": float(diffs.loc["device", "mean_levels"])}


def with_preprocess_case(rows: pd.DataFrame) -> pd.DataFrame:
    """``run_preprocess`` rows with their case, ``"<input size> > <model scale>"``."""
    return rows.assign(case=rows["input_size"] + " > " + rows["scale"])


def preprocess_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """``run_preprocess`` rows per (case, variant): wall and CPU ms of ``preprocess + data_preprocessor`` per
    image (per repeat the mean over images, then the median over repeats, as ``stats.ratio_table``), ``load`` ms
    the same way, MiB copied, the input's megapixels and what ``auto`` chose (its most common pick).

    A case is ``"<input size> > <model scale>"``.
    """
    from ..models import megapixels

    ok = with_preprocess_case(rows[rows["status"] == "ok"])
    keys = ["case", "variant", "repeat", "image"]
    wall = ok.pivot_table(index=keys, columns="stage", values="ms", aggfunc="sum")
    cpu = ok.pivot_table(index=keys, columns="stage", values="cpu_ms", aggfunc="sum")
    per = pd.DataFrame({"pre_ms": wall[S.PREPROCESS] + wall[S.DATA_PREPROCESSOR],
                        "pre_cpu_ms": cpu[S.PREPROCESS] + cpu[S.DATA_PREPROCESSOR], "load_ms": wall[S.LOAD]})
    by = ok.groupby(["case", "variant"], sort=False)
    # per repeat the mean over images, then the median over repeats: the statistic the ratios are read from
    per_repeat = per.groupby(["case", "variant", "repeat"]).mean()
    out = per_repeat.groupby(["case", "variant"]).median().reindex(by.size().index)  # in the order measured
    out["MiB copied"] = by["bytes_copied"].median() / 2**20
    out["chosen"] = by["chosen"].agg(lambda s: s.mode().iat[0])
    out["megapixels"] = by["input_size"].first().map(megapixels)
    out["scale"] = by["scale"].first()
    return out
