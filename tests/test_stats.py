"""The measurement protocol's statistics: ratio intervals, verdicts, the A/A floor, "preserves results"."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mmdet_speedup.equivalence import Agreement
from mmdet_speedup.stats import (AGREEMENT_RULE, CHANGES, EXACT, FASTER, NO_DIFFERENCE, PRESERVES, SLOWER, Interval,
                                 Verdict, error_bars, preservation, preservation_column, ratio_interval, ratio_table,
                                 verdict)
from mmdet_speedup.study.words import findings_markdown, glue_markdown, takeaway


def times(median: float, noise: float, n: int, seed: int) -> np.ndarray:
    """Lognormal repeat times with the given median and log-sd (so the true median is known exactly)."""
    return median * np.exp(np.random.default_rng(seed).normal(0, noise, n))


# -- intervals -------------------------------------------------------------------------------------------
def test_interval_str_and_n1():
    assert str(Interval(1.8, 1.7, 1.9, 7)) == "1.80x (95% CI 1.7-1.9x, n=7)"
    iv = ratio_interval([10.0], [5.0])
    assert (iv.ratio, iv.lo, iv.hi, iv.n) == (2.0, 2.0, 2.0, 1)


def test_nan_dropped_and_errors():
    iv = ratio_interval([10, np.nan, 10, 10], [5, 5, np.nan, 5])  # paired: a pair with a NaN side leaves
    assert iv.n == 2 and iv.ratio == 2.0
    assert ratio_interval([10, np.nan, 10], [5, 5], paired=False).n == 2
    for b, t in (([], []), ([np.nan], [np.nan]), ([1.0], [])):
        with pytest.raises(ValueError):
            ratio_interval(b, t, paired=False)
    with pytest.raises(ValueError):
        ratio_interval([1.0, 2.0], [1.0])  # paired needs pairs


def test_interval_is_seeded():
    b, t = times(100, 0.1, 9, 1), times(60, 0.1, 9, 2)
    assert ratio_interval(b, t, seed=3) == ratio_interval(b, t, seed=3)


@pytest.mark.parametrize("paired", [True, False])
def test_bootstrap_coverage_on_known_distribution(paired):
    """Lognormal times with medians 100 and 50 ms: the true ratio of medians is exactly 2."""
    hits = 0
    for s in range(300):
        rng = np.random.default_rng(1000 + s)
        base, test = 100 * np.exp(rng.normal(0, 0.1, 15)), 50 * np.exp(rng.normal(0, 0.1, 15))
        iv = ratio_interval(base, test, paired=paired, n_boot=400, seed=s)
        hits += iv.lo <= 2.0 <= iv.hi
    assert 0.88 <= hits / 300 <= 0.99


def test_paired_is_narrower_under_shared_drift():
    rng = np.random.default_rng(7)
    drift = rng.normal(0, 0.3, 9)  # the machine's state moves both variants of repeat i together
    base = 100 * np.exp(drift + rng.normal(0, 0.02, 9))
    test = 90 * np.exp(drift + rng.normal(0, 0.02, 9))
    p, u = ratio_interval(base, test, paired=True), ratio_interval(base, test, paired=False)
    assert p.ratio == u.ratio
    assert (p.hi - p.lo) < 0.5 * (u.hi - u.lo)
    assert verdict(p).word == FASTER and verdict(u).word == NO_DIFFERENCE


# -- verdicts --------------------------------------------------------------------------------------------
def test_clear_win():
    v = verdict(ratio_interval(times(100, 0.03, 9, 1), times(50, 0.03, 9, 2)))
    assert v.word == FASTER and v.interval.lo > 1 and not v.interval.contains(1.0)
    assert v.text.startswith("faster (2") and "95% CI" in v.text


def test_clear_loss():
    v = verdict(ratio_interval(times(100, 0.03, 9, 1), times(125, 0.03, 9, 2)))
    assert v.word == SLOWER and v.interval.hi < 1
    assert v.text.startswith("slower (0.8")


def test_aa_pair():
    v = verdict(ratio_interval(times(100, 0.1, 9, 1), times(100, 0.1, 9, 2)))
    assert v.word == NO_DIFFERENCE and v.interval.contains(1.0)


def test_effect_inside_noise():
    v = verdict(ratio_interval(times(100, 0.2, 9, 3), times(98, 0.2, 9, 4)))
    assert v.word == NO_DIFFERENCE


def test_effect_inside_aa_floor():
    iv, floor = Interval(1.03, 1.01, 1.05, 9), Interval(1.0, 0.94, 1.06, 9)
    assert verdict(iv).word == FASTER  # without the floor it would claim a win
    v = verdict(iv, floor)
    assert v.word == NO_DIFFERENCE and v.floor == floor
    assert verdict(Interval(0.97, 0.95, 0.99, 9), floor).word == NO_DIFFERENCE
    # sticking out of the floor is not enough: the whole interval must clear it
    assert verdict(Interval(1.05, 1.02, 1.08, 9), floor).word == NO_DIFFERENCE
    assert verdict(Interval(0.95, 0.93, 0.97, 9), floor).word == NO_DIFFERENCE
    assert verdict(Interval(1.09, 1.07, 1.12, 9), floor).word == FASTER
    assert verdict(Interval(0.91, 0.89, 0.93, 9), floor).word == SLOWER


def test_few_repeats_never_claim():
    for n in (1, 2):
        v = verdict(ratio_interval(times(100, 0.01, n, 1), times(50, 0.01, n, 2)))
        assert v.word == NO_DIFFERENCE and "too few repeats" in v.text
    assert verdict(Interval(2.0, 1.9, 2.1, 3)).word == FASTER


def test_verdict_text():
    assert Verdict(FASTER, Interval(1.8, 1.7, 1.9, 7)).text == "faster (1.8x, 95% CI 1.7-1.9x)"
    assert verdict(Interval(1.01, 0.97, 1.05, 7)).text == "no measurable difference (1.01x, 95% CI 0.97-1.05x)"


def test_a_small_difference_never_prints_as_an_interval_around_one():
    assert verdict(Interval(1.002, 1.0012, 1.004, 7)).text == "faster (1.002x, 95% CI 1.001-1.004x)"
    assert verdict(Interval(0.981, 0.95, 0.996, 7)).text == "slower (0.981x, 95% CI 0.95-0.996x)"
    assert verdict(Interval(1.0, 0.998, 1.003, 7)).text == "no measurable difference (1.0x, 95% CI 1.0-1.0x)"


# -- the table -------------------------------------------------------------------------------------------
def rows_for(variants: dict[str, list[float]], images=("a.jpg", "b.jpg"), stage="total") -> list[dict]:
    """Per variant, a list of per-repeat ms per image (each image of a repeat gets the same ms)."""
    out = []
    for v, reps in variants.items():
        for r, ms in enumerate(reps):
            for im in images:
                out.append(dict(variant=v, stage=stage, repeat=r, image=im, ms=ms, status="ok"))
    return out


def test_ratio_table_sums_pairs_and_floors():
    base = [100, 200, 100, 300, 100, 200, 100, 250, 150]  # large drift across repeats, shared by all variants
    rows = rows_for({"stock": base, "aa": [b * f for b, f in zip(base, [1.0, 1.03, 0.97, 1.02, 0.99, 1.0, 1.04,
                                                                        0.96, 1.01])],
                     "fast": [b / 2 for b in base], "tiny": [b / 1.01 for b in base]})
    # a stage not asked for, and an error row, must not count
    rows += [dict(variant="fast", stage="backbone", repeat=0, image="a.jpg", ms=1e6, status="ok"),
             dict(variant="fast", stage="total", repeat=0, image="c.jpg", ms=1e6, status="error")]
    t = ratio_table(pd.DataFrame(rows), "stock", aa="aa", n_boot=500)
    assert list(t.index) == ["stock", "aa", "fast", "tiny"]
    assert t.loc["stock", "text"] == "baseline" and t.loc["stock", "ratio"] == 1.0
    assert t.loc["stock", "median ms"] == pytest.approx(150.0)  # per image: 300 / 2 images
    assert t.loc["fast", "median ms"] == pytest.approx(75.0)
    assert t.loc["fast", "ratio"] == pytest.approx(2.0) and t.loc["fast", "n"] == 9
    assert t.loc["fast", "verdict"] == FASTER
    assert t.loc["fast", ["lo", "hi"]].tolist() == pytest.approx([2.0, 2.0])  # paired: the drift cancels
    assert t.loc["aa", "verdict"] == "A/A floor" and t.loc["aa", "text"].startswith("A/A floor (")
    # a constant 1% win is "faster" against no floor, but it lies inside the A/A floor
    assert verdict(Interval(*t.loc["tiny", ["ratio", "lo", "hi", "n"]])).word == FASTER
    floor = t.loc["aa", ["lo", "hi"]]
    assert floor["lo"] <= t.loc["tiny", "lo"] and t.loc["tiny", "hi"] <= floor["hi"]
    assert t.loc["tiny", "verdict"] == NO_DIFFERENCE
    assert error_bars(t).shape == (2, 4) and (error_bars(t) >= 0).all()


def test_ratio_table_drops_an_image_that_failed_from_both_sides():
    rows = rows_for({"stock": [100.0] * 5, "fast": [50.0] * 5})
    rows = [r for r in rows if not (r["variant"] == "fast" and r["repeat"] == 2 and r["image"] == "b.jpg")]
    rows.append(dict(variant="fast", stage="total", repeat=2, image="b.jpg", ms=1e6, status="error"))
    rows.append(dict(variant="stock", stage="total", repeat=9, image="a.jpg", ms=100.0, status="ok"))  # no partner
    t = ratio_table(pd.DataFrame(rows), "stock")
    assert t.loc["fast", ["ratio", "lo", "hi"]].tolist() == pytest.approx([2.0, 2.0, 2.0])
    assert t.loc["fast", "n"] == 5 and t.loc["stock", "n"] == 6
    with pytest.raises(ValueError):
        ratio_table(pd.DataFrame(rows), "missing")


def test_ratio_table_stages_summed():
    rows = rows_for({"stock": [10.0] * 4, "fast": [5.0] * 4}, stage="backbone")
    rows += rows_for({"stock": [30.0] * 4, "fast": [30.0] * 4}, stage="neck")
    t = ratio_table(pd.DataFrame(rows), "stock", stages=("backbone", "neck"))
    assert t.loc["fast", "ratio"] == pytest.approx(40 / 35)
    assert t.loc["fast", "median ms"] == pytest.approx(35.0)


# -- what "preserves results" means ----------------------------------------------------------------------
def agreement(**kw) -> dict:
    base = dict(n_ref=100, n_test=100, matched_ref=1.0, matched_test=1.0, box_iou_mean=1.0, box_iou_min=1.0,
                score_diff_max=0.0, score_diff_mean=0.0, mask_iou_mean=1.0, mask_iou_min=1.0, mask_identical=1.0)
    return {**base, **kw}


CASES = [
    (agreement(), EXACT),
    (agreement(identical=True, matched_ref=0.5), EXACT),  # the caller's bit-identity check wins
    (agreement(n_ref=0, n_test=0, box_iou_mean=math.nan, box_iou_min=math.nan, mask_iou_mean=math.nan), EXACT),
    (agreement(mask_iou_mean=math.nan, mask_iou_min=math.nan, mask_identical=math.nan), EXACT),  # no masks
    (agreement(score_diff_max=1e-7), PRESERVES),
    (agreement(box_iou_min=0.9999), PRESERVES),
    (agreement(mask_identical=0.98), PRESERVES),
    (agreement(matched_ref=0.99, matched_test=0.99, box_iou_mean=0.99, mask_iou_mean=0.95), PRESERVES),  # at
    (agreement(matched_ref=0.989), CHANGES),
    (agreement(matched_test=0.989), CHANGES),
    (agreement(box_iou_mean=0.9899, box_iou_min=0.5), CHANGES),
    (agreement(mask_iou_mean=0.9499, mask_identical=0.5), CHANGES),
    (agreement(mask_iou_mean=math.nan, mask_identical=math.nan, box_iou_min=0.9), PRESERVES),  # boxes only
    (agreement(matched_ref=0.96, matched_test=0.96, box_iou_mean=0.97, mask_iou_mean=0.86, mask_iou_min=0.0),
     CHANGES),  # the bf16 rungs on the old weights
    (agreement(box_iou_mean=math.nan, box_iou_min=math.nan, score_diff_max=math.nan), CHANGES),
]


@pytest.mark.parametrize("row,expected", CASES)
def test_preservation_rule(row, expected):
    assert preservation(row) == expected


def test_preservation_column_matches_rule_and_agreement_objects():
    df = pd.DataFrame([r for r, _ in CASES])
    assert preservation_column(df).tolist() == [e for _, e in CASES]
    no_mask_cols = pd.DataFrame([agreement(box_iou_min=0.9)]).drop(columns=["mask_iou_mean", "mask_identical"])
    assert preservation_column(no_mask_cols).tolist() == [PRESERVES]
    assert preservation(Agreement(50, 50, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)) == EXACT
    assert preservation(Agreement(50, 50, 1.0, 0.98, 1.0, 1.0, 0.0, 0.0)) == CHANGES
    assert "99%" in str(AGREEMENT_RULE) and "0.95" in str(AGREEMENT_RULE)


# -- words for chapters ----------------------------------------------------------------------------------
def test_takeaway_and_findings():
    v = Verdict(FASTER, Interval(1.8, 1.7, 1.9, 7))
    assert takeaway("+precision", v, "stock") == "`+precision` against `stock`: faster (1.8x, 95% CI 1.7-1.9x)."
    assert takeaway("+nms", v, "stock", "backbone + neck").startswith("`+nms` against `stock`, backbone + neck: ")
    assert findings_markdown(["one", "two"]) == "- one\n- two\n"
    assert findings_markdown([]) == ""


def test_glue_markdown_glues_text_markdown(monkeypatch):
    import myst_nb.ext.glue as g

    shown = []
    monkeypatch.setattr(g, "ipy_display", lambda data, raw, metadata: shown.append((data, metadata)))
    glue_markdown("findings", "- **one**\n")
    (data, metadata), = shown
    assert data["application/papermill.record/text/markdown"] == "- **one**\n"  # what {glue:md} reads
    assert metadata["scrapbook"]["name"] == "findings"


def test_ratio_table_by_two_columns_without_images():
    rows = [dict(variant=v, threads=th, stage="total", repeat=r, ms=m * (1 + 0.01 * r), status="ok")
            for v, m in (("stock", 100), ("fast", 50)) for th in (1, 2) for r in range(5)]
    t = ratio_table(pd.DataFrame(rows), ("stock", 1), by=("variant", "threads"))
    assert t.index.names == ["variant", "threads"] and t.loc[("stock", 1), "text"] == "baseline"
    assert t.loc[("fast", 2), "ratio"] == pytest.approx(2.0) and t.loc[("fast", 2), "verdict"] == FASTER
    assert t.loc[("stock", 2), "verdict"] == NO_DIFFERENCE


def test_speedup_chart_draws_intervals_as_error_bars_and_the_floor():
    import matplotlib

    matplotlib.use("Agg")
    from mmdet_speedup import book

    t = pd.DataFrame({"ratio": [1.0, 1.02, 2.0, 0.5], "lo": [1.0, 0.95, 1.8, 0.45], "hi": [1.0, 1.1, 2.2, 0.55],
                      "verdict": [None, "no measurable difference", "faster", "slower"],
                      "text": ["baseline", "x", "y", "z"]}, index=["base", "A/A", "fast", "slow"])
    ax = book.speedup_chart(t, aa="A/A")
    bars = [p for p in ax.patches if p.get_height() < 1]  # the bars, not the shaded floor
    assert [round(b.get_width(), 2) for b in bars] == [1.02, 2.0, 0.5]  # the baseline has no bar
    from matplotlib.container import ErrorbarContainer

    err = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    segs = err.lines[2][0].get_segments()
    assert [tuple(np.round(s[:, 0], 2)) for s in segs] == [(0.95, 1.1), (1.8, 2.2), (0.45, 0.55)]
    assert "A/A noise floor" in [h.get_label() for h in ax.get_legend().legend_handles]
    table = pd.DataFrame({"backbone": [10.0, 9.0, 5.0, 20.0]}, index=t.index)
    fig = book.profile_figure({"one": (table, t), "two": (table, t)}, aa="A/A")
    assert len(fig.axes) == 4 and [a.get_title() for a in fig.axes[::2]] == ["one", "two"]


def test_the_floor_finding_names_the_a_a_row_or_says_nothing():
    from mmdet_speedup.stats import aa_of
    from mmdet_speedup.study.words import floor_finding

    rows = pd.DataFrame([dict(variant=v, stage="total", repeat=r, image="a", status="ok", ms=ms)
                         for v, per in (("stock", [10.0, 11.0, 10.5]), (aa_of("stock"), [10.2, 10.8, 10.6]))
                         for r, ms in enumerate(per)])
    t = ratio_table(rows, "stock", aa=aa_of("stock"))
    assert floor_finding(t, "stock").startswith("`stock (A/A)` against `stock`: ")
    assert floor_finding(t, "stock").endswith("the noise floor every verdict of this sweep is held to.")
    assert floor_finding(t.drop(aa_of("stock")), "stock") == ""
