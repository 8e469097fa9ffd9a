"""Comparing two choice sets on the same inputs: matched-box IoU, score difference, mask IoU.

Detections are matched both ways (greedy by IoU, same label), so a variant cannot pass by dropping or
inventing detections: the report says what fraction of each side found a partner.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from .pipeline import Detections


@dataclass
class Agreement:
    n_ref: int
    n_test: int
    matched_ref: float  # fraction of reference detections with a partner
    matched_test: float
    box_iou_mean: float
    box_iou_min: float
    score_diff_max: float
    score_diff_mean: float
    mask_iou_mean: float = float("nan")
    mask_iou_min: float = float("nan")
    mask_identical: float = float("nan")  # fraction of matched pairs whose masks are bit-identical

    def as_dict(self) -> dict:
        return asdict(self)

    def passes(self, box_iou: float = 0.99, matched: float = 0.95, mask_iou: float = 0.99) -> bool:
        ok = (self.matched_ref >= matched and self.matched_test >= matched and self.box_iou_mean >= box_iou)
        if not np.isnan(self.mask_iou_mean):
            ok = ok and self.mask_iou_mean >= mask_iou
        return bool(ok)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    from torchvision.ops import box_iou as _iou

    iou = _iou(a.float(), b.float())
    # zero-area boxes (a deployed graph may keep them) give 0/0: the same box is IoU 1, any other 0
    same = (a.float()[:, None] == b.float()[None]).all(-1).to(iou.dtype)
    return torch.where(torch.isnan(iou), same, iou)


def match(ref: Detections, test: Detections, iou_thr: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU among same-label pairs, highest IoU first."""
    if len(ref) == 0 or len(test) == 0:
        return []
    iou = box_iou(ref.bboxes, test.bboxes)
    iou[ref.labels[:, None] != test.labels[None, :]] = -1
    pairs, used_r, used_t = [], set(), set()
    flat = torch.argsort(iou.flatten(), descending=True)
    nt = iou.shape[1]
    for k in flat.tolist():
        i, j = divmod(k, nt)
        v = float(iou[i, j])
        if v < iou_thr:
            break
        if i in used_r or j in used_t:
            continue
        used_r.add(i)
        used_t.add(j)
        pairs.append((i, j, v))
    return pairs


def mask_iou(a: Tensor, b: Tensor) -> float:
    inter = (a & b).sum().item()
    union = (a | b).sum().item()
    return 1.0 if union == 0 else inter / union


def compare(ref: Detections, test: Detections, iou_thr: float = 0.5, min_score: float = 0.0) -> Agreement:
    """Agreement over the detections scoring at least ``min_score`` on either side. Matching runs over all of
    both sides, so a confident detection whose partner fell just under the cut still finds it."""
    pairs = match(ref, test, iou_thr)
    rs, ts = ref.scores.float(), test.scores.float()
    pairs = [p for p in pairs if rs[p[0]] >= min_score or ts[p[1]] >= min_score]
    n_r, n_t = int((rs >= min_score).sum()), int((ts >= min_score).sum())
    hit_r = sum(1 for i, _, _ in pairs if rs[i] >= min_score)
    hit_t = sum(1 for _, j, _ in pairs if ts[j] >= min_score)
    ious = np.array([p[2] for p in pairs]) if pairs else np.array([np.nan])
    sd = np.array([abs(float(rs[i]) - float(ts[j])) for i, j, _ in pairs]) if pairs else np.array([np.nan])
    a = Agreement(n_r, n_t, hit_r / n_r if n_r else 1.0, hit_t / n_t if n_t else 1.0,
                  float(np.mean(ious)), float(np.min(ious)), float(np.max(sd)), float(np.mean(sd)))
    if ref.masks is not None and test.masks is not None and pairs:
        mr, mt = ref.mask_array(), test.mask_array()
        mi = [mask_iou(mr[i], mt[j]) for i, j, _ in pairs]
        same = [bool(torch.equal(mr[i], mt[j])) for i, j, _ in pairs]
        a.mask_iou_mean, a.mask_iou_min, a.mask_identical = float(np.mean(mi)), float(np.min(mi)), float(np.mean(same))
    return a


def identical(a: Detections, b: Detections) -> bool:
    """Bit-identical boxes, scores, labels (and masks when both have them)."""
    same = (torch.equal(a.bboxes, b.bboxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels))
    if same and a.masks is not None and b.masks is not None:
        same = torch.equal(a.mask_array(), b.mask_array())
    return bool(same)


def relative_error(ref: Tensor | tuple, test: Tensor | tuple) -> float:
    """max over levels of ||test - ref|| / ||ref|| (for backbone/neck features)."""
    if isinstance(ref, Tensor):
        ref, test = (ref,), (test,)
    return float(max(((t.float() - r.float()).norm() / r.float().norm().clamp_min(1e-12)).item()
                     for r, t in zip(ref, test)))
