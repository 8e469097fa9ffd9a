"""COCO AP from pycocotools' per-image matches, re-accumulated in numpy, and delta AP with a paired bootstrap.

pycocotools evaluates each image once (``COCOeval.evaluate``); AP is then an accumulation over images. Doing
that accumulation here, on any multiset of images, makes a bootstrap over images cost milliseconds per
resample instead of a full evaluation, and gives the same AP as ``COCOeval.accumulate`` on the full set.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PerImage:
    """One IoU type's per-image evaluation at area "all" and the largest ``maxDets``: per (category, image) the
    detections' scores, whether each matched at each IoU threshold, whether it is ignored, and how many ground
    truths count (not ignored)."""

    iou_type: str
    image_ids: tuple[int, ...]
    cat_ids: tuple[int, ...]
    cells: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, int]]
    rec_thrs: np.ndarray
    n_thrs: int


def per_image(results: list[dict], ann_file: str | Path, iou_type: str = "bbox",
              img_ids: Sequence[int] | None = None) -> PerImage:
    """Evaluate every image of ``img_ids`` (default: all of ``ann_file``) once with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ids = sorted(gt.getImgIds() if img_ids is None else {int(i) for i in img_ids})
        if results:
            dt = gt.loadRes(results)
        else:  # nothing detected: every object missed (loadRes refuses an empty list)
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = ids
        ev.evaluate()
    p = ev.params
    max_det, n_img, n_area = p.maxDets[-1], len(p.imgIds), len(p.areaRng)
    cells = {}
    for k in range(len(p.catIds)):
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0: "all"
            if e is None:
                continue
            cells[(k, i)] = (np.asarray(e["dtScores"][:max_det], dtype=float), e["dtMatches"][:, :max_det] > 0,
                             e["dtIgnore"][:, :max_det].astype(bool), int(np.count_nonzero(e["gtIgnore"] == 0)))
    return PerImage(iou_type, tuple(p.imgIds), tuple(p.catIds), cells, np.asarray(p.recThrs), len(p.iouThrs))


def ap(ev: PerImage, images: Sequence[int] | np.ndarray | None = None) -> float:
    """COCO AP@[.5:.95] over ``images`` (indices into ``ev.image_ids``, repeats allowed: a bootstrap sample;
    default every image once), accumulated as ``COCOeval.accumulate`` does: per category and IoU threshold the
    precision envelope at 101 recall points, averaged over those with ground truth; -1 where none has any."""
    idx = np.arange(len(ev.image_ids)) if images is None else np.sort(np.asarray(images))
    values = []
    for k in range(len(ev.cat_ids)):
        parts = [ev.cells[(k, i)] for i in idx if (k, i) in ev.cells]
        if not parts:
            continue
        npig = sum(c[3] for c in parts)
        if npig == 0:
            continue
        scores = np.concatenate([c[0] for c in parts])
        order = np.argsort(-scores, kind="mergesort")
        dtm = np.concatenate([c[1] for c in parts], axis=1)[:, order]
        dtig = np.concatenate([c[2] for c in parts], axis=1)[:, order]
        tp = np.cumsum(dtm & ~dtig, axis=1, dtype=float)
        fp = np.cumsum(~dtm & ~dtig, axis=1, dtype=float)
        for t in range(ev.n_thrs):
            q = np.zeros(len(ev.rec_thrs))
            if tp.shape[1]:
                rc = tp[t] / npig
                pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]  # the precision envelope
                ins = np.searchsorted(rc, ev.rec_thrs, side="left")
                ok = ins < len(pr)
                q[ok] = pr[ins[ok]]
            values.append(q)
    return float(np.mean(values)) if values else -1.0


@dataclass(frozen=True)
class Delta:
    """Test AP minus reference AP on the same images, with a paired bootstrap interval over images."""

    delta: float
    lo: float
    hi: float
    n_images: int
    ref_ap: float
    test_ap: float


def delta_ap(ref: PerImage, test: PerImage, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Delta:
    """``ap(test) - ap(ref)`` with a percentile interval from resampling images, the same images for both sides
    (paired: an image that is hard for one is hard for the other)."""
    if ref.image_ids != test.image_ids or ref.cat_ids != test.cat_ids:
        raise ValueError("delta AP needs both evaluations on the same images and categories")
    n = len(ref.image_ids)
    a, b = ap(ref), ap(test)
    rng = np.random.default_rng(seed)
    boot = np.array([ap(test, s) - ap(ref, s) for s in rng.integers(0, n, size=(n_boot, n))])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    d = b - a
    return Delta(d, float(min(lo, d)), float(max(hi, d)), n, a, b)
