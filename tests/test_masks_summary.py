"""The mask sweep's summaries (``masks.sweep_summary``, ``consumer_bill``, ``findings``) on rows built by hand."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mmdet_speedup import stages as S
from mmdet_speedup.study import masks

# (input_size, dets_per_image, variant) -> (post ms per repeat, rle ms per repeat, mask_bytes, dets_out)
CASES = {
    ("640x480", 40, "full"): ([10.0, 14.0, 12.0], [6.0, 8.0, 7.0], 40 * 640 * 480, 40),
    ("640x480", 40, "legacy"): ([20.0, 24.0, 22.0], [5.0, 5.0, 5.0], 40 * 640 * 480, 40),
    ("640x480", 40, "box"): ([4.0, 4.0, 4.0], [1.0, 1.0, 1.0], 2**20, 40),
    ("640x480", 40, "raw"): ([0.5, 0.5, 0.5], [9.5, 9.5, 9.5], 2**19, 40),
    ("320x240", 40, "raw"): ([0.25, 0.25, 0.25], [2.0, 2.0, 2.0], 2**19, 40),
    ("320x240", 40, "full"): ([3.0, 3.0, 3.0], [2.0, 2.0, 2.0], 40 * 320 * 240, 40),
    ("640x480", 10, "raw"): ([0.1, 0.1, 0.1], [2.0, 2.0, 2.0], 2**17, 9),
}


def sweep_rows() -> pd.DataFrame:
    rows = []
    for (size, dets, variant), (post, rle, nbytes, out) in CASES.items():
        for rep, (p, r) in enumerate(zip(post, rle)):
            base = dict(input_size=size, dets_per_image=dets, variant=variant, repeat=rep, image="a.jpg",
                        status="ok", mask_bytes=nbytes, dets_out=out)
            rows += [dict(base, stage=S.MASK_POSTPROCESS, ms=p), dict(base, stage=S.CONSUMER_RLE, ms=r)]
    # an error row must not count (nor pull the medians)
    rows.append(dict(input_size="640x480", dets_per_image=40, variant="full", repeat=-1, image="a.jpg",
                     status="error", mask_bytes=float("nan"), dets_out=float("nan"), stage=S.TOTAL, ms=float("nan")))
    return pd.DataFrame(rows)


def test_sweep_summary_medians_memory_and_order():
    s = masks.sweep_summary(sweep_rows())
    assert list(s.columns) == ["input_size", "dets_per_image", "variant", S.MASK_POSTPROCESS, S.CONSUMER_RLE,
                               "together", "MiB held", "dets", "megapixels"]
    # smaller image first, then fewer detections, then variants in MASK_VARIANTS order
    assert list(zip(s["input_size"], s["dets_per_image"], s["variant"])) == [
        ("320x240", 40, "full"), ("320x240", 40, "raw"), ("640x480", 10, "raw"),
        ("640x480", 40, "full"), ("640x480", 40, "legacy"), ("640x480", 40, "box"), ("640x480", 40, "raw")]
    full = s[(s["input_size"] == "640x480") & (s["dets_per_image"] == 40)].set_index("variant").loc["full"]
    assert full[S.MASK_POSTPROCESS] == 12.0 and full[S.CONSUMER_RLE] == 7.0 and full["together"] == 19.0
    assert full["MiB held"] == pytest.approx(40 * 640 * 480 / 2**20)
    assert full["megapixels"] == pytest.approx(0.3072)
    few = s[s["dets_per_image"] == 10].iloc[0]
    assert few["dets"] == 9 and few["MiB held"] == pytest.approx(0.125)


def test_consumer_bill_is_one_case_per_variant():
    bill = masks.consumer_bill(masks.sweep_summary(sweep_rows()), "640x480", 40)
    assert list(bill.index) == ["full", "legacy", "box", "raw"]
    assert list(bill.columns) == [S.MASK_POSTPROCESS, S.CONSUMER_RLE, "together"]
    assert bill.loc["raw"].tolist() == [0.5, 9.5, 10.0]
    assert bill.loc["legacy", "together"] == 27.0
    with pytest.raises(ValueError, match="no mask rows"):
        masks.consumer_bill(masks.sweep_summary(sweep_rows()), "3840x2304", 40)


def test_findings_ratios_and_memory():
    f = masks.findings(masks.sweep_summary(sweep_rows()), "640x480", 40)
    assert f["raw_vs_legacy"] == pytest.approx(22.0 / 0.5)
    assert f["raw_vs_full"] == pytest.approx(12.0 / 0.5)
    assert f["box_vs_full"] == pytest.approx(12.0 / 4.0)
    assert f["raw_rle_vs_full_rle"] == pytest.approx(19.0 / 10.0)
    assert f["mem_full_mb"] == pytest.approx(11.71875)
    assert f["mem_box_mb"] == 1.0 and f["mem_raw_mb"] == 0.5
    assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())


def test_the_a_a_row_holds_every_mask_verdict_to_its_floor():
    from mmdet_speedup.stats import NO_DIFFERENCE, aa_of

    post = {"full": [10.0] * 5, aa_of("full"): [8.0, 12.0, 9.0, 11.0, 10.0], "legacy": [10.0] * 5,
            "raw": [10.0 / 1.05] * 5, "box": [5.0] * 5}
    rows = pd.DataFrame([dict(input_size="640x480", sweep="size", variant=v, repeat=r, image="a.jpg", status="ok",
                              stage=stage, ms=ms if stage == S.MASK_POSTPROCESS else 1.0)
                         for v, per in post.items() for r, ms in enumerate(per)
                         for stage in (S.MASK_POSTPROCESS, S.CONSUMER_RLE)])
    said = masks.sentences(rows, "640x480")
    # `raw` is 1.05x `legacy` in every repeat: faster on its own, but inside the A/A row's spread
    assert f"`raw` against `legacy`: {NO_DIFFERENCE}" in said["mask_findings"]
    assert f"`{aa_of('full')}` against `full`, `mask_postprocess`: " in said["mask_findings"]
    assert "the noise floor every verdict" in said["mask_findings"]
    assert "faster: `box` (2" in said["mask_findings"]  # 2x is outside the floor
    no_aa = masks.sentences(rows[rows["variant"] != aa_of("full")], "640x480")
    assert "`raw` against `legacy`: faster" in no_aa["mask_findings"] and "noise floor" not in no_aa["mask_findings"]
