"""Unit tests: the workload knobs on a built model, the RLE consumer, and the loading comparison."""
import copy

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from mmdet_speedup import STOCK, BoxMasks, Detections, RawMasks, StagedPipeline, Workload, identical
from mmdet_speedup.masks import region_rle, rle_encode
from mmdet_speedup.models import apply_workload, set_workload


# -- set_workload --------------------------------------------------------------------------------------------
def test_set_workload_changes_live_heads_and_cfg(mask_rcnn, image):
    m = copy.deepcopy(mask_rcnn)
    before = StagedPipeline(m, STOCK, "cpu")(image)
    assert len(before) == 60  # the fixture's dets_per_image caps it

    # mmdet's build hands the heads the config's own test_cfg dicts; keep the record apart, so that both must change
    m.cfg = copy.deepcopy(m.cfg)
    assert m.rpn_head.test_cfg is not m.cfg.model.test_cfg.rpn
    set_workload(m, dets_per_image=7, rpn_pre_nms=200, rpn_proposals=50)
    rpn, rcnn, cfg = m.rpn_head.test_cfg, m.roi_head.test_cfg, m.cfg.model.test_cfg
    assert (rcnn.max_per_img, rpn.nms_pre, rpn.max_per_img) == (7, 200, 50)  # what the heads read at run time
    assert (cfg.rcnn.max_per_img, cfg.rpn.nms_pre, cfg.rpn.max_per_img) == (7, 200, 50)  # what rows record
    after = StagedPipeline(m, STOCK, "cpu")(image)
    assert len(after) == 7 and after.counts["dets_out"] == 7
    # fewer boxes into the RPN's NMS (<= 200 per FPN level), fewer proposals into the box head
    assert after.counts["rpn_nms_in"] <= 5 * 200 < before.counts["rpn_nms_in"]
    assert after.counts["bbox_nms_in"] < before.counts["bbox_nms_in"]

    set_workload(m, dets_per_image=3)  # None keeps a knob as it is
    rpn, rcnn = m.rpn_head.test_cfg, m.roi_head.test_cfg
    assert (rcnn.max_per_img, rpn.nms_pre, rpn.max_per_img) == (3, 200, 50)
    assert len(StagedPipeline(m, STOCK, "cpu")(image)) == 3
    assert mask_rcnn.roi_head.test_cfg.max_per_img == 60 and mask_rcnn.cfg.model.test_cfg.rcnn.max_per_img == 60


# -- the RLE consumer --------------------------------------------------------------------------------------
def _full(region: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    out[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region
    return out


EDGE_CASES = {
    "empty region": (np.zeros((4, 5), bool), 3, 2, (10, 12)),
    "zero-size region": (np.zeros((0, 0), bool), 0, 0, (6, 7)),
    "full image": (np.ones((9, 11), bool), 0, 0, (9, 11)),
    "full image but the first pixel": (~np.eye(1, 11 * 9, 0, dtype=bool).reshape(11, 9).T, 0, 0, (9, 11)),
    "only the last pixel": (np.eye(1, 12, 11, dtype=bool).reshape(3, 4), 5, 8, (8, 12)),
    "top-left corner": (np.ones((3, 4), bool), 0, 0, (10, 10)),
    "bottom-right corner": (np.ones((3, 4), bool), 7, 6, (10, 10)),
    "touching all four borders": (np.pad(np.ones((1, 1), bool), 1, constant_values=True), 0, 0, (3, 3)),
    "one-row image": (np.array([[1, 0, 1, 1]], bool), 0, 2, (1, 6)),
    "one-column image": (np.array([[1], [1], [0], [1]], bool), 1, 0, (5, 1)),
    "runs crossing columns": (np.ones((4, 3), bool), 6, 1, (10, 5)),  # the last rows join the next column's first
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_region_rle_equals_rle_of_the_pasted_full_mask_edge_cases(case):
    region, y0, x0, (h, w) = EDGE_CASES[case]
    full = _full(region, y0, x0, h, w)
    rle = region_rle(torch.from_numpy(region), y0, x0, (h, w))
    assert rle == rle_encode(full)
    assert np.array_equal(mask_util.decode(rle), full)


def test_region_rle_equals_rle_of_the_pasted_full_mask_random():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        rh, rw = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
        y0, x0 = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        region = rng.random((rh, rw)) < rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
        assert region_rle(torch.from_numpy(region), y0, x0, (h, w)) == rle_encode(_full(region, y0, x0, h, w))


def _decoded(rles: list[dict]) -> torch.Tensor:
    return torch.from_numpy(np.stack([mask_util.decode(r) for r in rles]).astype(bool))


def test_raw_masks_rle_decodes_to_full():
    h, w = 37, 53
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[5.0, 4.0, 30.0, 20.0],  # inside
                          [0.0, 0.0, 53.0, 37.0],  # the whole image
                          [-10.0, -6.0, 12.0, 9.0],  # past the top-left corner
                          [40.5, 25.2, 70.0, 50.0],  # past the bottom-right corner
                          [20.0, 10.0, 20.6, 10.4],  # under a pixel
                          [8.0, 30.0, 16.0, 36.0]])  # set nowhere (probabilities below the threshold)
    probs = torch.rand(len(boxes), 1, 28, 28, generator=g)
    probs[1] = 1.0  # the whole image set, incl. every border pixel
    probs[5] = 0.2
    raw = RawMasks(probs, boxes, (h, w), 0.5)
    full = raw.to_full()
    assert full.shape == (len(boxes), h, w) and full.dtype == torch.bool
    assert full[1].all() and not full[5].any() and full[0].any()
    assert torch.equal(_decoded(raw.to_rle()), full)
    empty = RawMasks(probs[:0], boxes[:0], (h, w), 0.5)
    assert empty.to_rle() == [] and empty.to_full().shape == (0, h, w)


def test_box_masks_rle_decodes_to_full():
    h, w = 20, 30
    rng = np.random.default_rng(2)
    regions = [rng.random((5, 7)) < 0.5, np.ones((h, w), bool), np.zeros((3, 3), bool), np.ones((4, 6), bool),
               rng.random((1, w)) < 0.5]
    offsets = [(3, 4), (0, 0), (8, 8), (h - 4, w - 6), (h - 1, 0)]  # inside, whole image, empty, corner, last row
    box = BoxMasks([torch.from_numpy(r) for r in regions], offsets, (h, w))
    full = box.to_full()
    expect = torch.from_numpy(np.stack([_full(r, y, x, h, w) for r, (y, x) in zip(regions, offsets)]).astype(bool))
    assert torch.equal(full, expect)
    assert torch.equal(_decoded(box.to_rle()), full)
    assert box.to_rle() == [rle_encode(m) for m in expect.numpy()]


def test_profiler_rle_consumer_is_one_rle_per_instance():
    from mmdet_speedup.profiler import rle_consumer

    masks = BoxMasks([torch.ones(2, 3, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.bool)], [(1, 1), (0, 0)],
                     (4, 5))
    dets = Detections(torch.zeros(2, 4), torch.ones(2), torch.zeros(2, dtype=torch.long), masks, (4, 5))
    assert rle_consumer(dets) == masks.to_rle() and len(rle_consumer(dets)) == 2
    assert rle_consumer(Detections(torch.zeros(1, 4), torch.ones(1), torch.zeros(1, dtype=torch.long))) == []


# -- the loading comparison ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pipe(mask_rcnn):
    """The fixture model on small inputs (160x96, few proposals): the loader tests time whole passes."""
    m = copy.deepcopy(mask_rcnn)
    apply_workload(m.cfg, Workload(scale=(160, 96), dets_per_image=None))
    set_workload(m, dets_per_image=10, rpn_proposals=50)
    return StagedPipeline(m, STOCK, "cpu")


def test_loading_comparison_rows(small_pipe, mask_rcnn, images):
    from mmdet_speedup.profiler import Profiler

    passes = 2
    prof = Profiler(small_pipe.model, device="cpu", repeats=passes, warmup=0)
    df = prof.run_loading(STOCK, images[:2], depth=2)
    assert list(dict.fromkeys(df["variant"])) == ["serial", "serial (A/A)", "overlapped", "overlapped (equal priority)"]
    assert (df["status"] == "ok").all() and (df["stage"] == "total").all()
    for _, g in df.groupby("variant"):
        assert sorted(g["repeat"]) == list(range(passes))  # one row per pass
    assert (df["images_per_s"] > 0).all()
    assert np.allclose(df["ms"], 1000 / df["images_per_s"], rtol=1e-12)
    assert len(df) == 4 * passes and list(df["repeat"]) == [0] * 4 + [1] * 4  # passes interleaved


@pytest.mark.parametrize("workers, depth, nice", [(1, 1, 10), (2, 2, 0)])
def test_overlapped_loading_gives_the_serial_detections(small_pipe, images, workers, depth, nice):
    from mmdet_speedup.loader import run_overlapped, run_serial

    sources = [images[0], images[1], images[0].read_bytes(), images[2]]  # a path, bytes; repeats must not mix up
    serial = run_serial(small_pipe, sources)
    overlapped = run_overlapped(small_pipe, sources, depth=depth, workers=workers, nice=nice)
    assert len(overlapped) == len(serial) == len(sources)
    assert all(len(d) > 0 for d in serial)
    for i, (a, b) in enumerate(zip(serial, overlapped)):
        assert identical(a, b), f"image {i} differs"
    assert not identical(serial[0], serial[1])  # the inputs differ, so a mix-up would show


def test_degenerate_boxes_match_themselves_only():
    """A zero-area box (mmdeploy's graph keeps some) is IoU 1 with itself and 0 with any other box, never NaN."""
    import torch

    from mmdet_speedup.equivalence import box_iou

    a = torch.tensor([[5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 5.0, 9.0], [6.0, 6.0, 6.0, 6.0], [0.0, 0.0, 10.0, 10.0]])
    assert box_iou(a, b).tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
