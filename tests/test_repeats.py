"""The repeat policy: how many interleaved passes a sweep measures (exact counts, early stop, budget)."""
import numpy as np
import pandas as pd
import pytest

from mmdet_speedup import stages as S
from mmdet_speedup.pipeline import STOCK
from mmdet_speedup.profiler import Profiler, Repeats, Sample
from mmdet_speedup.study.words import repeats_sentence

from .conftest import TickClock


def rows(passes: int, ratio: float, noise: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for rep in range(passes):
        drift = 1 + 0.05 * rep
        for label, ms in (("a", 100.0), ("b", 100.0 / ratio)):
            out.append(dict(variant=label, stage=S.TOTAL, repeat=rep, image="x", status="ok",
                            ms=ms * drift * rng.lognormal(0, noise)))
    return out


def test_an_int_is_exactly_that_many():
    r = Repeats(7)
    assert (r.min, r.max) == (7, 7)
    assert [r.stop(k, 1.0, rows(k, 2.0, 0.0)) for k in range(1, 8)] == [""] * 6 + ["max"]


def test_stops_early_only_when_every_interval_is_narrow():
    r = Repeats(3, 9, width=0.10)
    assert r.stop(2, 1.0, rows(2, 2.0, 0.0)) == ""  # below min: go on whatever the interval
    assert r.stop(3, 1.0, rows(3, 2.0, 0.001)) == "narrow"
    assert r.stop(3, 1.0, rows(3, 2.0, 0.3)) == ""  # wide: measure more
    assert r.stop(9, 1.0, rows(9, 2.0, 0.3)) == "max"


def test_budget_stops_before_a_pass_that_would_overrun():
    r = Repeats(2, 9, width=0.0, budget_s=100)
    assert r.stop(2, 60.0, rows(2, 2.0, 0.3)) == ""  # a third pass ends near 90 s
    assert r.stop(3, 90.0, rows(3, 2.0, 0.3)) == "budget"  # a fourth would end near 120 s


def test_cannot_judge_a_stage_that_was_not_measured():
    r = Repeats(1, 5, stage=S.MASK_POSTPROCESS)
    assert r.stop(1, 1.0, rows(1, 2.0, 0.0)) == ""


def test_bad_bounds():
    with pytest.raises(ValueError, match="min <= max"):
        Repeats(5, 3)
    with pytest.raises(ValueError):
        Repeats(0)


def test_the_studys_rule_per_scale():
    assert Repeats.for_scale("1333x800", 7, budget_s=60) == Repeats(7, 7, 0.10, None)
    big = Repeats.for_scale("3840x2304", 7, budget_s=60)
    assert (big.min, big.max, big.budget_s) == (3, 7, 60)
    assert Repeats.for_scale("3840x2304", 2).min == 2  # never more than asked


def test_a_sweep_records_how_many_passes_and_why(mask_rcnn):
    """A real sweep with a fake measure: two identical variants are 'narrow' after the minimum."""
    calls = []

    def measure(label, pipe, choices, item, rep):
        calls.append((label, rep))
        return [{"stage": S.TOTAL, "ms": 10.0}]

    prof = Profiler(mask_rcnn, device="cpu", repeats=Repeats(2, 6, width=0.05), warmup=1, clock=TickClock())
    df = prof.sweep({"a": STOCK, "b": STOCK}, [Sample("x", b"", (4, 4))], measure, build=lambda c: None)
    assert df.attrs["repeats"]["n"] == 2 and df.attrs["repeats"]["stopped"] == "narrow"
    assert calls == [("a", -1), ("b", -1), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]  # interleaved, warm-up dropped
    assert sorted(df["repeat"].unique()) == [0, 1]
    assert prof.last_repeats == df.attrs["repeats"]
    assert repeats_sentence(df.attrs["repeats"]).startswith("2 interleaved repeats (allowed 2 to 6; stopped because")
    assert repeats_sentence({"n": 7, "min": 7, "max": 7, "stopped": "max"}) == "7 interleaved repeats"


def test_a_built_variant_runs_in_the_same_interleaved_loop(mask_rcnn, image):
    """A variant that is not the profiler's model under choices (a deployed graph) is measured beside the
    pipelines; one that fails to build is an error row and the others go on."""
    from mmdet_speedup import Choices
    from mmdet_speedup.pipeline import StagedPipeline
    from mmdet_speedup.profiler import Built, prepare_inputs

    made = []

    def make():
        made.append(1)
        return StagedPipeline(mask_rcnn, Choices(masks="raw"))

    def broken():
        raise RuntimeError("no such runtime here")

    prof = Profiler(mask_rcnn, device="cpu", repeats=1, warmup=0)
    df = prof.run({"stock": STOCK, "peer": Built(make, Choices(masks="raw")), "bad": Built(broken)},
                  prepare_inputs([image], "320x192"))
    ok = df[df["status"] == "ok"]
    assert set(ok["variant"]) == {"stock", "peer"} and made == [1]
    assert (ok.loc[ok["variant"] == "peer", "masks"] == "raw").all()
    bad = df[df["variant"] == "bad"]
    assert bad["status"].tolist() == ["error"] and "no such runtime here" in bad["message"].iat[0]
