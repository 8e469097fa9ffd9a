"""Speed-ups with their uncertainty, the words a chapter may use for them, and what "preserves results" means.

A ratio of medians over three repeats says little on a busy machine: the same code against itself moves by
several percent. So every comparison here is a ratio with a bootstrap interval over repeats, and a comparison
is called "faster" or "slower" only when that interval excludes 1 *and* is not inside the A/A floor (the
interval of the baseline measured twice in the same sweep). Agreement between two variants' detections is
turned into one of three words by one fixed rule, :data:`AGREEMENT_RULE`, decided before any figure is seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no measurable difference"
Word = Literal["faster", "slower", "no measurable difference"]

#: Below this many repeats a bootstrap interval is an artefact of resampling 1 or 2 values (every resample
#: is one of a handful of medians), so no verdict claims a difference from it.
MIN_REPEATS = 3


def _x(v: float, digits: int = 2) -> str:
    """A ratio for prose: two decimals, one trailing zero dropped ("1.80" -> "1.8", "1.01" stays)."""
    s = f"{v:.{digits}f}"
    return s[:-1] if s.endswith("0") else s


def _digits(word: str, lo: float, hi: float) -> int:
    """Decimals that keep a difference visible: an interval that excludes 1 must not print as "1.0-1.0x"."""
    digits = 2
    while word in (FASTER, SLOWER) and digits < 4 and round(lo, digits) <= 1 <= round(hi, digits):
        digits += 1
    return digits


@dataclass(frozen=True)
class Interval:
    """A ratio of medians (base / test: > 1 means test is faster) and its bootstrap interval over ``n`` repeats."""

    ratio: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.ratio:.2f}x ({self.level * 100:g}% CI {self.lo:.2f}-{self.hi:.2f}x, n={self.n})"

    def contains(self, value: float) -> bool:
        return bool(self.lo <= value <= self.hi)


def _clean(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=float).ravel()


def ratio_interval(base: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray, *, paired: bool = True,
                   n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """``median(base) / median(test)`` with a percentile bootstrap interval over repeats.

    Paired (the default) resamples repeat indices jointly: in an interleaved sweep repeat i of both variants
    ran back to back, so drift of the machine (clocks, other load) is shared and cancels in the pair; resampling
    the two independently would count that drift as noise twice. Unpaired resamples each side on its own (for
    samples not taken together); its ``n`` is the smaller sample. NaNs are dropped (a pair with either side NaN
    when paired). With one repeat the interval is the point itself, and ``n=1`` says so.
    """
    b, t = _clean(base), _clean(test)
    if paired:
        if len(b) != len(t):
            raise ValueError(f"paired samples need equal lengths, got {len(b)} and {len(t)}")
        keep = ~(np.isnan(b) | np.isnan(t))
        b, t = b[keep], t[keep]
    else:
        b, t = b[~np.isnan(b)], t[~np.isnan(t)]
    if len(b) == 0 or len(t) == 0:
        raise ValueError("no repeats to compare (empty after dropping NaN)")
    if (b <= 0).any() or (t <= 0).any():
        raise ValueError("times must be positive for a ratio")
    ratio = float(np.median(b) / np.median(t))
    n = min(len(b), len(t))
    if max(len(b), len(t)) == 1:
        return Interval(ratio, ratio, ratio, 1, level)
    rng = np.random.default_rng(seed)
    if paired:
        idx = rng.integers(0, n, size=(n_boot, n))
        boot = np.median(b[idx], axis=1) / np.median(t[idx], axis=1)
    else:
        boot = (np.median(b[rng.integers(0, len(b), size=(n_boot, len(b)))], axis=1)
                / np.median(t[rng.integers(0, len(t), size=(n_boot, len(t)))], axis=1))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    # the percentile interval of a median can, with few repeats, miss the point estimate; widen to include it
    return Interval(ratio, float(min(lo, ratio)), float(max(hi, ratio)), n, level)


@dataclass(frozen=True)
class Verdict:
    """The words for one comparison, with the interval they were read from and the A/A floor they were held to."""

    word: Word
    interval: Interval
    floor: Interval | None = None

    @property
    def text(self) -> str:
        """"faster (1.8x, 95% CI 1.7-1.9x)"; with fewer than 3 repeats it says so instead of giving an interval."""
        i = self.interval
        if i.n < MIN_REPEATS:
            return f"{self.word} ({_x(i.ratio)}x, n={i.n}: too few repeats to tell)"
        d = _digits(self.word, i.lo, i.hi)
        return f"{self.word} ({_x(i.ratio, d)}x, {i.level * 100:g}% CI {_x(i.lo, d)}-{_x(i.hi, d)}x)"

    def __str__(self) -> str:
        return self.text


def verdict(interval: Interval, floor: Interval | None = None) -> Verdict:
    """"faster" / "slower" / "no measurable difference" from a ratio interval and the sweep's A/A floor.

    No difference is claimed when the interval includes 1, when it lies inside the A/A floor (an effect no
    larger than what the same code shows against itself in this sweep: ``floor.lo <= lo and hi <= floor.hi``),
    or with fewer than :data:`MIN_REPEATS` repeats (1 or 2 values give an interval that is only resampling
    noise, however narrow it looks).
    """
    inside_floor = floor is not None and floor.lo <= interval.lo and interval.hi <= floor.hi
    if interval.n < MIN_REPEATS or interval.contains(1.0) or inside_floor:
        word: Word = NO_DIFFERENCE
    else:
        word = FASTER if interval.lo > 1 else SLOWER
    return Verdict(word, interval, floor)


def _per_repeat(rows: pd.DataFrame, stages: Sequence[str], by: list[str], key: list[str]) -> pd.Series:
    ok = rows[rows["status"] == "ok"] if "status" in rows.columns else rows
    ok = ok[ok["stage"].isin(list(stages))]
    cols = [*by, *key, *(["image"] if "image" in ok.columns else [])]
    return ok.groupby(cols, sort=False)["ms"].sum()


def ratio_table(rows: pd.DataFrame, baseline: Any, *, stages: Sequence[str] = ("total",),
                by: Sequence[str] = ("variant",), aa: Any = None, key: Sequence[str] = ("repeat",),
                paired: bool = True, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                floor: Interval | None = None) -> pd.DataFrame:
    """One row per variant: median ms per image of ``stages``, n, ratio against ``baseline``, interval, verdict.

    ``rows`` are the profiler's tidy rows (variant, stage, repeat, image, ms, status); only ``status == "ok"``
    counts. Per repeat, the ms of ``stages`` are summed over the images both the variant and the baseline have
    in that repeat (an image that failed on one side leaves both, so a failure never reads as a speed-up), then
    paired with the baseline's repeat by ``key``. "median ms" is per image (the book's unit), over repeats.
    ``aa`` names the A/A variant (a second run of the baseline in the same sweep): its interval against the
    baseline is the floor every other verdict is held to; its own verdict has no floor. ``floor``: the sweep's
    A/A interval when the baseline is not the A/A's (two rows of a sweep compared with each other, neither of them
    ``stock``: ``aa_floor``); ``aa`` wins where both are given. The baseline's row has
    ratio 1 and the text "baseline". Rows of one sweep only: a caller with several cases (a ``case`` or
    ``scale`` column) filters to one case first, or the repeats of different cases would be summed together.
    """
    by, key = list(by), list(key)
    per = _per_repeat(rows, stages, by, key)
    groups = list(dict.fromkeys(zip(*(per.index.get_level_values(c) for c in by))))  # in the order measured
    as_label = (lambda x: tuple(x)) if len(by) > 1 else (lambda x: (x,))
    base_label = as_label(baseline)
    if base_label not in groups:
        raise ValueError(f"baseline {baseline!r} has no ok rows")

    def side(label: tuple) -> pd.Series:
        return per.xs(label, level=by)

    base = side(base_label)

    def compare(label: tuple) -> tuple[Interval, float]:
        both = pd.concat({"b": base, "t": side(label)}, axis=1, join="inner")
        if len(both) == 0:
            raise ValueError(f"{label!r} shares no repeats with the baseline {baseline!r}")
        per_rep = both.groupby(level=key, sort=False)
        sums, n_img = per_rep.sum(), per_rep.size()
        iv = ratio_interval(sums["b"], sums["t"], paired=paired, n_boot=n_boot, level=level, seed=seed)
        return iv, float((sums["t"] / n_img).median())

    aa_label = None if aa is None else as_label(aa)
    if aa_label is not None and aa_label not in groups:
        raise ValueError(f"A/A variant {aa!r} has no ok rows")
    floor = floor if aa_label is None else compare(aa_label)[0]
    out = []
    for g in groups:
        if g == base_label:
            b = base.groupby(level=key, sort=False)
            out.append((*g, float((b.sum() / b.size()).median()), b.ngroups, 1.0, 1.0, 1.0, None, "baseline"))
            continue
        iv, med = compare(g)
        v = verdict(iv, None if g == aa_label else floor)
        out.append((*g, med, iv.n, iv.ratio, iv.lo, iv.hi, v.word, v.text))
    cols = [*by, "median ms", "n", "ratio", "lo", "hi", "verdict", "text"]
    return pd.DataFrame(out, columns=cols).set_index(by if len(by) > 1 else by[0])


def error_bars(table: pd.DataFrame) -> np.ndarray:
    """``yerr``/``xerr`` for matplotlib from a :func:`ratio_table`: distances below and above each ratio."""
    return np.vstack([table["ratio"] - table["lo"], table["hi"] - table["ratio"]]).astype(float)


# -- what "preserves results" means ----------------------------------------------------------------------
EXACT, PRESERVES, CHANGES = "exact", "preserves results", "changes results"


@dataclass(frozen=True)
class AgreementRule:
    """Thresholds for "preserves results", fixed before any agreement was measured (issue 12, item 4)."""

    matched: float = 0.99  # fraction of detections with a partner, each way
    box_iou_mean: float = 0.99
    mask_iou_mean: float = 0.95

    def __str__(self) -> str:
        return (f"at least {self.matched:.0%} of detections matched both ways, matched box IoU mean >= "
                f"{self.box_iou_mean:g} and mask IoU mean >= {self.mask_iou_mean:g}")


AGREEMENT_RULE = AgreementRule()


def _get(a: Mapping[str, Any], k: str) -> float:
    v = a.get(k, float("nan"))
    return float("nan") if v is None else float(v)


def preservation(agreement: Mapping[str, Any] | Any, rule: AgreementRule = AGREEMENT_RULE) -> str:
    """"exact", "preserves results" or "changes results" for one agreement row (columns of ``Agreement``).

    Exact means bit-identical: the caller says ``identical=True`` (``equivalence.identical``), or every
    detection matched both ways with box IoU min 1, score difference 0 and, where there are masks, every mask
    identical. Both sides empty is exact too (nothing to disagree on). Absent or NaN mask figures mean a model
    without masks, so the mask threshold does not apply.
    """
    a = agreement.as_dict() if hasattr(agreement, "as_dict") else agreement
    if bool(a.get("identical", False)):
        return EXACT
    if _get(a, "n_ref") == 0 and _get(a, "n_test") == 0:
        return EXACT
    mr, mt = _get(a, "matched_ref"), _get(a, "matched_test")
    mask_ident, mask_mean = _get(a, "mask_identical"), _get(a, "mask_iou_mean")
    if (mr == 1.0 and mt == 1.0 and _get(a, "box_iou_min") == 1.0 and _get(a, "score_diff_max") == 0.0
            and (np.isnan(mask_ident) or mask_ident == 1.0)):
        return EXACT
    if (mr >= rule.matched and mt >= rule.matched and _get(a, "box_iou_mean") >= rule.box_iou_mean
            and (np.isnan(mask_mean) or mask_mean >= rule.mask_iou_mean)):
        return PRESERVES
    return CHANGES


def preservation_column(df: pd.DataFrame, rule: AgreementRule = AGREEMENT_RULE) -> pd.Series:
    """:func:`preservation` for every row of a DataFrame of agreement rows, vectorised (same index)."""
    def col(k: str) -> pd.Series:
        return pd.to_numeric(df[k], errors="coerce") if k in df.columns else pd.Series(np.nan, index=df.index)

    mr, mt, mask_mean, mask_ident = col("matched_ref"), col("matched_test"), col("mask_iou_mean"), col("mask_identical")
    ident = df["identical"].fillna(False).astype(bool) if "identical" in df.columns else False
    empty = (col("n_ref") == 0) & (col("n_test") == 0)
    exact = ident | empty | ((mr == 1.0) & (mt == 1.0) & (col("box_iou_min") == 1.0) & (col("score_diff_max") == 0.0)
                             & (mask_ident.isna() | (mask_ident == 1.0)))
    keeps = ((mr >= rule.matched) & (mt >= rule.matched) & (col("box_iou_mean") >= rule.box_iou_mean)
             & (mask_mean.isna() | (mask_mean >= rule.mask_iou_mean)))
    return pd.Series(np.select([exact, keeps], [EXACT, PRESERVES], CHANGES), index=df.index, name="results")


# -- words for chapters ----------------------------------------------------------------------------------
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


def aa_of(baseline: str) -> str:
    """The A/A row's name for ``baseline``: the same code profiled a second time in the same sweep."""
    return f"{baseline} (A/A)"


def aa_in(rows: pd.DataFrame, baseline: str) -> str | None:
    """``baseline``'s A/A row name when ``rows`` hold that row (for ``ratio_table(aa=...)``), else None."""
    aa = aa_of(baseline)
    return aa if (rows["variant"] == aa).any() else None


def floor_finding(table: pd.DataFrame, baseline: str, what: str = "") -> str:
    """The A/A row of a ``ratio_table`` in words: the sweep's noise floor, which every verdict beside it is held
    to ("" when the table has no A/A row)."""
    aa = aa_of(baseline)
    if aa not in table.index:
        return ""
    r = table.loc[aa]
    of = f", {what}" if what else ""
    return f"`{aa}` against `{baseline}`{of}, the noise floor of this sweep: {r['text']}."


def aa_floor(rows: pd.DataFrame, baseline: Any, aa: Any, **kw: Any) -> Interval | None:
    """The A/A row's interval against its baseline (the sweep's noise floor, for ``ratio_table(floor=...)``), or
    None when either has no ok rows."""
    ok = rows[rows["status"] == "ok"] if "status" in rows.columns else rows
    if not {baseline, aa} <= set(ok["variant"]):
        return None
    return row_interval(ratio_table(ok[ok["variant"].isin([baseline, aa])], baseline, **kw).loc[aa])


def row_interval(row: pd.Series) -> Interval:
    """The interval one ``ratio_table`` row holds."""
    return Interval(float(row["ratio"]), float(row["lo"]), float(row["hi"]), int(row["n"]))


def table_findings(table: pd.DataFrame, baseline: str, what: str = "") -> str:
    """A ``ratio_table``'s rows, all but the baseline's, as Markdown findings (``takeaway`` each)."""
    return findings_markdown(
        takeaway(str(label), Verdict(r["verdict"], row_interval(r)), baseline, what)
        for label, r in table.iterrows() if label != baseline)


def ratio_tables(rows: pd.DataFrame, baseline: Any, *, case: str = "case", **kw: Any) -> dict[str, pd.DataFrame]:
    """One :func:`ratio_table` per value of the ``case`` column, in the order measured (each case its own sweep)."""
    return {str(c): ratio_table(rows[rows[case] == c], baseline, **kw)
            for c in dict.fromkeys(rows[case]) if (rows.loc[rows[case] == c, "variant"] == baseline).any()}


def verdict_summary(table: pd.DataFrame, baseline: str, what: str = "", skip: Sequence[str] = ()) -> str:
    """One sentence grouping a ``ratio_table``'s rows by verdict against ``baseline``, each with its ratio and
    interval: "Against `stock` (pre-processing): faster: `device` (1.4x, 95% CI ...); no measurable difference:
    `auto` (...)." A group with no rows is left out; rows in ``skip`` (an A/A row) too."""
    rows = table.drop(index=[baseline, *skip], errors="ignore")
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
