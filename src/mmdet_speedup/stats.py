"""Speed-ups with their uncertainty, the one verdict rule, and what "preserves results" means.

The same code against itself moves by several percent on a busy machine, so every comparison is a ratio with
an interval over repeats, held by :func:`verdict` to the sweep's A/A floor (the baseline measured twice in the
same sweep). These are values; the sentences a chapter builds from them live in ``mmdet_speedup.study``.
Agreement between two variants' detections is turned into one of three words by :data:`AGREEMENT_RULE`,
fixed before any figure was seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no measurable difference"
Word = Literal["faster", "slower", "no measurable difference"]
#: What a table's verdict column holds for the rows that are not compared: the baseline itself, and the A/A
#: row, whose interval is the sweep's noise floor (it gets no verdict word: it is the floor the others meet).
BASELINE, FLOOR = "baseline", "A/A floor"

#: Below this many repeats no verdict is claimed: 1 or 2 values give an interval that is only resampling noise.
MIN_REPEATS = 3
#: Below this many repeats a bootstrap "95% CI" is resampling of a handful of numbers: the interval is then the
#: range of the per-repeat ratios, and a verdict needs that whole range to clear the floor.
CI_REPEATS = 5


def _x(v: float, digits: int = 2) -> str:
    """A ratio for prose: two decimals, one trailing zero dropped ("1.80" -> "1.8", "1.01" stays)."""
    s = f"{v:.{digits}f}"
    return s[:-1] if s.endswith("0") else s


def _digits(lo: float, hi: float, marks: tuple[float, ...] = (1.0,)) -> int:
    """Decimals that keep a clearance visible: an interval that excludes 1 must not print as "1.0-1.0x"."""
    digits = 2
    while digits < 4 and any(round(lo, digits) <= m <= round(hi, digits) and not lo <= m <= hi for m in marks):
        digits += 1
    return digits


@dataclass(frozen=True)
class Interval:
    """A ratio of medians (base / test: > 1 means test is faster) and its interval over ``n`` repeats.

    ``kind`` is "ci" (a percentile bootstrap interval at ``level``) or "range" (fewer than :data:`CI_REPEATS`
    repeats: the range of the per-repeat ratios). ``paired`` is False for samples not taken in one interleaved
    sweep (each side resampled on its own).
    """

    ratio: float
    lo: float
    hi: float
    n: int
    level: float = 0.95
    kind: str = "ci"
    paired: bool = True

    def __str__(self) -> str:
        return f"{self.ratio:.2f}x ({self.spread()}, n={self.n})"

    def contains(self, value: float) -> bool:
        return bool(self.lo <= value <= self.hi)

    def spread(self, digits: int | None = None) -> str:
        """"95% CI 1.7-1.9x" or "range 1.7-1.9x over 3 repeats" (", unpaired" where it is)."""
        d = _digits(self.lo, self.hi) if digits is None else digits
        body = (f"{self.level * 100:g}% CI {_x(self.lo, d)}-{_x(self.hi, d)}x" if self.kind == "ci"
                else f"range {_x(self.lo, d)}-{_x(self.hi, d)}x over {self.n} repeat{'s' if self.n != 1 else ''}")
        return body + ("" if self.paired else ", unpaired")


def _clean(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=float).ravel()


def ratio_interval(base: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray, *, paired: bool = True,
                   n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """``median(base) / median(test)`` with its interval over repeats.

    Paired (the default) takes repeat i of both sides together: in an interleaved sweep they ran back to back, so
    drift of the machine (clocks, other load) is shared and cancels in the pair. Unpaired treats each side on its
    own (samples not taken together); its ``n`` is the smaller sample. With at least :data:`CI_REPEATS` repeats
    the interval is a percentile bootstrap; with fewer it is the range of the per-repeat ratios (paired: base_i /
    test_i; unpaired: every base over every test), since a bootstrap of 3 values only reshuffles them. NaNs are
    dropped (a pair with either side NaN when paired). With one repeat the interval is the point itself.
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
        return Interval(ratio, ratio, ratio, 1, level, "range", paired)
    if n < CI_REPEATS:
        each = b / t if paired else np.divide.outer(b, t).ravel()
        return Interval(ratio, float(min(each.min(), ratio)), float(max(each.max(), ratio)), n, level, "range",
                        paired)
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
    return Interval(ratio, float(min(lo, ratio)), float(max(hi, ratio)), n, level, "ci", paired)


@dataclass(frozen=True)
class Verdict:
    """The word for one comparison, with the interval it was read from and the A/A floor it was held to."""

    word: Word
    interval: Interval
    floor: Interval | None = None

    @property
    def text(self) -> str:
        """"faster (1.8x, 95% CI 1.7-1.9x)"; with fewer than 3 repeats it says so instead of giving an interval."""
        i = self.interval
        if i.n < MIN_REPEATS:
            return f"{self.word} ({_x(i.ratio)}x, n={i.n}: too few repeats to tell)"
        marks = (1.0,) if self.floor is None else (1.0, self.floor.lo, self.floor.hi)
        d = _digits(i.lo, i.hi, marks) if self.word in (FASTER, SLOWER) else 2
        return f"{self.word} ({_x(i.ratio, d)}x, {i.spread(d)})"

    def __str__(self) -> str:
        return self.text


def floor_text(interval: Interval) -> str:
    """The A/A row's cell: its interval, named as the floor, with no verdict word."""
    return f"{FLOOR} ({_x(interval.ratio)}x, {interval.spread()})"


def verdict(interval: Interval, floor: Interval | None = None) -> Verdict:
    """The study's one verdict rule, from a row's interval ``[lo, hi]`` and the sweep's A/A floor ``f``.

    "faster" iff ``lo > max(1, f.hi)``, "slower" iff ``hi < min(1, f.lo)``, else "no measurable difference";
    without a floor, ``f`` is the point 1. An interval that straddles the floor, however wide, is no difference;
    so is anything from fewer than :data:`MIN_REPEATS` repeats, or a NaN interval (a failed row).
    """
    f_lo, f_hi = (1.0, 1.0) if floor is None else (floor.lo, floor.hi)
    word: Word = NO_DIFFERENCE
    if interval.n >= MIN_REPEATS and np.isfinite([interval.lo, interval.hi]).all():
        if interval.lo > max(1.0, f_hi):
            word = FASTER
        elif interval.hi < min(1.0, f_lo):
            word = SLOWER
    return Verdict(word, interval, floor)


SWEEP = "sweep_id"


def _per_repeat(rows: pd.DataFrame, stages: Sequence[str], by: list[str], key: list[str]) -> pd.Series:
    ok = rows[rows["status"] == "ok"] if "status" in rows.columns else rows
    ok = ok[ok["stage"].isin(list(stages))]
    if SWEEP in ok.columns:  # rows from before sweeps had ids are one sweep each
        ok = ok.assign(**{SWEEP: ok[SWEEP].fillna("").astype(str)})
    cols = [*by, *([SWEEP] if SWEEP in ok.columns else []), *key, *(["image"] if "image" in ok.columns else [])]
    return ok.groupby(cols, sort=False)["ms"].sum()


def ratio_table(rows: pd.DataFrame, baseline: Any, *, stages: Sequence[str] = ("total",),
                by: Sequence[str] = ("variant",), aa: Any = None, key: Sequence[str] = ("repeat",),
                paired: bool = True, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                floor: Interval | None = None) -> pd.DataFrame:
    """One row per variant: median ms per image of ``stages``, n, ratio against ``baseline``, interval, verdict.

    ``rows`` are the profiler's tidy rows (variant, stage, repeat, image, ms, status); only ``status == "ok"``
    counts. Per repeat, the ms of ``stages`` are summed over the images both the variant and the baseline have
    (an image that failed on one side leaves both, so a failure never reads as a speed-up), then paired with the
    baseline's repeat by ``key`` when both ran in the same interleaved sweep (``sweep_id``); a variant from
    another sweep is compared unpaired, and its text says so. "median ms" is per image, over repeats.
    ``aa`` names the A/A variant (the baseline measured twice in the same sweep): its interval is the floor every
    other verdict is held to (:func:`verdict`), and its own row gets no verdict word (``FLOOR``). ``floor``: the
    sweep's A/A interval when the baseline is not the A/A's (``aa_floor``); ``aa`` wins where both are given. The
    baseline's row has ratio 1 and the verdict ``BASELINE``. Rows of one case only: a caller with several cases
    filters to one case first, or the repeats of different cases would be summed together.
    """
    by, key = list(by), list(key)
    per = _per_repeat(rows, stages, by, key)
    levels = [c for c in per.index.names if c not in by]
    groups = list(dict.fromkeys(zip(*(per.index.get_level_values(c) for c in by))))  # in the order measured
    as_label = (lambda x: tuple(x)) if len(by) > 1 else (lambda x: (x,))
    base_label = as_label(baseline)
    if base_label not in groups:
        raise ValueError(f"baseline {baseline!r} has no ok rows")

    def side(label: tuple) -> pd.Series:
        return per.xs(label, level=by)

    def sweeps(s: pd.Series) -> set:
        return set(s.index.get_level_values(SWEEP)) if SWEEP in levels else {""}

    base = side(base_label)
    repeat_levels = [c for c in levels if c != "image"]

    def compare(label: tuple) -> tuple[Interval, float]:
        test = side(label)
        together = paired and sweeps(test) == sweeps(base) and len(sweeps(base)) == 1
        if together:
            both = pd.concat({"b": base, "t": test}, axis=1, join="inner")
            if len(both) == 0:
                raise ValueError(f"{label!r} shares no repeats with the baseline {baseline!r}")
            per_rep = both.groupby(level=repeat_levels, sort=False)
            sums, n_img = per_rep.sum(), per_rep.size()
            iv = ratio_interval(sums["b"], sums["t"], paired=True, n_boot=n_boot, level=level, seed=seed)
            return iv, float((sums["t"] / n_img).median())
        common = (set(base.index.get_level_values("image")) & set(test.index.get_level_values("image"))
                  if "image" in levels else None)

        def sums(s: pd.Series) -> pd.Series:
            if common is not None:
                s = s[s.index.get_level_values("image").isin(common)]
            g = s.groupby(level=repeat_levels, sort=False)
            return g.sum() / g.size()
        b, t = sums(base), sums(test)
        if len(b) == 0 or len(t) == 0:
            raise ValueError(f"{label!r} shares no images with the baseline {baseline!r}")
        iv = ratio_interval(b.to_numpy(), t.to_numpy(), paired=False, n_boot=n_boot, level=level, seed=seed)
        return iv, float(t.median())

    aa_label = None if aa is None else as_label(aa)
    if aa_label is not None and aa_label not in groups:
        raise ValueError(f"A/A variant {aa!r} has no ok rows")
    floor = floor if aa_label is None else compare(aa_label)[0]
    out = []
    for g in groups:
        if g == base_label:
            b = base.groupby(level=repeat_levels, sort=False)
            out.append((*g, float((b.sum() / b.size()).median()), b.ngroups, 1.0, 1.0, 1.0, BASELINE, BASELINE,
                        True))
            continue
        iv, med = compare(g)
        if g == aa_label:
            out.append((*g, med, iv.n, iv.ratio, iv.lo, iv.hi, FLOOR, floor_text(iv), iv.paired))
            continue
        v = verdict(iv, floor)
        out.append((*g, med, iv.n, iv.ratio, iv.lo, iv.hi, v.word, v.text, iv.paired))
    cols = [*by, "median ms", "n", "ratio", "lo", "hi", "verdict", "text", "paired"]
    return pd.DataFrame(out, columns=cols).set_index(by if len(by) > 1 else by[0])


@dataclass(frozen=True)
class Best:
    """The row a ranking names first (``label``), or None where its lead over ``tied`` does not clear the floor."""

    label: str | None
    tied: tuple[str, ...]
    lowest: str

    @property
    def clear(self) -> bool:
        return self.label is not None


def best_of(rows: pd.DataFrame, labels: Sequence[str], *, stages: Sequence[str] = ("total",),
            floor: Interval | None = None, **kw: Any) -> Best:
    """The fastest of ``labels`` by the verdict rule: the one with the lowest median, if it is "faster" than every
    other in their pairwise interval held to ``floor``; else no label, and ``tied`` lists the rows it does not
    clear (so a page says "tied" instead of naming a best row)."""
    ok = rows[rows["status"] == "ok"] if "status" in rows.columns else rows
    labels = [x for x in labels if (ok["variant"] == x).any()]
    if not labels:
        raise ValueError("best_of: none of the rows has ok rows")
    med = {x: ratio_table(ok[ok["variant"] == x], x, stages=stages, **kw).loc[x, "median ms"] for x in labels}
    lowest = min(labels, key=med.get)
    tied = []
    for other in labels:
        if other == lowest:
            continue
        t = ratio_table(ok[ok["variant"].isin([other, lowest])], other, stages=stages, floor=floor, **kw)
        if t.loc[lowest, "verdict"] != FASTER:
            tied.append(other)
    return Best(None if tied else lowest, tuple(tied), lowest)


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


def aa_of(baseline: str) -> str:
    """The A/A row's name for ``baseline``: the same code profiled a second time in the same sweep."""
    return f"{baseline} (A/A)"


def aa_in(rows: pd.DataFrame, baseline: str) -> str | None:
    """``baseline``'s A/A row name when ``rows`` hold that row (for ``ratio_table(aa=...)``), else None."""
    aa = aa_of(baseline)
    return aa if (rows["variant"] == aa).any() else None


def aa_floor(rows: pd.DataFrame, baseline: Any, aa: Any, **kw: Any) -> Interval | None:
    """The A/A row's interval against its baseline (the sweep's noise floor, for ``ratio_table(floor=...)``), or
    None when either has no ok rows."""
    ok = rows[rows["status"] == "ok"] if "status" in rows.columns else rows
    if not {baseline, aa} <= set(ok["variant"]):
        return None
    return row_interval(ratio_table(ok[ok["variant"].isin([baseline, aa])], baseline, **kw).loc[aa])


def row_interval(row: pd.Series) -> Interval:
    """The interval one ``ratio_table`` row holds."""
    n = int(row["n"])
    return Interval(float(row["ratio"]), float(row["lo"]), float(row["hi"]), n,
                    kind="range" if n < CI_REPEATS else "ci", paired=bool(row.get("paired", True)))


def ratio_tables(rows: pd.DataFrame, baseline: Any, *, case: str = "case", **kw: Any) -> dict[str, pd.DataFrame]:
    """One :func:`ratio_table` per value of the ``case`` column, in the order measured (each case its own sweep)."""
    return {str(c): ratio_table(rows[rows[case] == c], baseline, **kw)
            for c in dict.fromkeys(rows[case]) if (rows.loc[rows[case] == c, "variant"] == baseline).any()}


# -- the third outcome: accuracy ---------------------------------------------------------------------------
KEEPS, CHANGES_ACCURACY, CANNOT_TELL = "keeps accuracy", "changes accuracy", "cannot tell"


def accuracy_verdict(box: tuple[float, float], mask: tuple[float, float] | None, n_images: int, *, margin: float,
                     min_images: int) -> str:
    """The accuracy rule on delta-AP intervals ``(lo, hi)`` (box, and mask where the model has masks): "keeps
    accuracy" iff every interval lies within ``[-margin, margin]``, "changes accuracy" iff one lies wholly outside
    it, else "cannot tell" (also with fewer than ``min_images`` scored images). The margin is the study's
    (``study.words.ACCURACY_MARGIN``), fixed before any row was scored."""
    ivs = [box] + ([mask] if mask is not None else [])
    if n_images < min_images or any(not np.isfinite(iv).all() for iv in ivs):
        return CANNOT_TELL
    if all(-margin <= lo and hi <= margin for lo, hi in ivs):
        return KEEPS
    if any(lo > margin or hi < -margin for lo, hi in ivs):
        return CHANGES_ACCURACY
    return CANNOT_TELL
