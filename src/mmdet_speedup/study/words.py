"""The words of the study: verdicts as sentences, findings as Markdown, and the glue that puts them on a page.

Every sentence a chapter prints about a measurement is built here or in its chapter module from a verdict
(``stats.verdict``) and the rows it was read from; the pages' own prose carries no comparative word.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..stats import (FASTER, FLOOR, NO_DIFFERENCE, SLOWER, Best, Verdict, aa_of, row_interval)


class Md(str):
    """Text a chapter glues as Markdown."""


def glue_all(values: Mapping[str, Any]) -> None:
    """Glue every value: :class:`Md` as Markdown, the rest as text (``book.glue``)."""
    from ..book import glue

    for name, value in values.items():
        glue_markdown(name, value) if isinstance(value, Md) else glue(name, value)


def tied_text(best: Best, what: str = "") -> str:
    """A ranking in words: "`a` is the fastest" only where its lead clears the floor, else who it is tied with."""
    of = f" ({what})" if what else ""
    if best.clear:
        return f"`{best.label}` is the fastest{of}, its lead over every other row clearing the floor"
    others = ", ".join(f"`{t}`" for t in best.tied)
    return (f"no row is the fastest{of}: `{best.lowest}` has the lowest median, tied with {others} "
            "(its pairwise interval with each of them does not clear the floor)")


def takeaway(name: str, v: Verdict, baseline: str, what: str = "") -> str:
    """One sentence from a verdict: "`+precision` against `stock`: faster (1.8x, 95% CI 1.7-1.9x)."

    ``what`` names the measured quantity when it is not the total ("backbone + neck").
    """
    of = f", {what}" if what else ""
    return f"`{name}` against `{baseline}`{of}: {v.text}."


def findings_markdown(items: Iterable[str]) -> str:
    """A Markdown bullet list, one finding per item (empty string for no items)."""
    return "".join(f"- {s}\n" for s in items)


class _Markdown:
    """Markdown that also renders as HTML: ``{glue:md}`` reads ``text/markdown`` on its own page, and another page
    pasting it (``{glue:any}`` with ``:doc:``, the landing page) gets ``text/html`` (myst-nb's cross-page glue
    renders no Markdown)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        from markdown_it import MarkdownIt

        return {"text/markdown": self.text, "text/html": MarkdownIt().render(self.text), "text/plain": self.text}


def glue_markdown(name: str, text: str) -> None:
    """Glue ``text`` as Markdown (and HTML, for pasting on another page), so ``{glue:md}`name``` renders it.

    ``{glue:md}`` reads the ``text/markdown`` entry of the glued object's mimebundle: a plain string would give
    only ``text/plain``. Not displayed in the cell.
    """
    from myst_nb import glue

    glue(name, _Markdown(text), display=False)


def floor_finding(table: pd.DataFrame, baseline: str, what: str = "") -> str:
    """The A/A row of a ``ratio_table`` in words: the sweep's noise floor, which every verdict beside it is held
    to ("" when the table has no A/A row)."""
    aa = aa_of(baseline)
    if aa not in table.index:
        return ""
    iv = row_interval(table.loc[aa])
    of = f", {what}" if what else ""
    return f"`{aa}` against `{baseline}`{of}: {_ratio(iv)}, the noise floor every verdict of this sweep is held to."


def _ratio(iv) -> str:
    from ..stats import _x
    return f"{_x(iv.ratio)}x ({iv.spread()})"


def table_findings(table: pd.DataFrame, baseline: str, what: str = "") -> str:
    """A ``ratio_table``'s rows, all but the baseline's, as Markdown findings (``takeaway`` each)."""
    return findings_markdown(
        takeaway(str(label), Verdict(r["verdict"], row_interval(r)), baseline, what) if r["verdict"] != FLOOR
        else f"`{label}` against `{baseline}`{f', {what}' if what else ''}: {r['text']}."
        for label, r in table.iterrows() if label != baseline)


def verdict_summary(table: pd.DataFrame, baseline: str, what: str = "", skip: Sequence[str] = ()) -> str:
    """One sentence grouping a ``ratio_table``'s rows by verdict against ``baseline``, each with its ratio and
    interval: "Against `stock` (pre-processing): faster: `device` (1.4x, 95% CI ...); no measurable difference:
    `auto` (...)." A group with no rows is left out; rows in ``skip`` (an A/A row) too."""
    rows = table.drop(index=[baseline, *skip], errors="ignore")
    rows = rows[rows["verdict"] != FLOOR]
    groups = []
    for word in (FASTER, NO_DIFFERENCE, SLOWER):
        picked = rows[rows["verdict"] == word]
        if len(picked):
            items = ", ".join(f"`{label}` ({r['text'].split('(', 1)[1]}" for label, r in picked.iterrows())
            groups.append(f"{word}: {items}")
    of = f" ({what})" if what else ""
    return f"Against `{baseline}`{of}, " + "; ".join(groups) + "." if groups else ""


def verdict_of(table: pd.DataFrame, label: str) -> str:
    """A ``ratio_table`` row's verdict text ("faster (1.8x, 95% CI 1.7-1.9x)"), or "not measured"."""
    return str(table.loc[label, "text"]) if label in table.index else "not measured"


def share_sentence(medians: pd.Series, total: float, what: str = "the total") -> str:
    """Where the time goes, from per-stage medians: "`backbone` 61% of the total, then `roi_mask` 14%, ...";
    shares under 5% are left out. Medians only: a share is a description, not a comparison with a verdict."""
    shares = (medians / total).sort_values(ascending=False)
    parts = [f"`{s}` {v * 100:.0f}%" for s, v in shares.items() if v >= 0.05]
    return f"Of {what}: " + ", ".join(parts) + "." if parts else ""


def repeats_sentence(info: Mapping | None) -> str:
    """What a sweep traded, in words, from ``df.attrs["repeats"]`` (or ``Profiler.last_repeats``)."""
    if not info:
        return ""
    n, lo, hi = info["n"], info["min"], info["max"]
    if lo == hi:
        return f"{n} interleaved repeats"
    why = {"narrow": "stopped because every interval was already narrow",
           "budget": "stopped at the sweep's time budget", "max": "the most it allows"}[info["stopped"]]
    return f"{n} interleaved repeats (allowed {lo} to {hi}; {why})"


def md_table(df: pd.DataFrame, index: str | None = None) -> str:
    """A small table as Markdown (for glue that another page pastes), the index as the first column."""
    cols = [index or df.index.name or "", *map(str, df.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in (i, *r)) + " |" for i, r in zip(df.index, df.itertuples(index=False))]
    return "\n".join(lines) + "\n"


#: The accuracy rule's margin on delta AP (COCO AP@[.5:.95], 0-1 scale): one AP point, fixed before any
#: study-size row is scored (the method page states it); it does not move afterwards.
ACCURACY_MARGIN = 0.010
#: Fewer scored images than this and every accuracy word is "cannot tell".
MIN_SCORED_IMAGES = 50


def accuracy_word(box, mask, n_images: int) -> str:
    """The accuracy rule (``stats.accuracy_verdict``) at the study's margin, on ``accuracy.Delta`` values."""
    from ..stats import accuracy_verdict

    return accuracy_verdict((box.lo, box.hi), None if mask is None else (mask.lo, mask.hi), n_images,
                            margin=ACCURACY_MARGIN, min_images=MIN_SCORED_IMAGES)


def delta_text(d) -> str:
    """"-0.004 (95% CI -0.009 to 0.001, 100 images)" for an ``accuracy.Delta``."""
    return f"{d.delta:+.3f} (95% CI {d.lo:+.3f} to {d.hi:+.3f}, {d.n_images} images)"


def _interval(r, name: str):
    lo, hi = r.get(f"{name}_dAP_lo"), r.get(f"{name}_dAP_hi")
    return None if lo is None or pd.isna(lo) else (float(lo), float(hi))


def row_accuracy(r) -> str:
    """The accuracy rule on one recorded accuracy row (``book.Chapter.accuracy``); "error" for an error row."""
    from ..stats import CANNOT_TELL, accuracy_verdict

    if isinstance(r.get("error"), str):
        return "error"
    box = _interval(r, "box")
    if box is None:
        return CANNOT_TELL
    return accuracy_verdict(box, _interval(r, "mask"), int(r["images"]), margin=ACCURACY_MARGIN,
                            min_images=MIN_SCORED_IMAGES)


def delta_cell(r, name: str) -> str:
    """"-0.004 (-0.009 to +0.001)": a row's delta AP and its interval, or "" where it has none."""
    iv = _interval(r, name)
    return "" if iv is None else f"{r[f'{name}_dAP']:+.3f} ({iv[0]:+.3f} to {iv[1]:+.3f})"


def accuracy_table(acc: pd.DataFrame, reference: str = "stock") -> pd.DataFrame:
    """Per row: box and mask AP, their deltas against ``reference`` with intervals, the rule's word, and whose
    pass scored it (rows with one numerics key share a pass); an error row shows its reason."""
    out = pd.DataFrame(index=acc.index)
    out["box AP"] = acc.get("box_AP")
    out["Δ box AP (interval)"] = [delta_cell(r, "box") for _, r in acc.iterrows()]
    if "mask_AP" in acc:
        out["mask AP"] = acc["mask_AP"]
        out["Δ mask AP (interval)"] = [delta_cell(r, "mask") for _, r in acc.iterrows()]
    out["accuracy"] = [row_accuracy(r) if i != reference else "reference" for i, r in acc.iterrows()]
    out["scored by the pass of"] = acc.get("pass_of")
    if "error" in acc and acc["error"].notna().any():
        out["error"] = acc["error"].fillna("")
    return out


def accuracy_of(acc: pd.DataFrame, reference: str = "stock") -> pd.Series:
    """Each row's accuracy word (``reference`` for the reference row), for a speed table's column."""
    return pd.Series({i: "reference" if i == reference else row_accuracy(r) for i, r in acc.iterrows()},
                     dtype=object)


def accuracy_sentence(acc: pd.DataFrame) -> str:
    """What the accuracy column rests on, once per table: images scored, the rule and its margin; and where
    too few images were scored, that every word is "cannot tell"."""
    n = int(acc["images"].max()) if "images" in acc and acc["images"].notna().any() else 0
    s = (f"Delta AP is the row's COCO AP (box and mask, IoU .50:.95) minus the reference's on the same {n} val "
         f"images, with a paired bootstrap interval over images; a row keeps accuracy iff both intervals lie "
         f"within ±{ACCURACY_MARGIN:.3f}, changes it iff either lies wholly outside, else cannot tell.")
    if n < MIN_SCORED_IMAGES:
        s += f" Fewer than {MIN_SCORED_IMAGES} images were scored, so every row's word is \"cannot tell\"."
    return s


def accuracy_text(acc: pd.DataFrame, label: str) -> str:
    """"keeps accuracy (Δ box AP +0.001, -0.004 to +0.006; Δ mask AP ...; 50 images)" for one row."""
    if label not in acc.index:
        return "not scored"
    r = acc.loc[label]
    if isinstance(r.get("error"), str):
        return f"not scored ({r['error']})"
    parts = [f"Δ {name} AP {delta_cell(r, name)}" for name in ("box", "mask") if _interval(r, name)]
    return f"{row_accuracy(r)} ({'; '.join(parts)}; {int(r['images'])} images)"
