"""Mask outputs: ``full`` (mmdet 3.3's paste), ``legacy`` (mmdet 2.x lists), ``box`` (box-local), ``raw`` (28x28).

``box`` and ``raw`` are lazy: ``paste(i)``, ``to_full()`` and ``to_rle()`` pay the paste only when asked,
and pasted back they equal ``full`` (mmdet's own ``_do_paste_mask`` does the box-local paste, exactly as
mmdet runs it on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MASK_VARIANTS = ("full", "legacy", "box", "raw")


def rle_encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def _paste_one(probs: Tensor, box: Tensor, img_h: int, img_w: int) -> tuple[Tensor, int, int]:
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    region, (ys, xs) = _do_paste_mask(probs, box, img_h, img_w, skip_empty=True)
    return region[0], int(ys.start), int(xs.start)


def region_rle(region: Tensor, y0: int, x0: int, image_size: tuple[int, int]) -> dict:
    """The COCO RLE of an image-sized mask that is zero outside ``region`` (placed at ``y0, x0``).

    COCO runs are column-major over the whole image; only the region's set pixels are visited, so no
    image-sized array is ever built. Equal to ``rle_encode`` of the pasted full mask.
    """
    from pycocotools import mask as mask_util

    h, w = image_size
    rh, rw = region.shape
    rows, cols = np.nonzero(np.asarray(region, dtype=bool).T)  # transposed: column-major order
    idx = (x0 + rows).astype(np.int64) * h + (y0 + cols)  # full-image column-major index of set pixels
    if idx.size == 0:
        counts = [h * w]
    else:
        breaks = np.nonzero(np.diff(idx) != 1)[0]
        starts = np.concatenate([idx[:1], idx[breaks + 1]])
        ends = np.concatenate([idx[breaks], idx[-1:]]) + 1  # exclusive
        zeros = np.concatenate([starts[:1], starts[1:] - ends[:-1]])
        runs = np.empty(2 * len(starts) + 1, dtype=np.int64)
        runs[0:-1:2], runs[1:-1:2], runs[-1] = zeros, ends - starts, h * w - ends[-1]
        counts = runs.tolist() if runs[-1] else runs[:-1].tolist()  # COCO drops a trailing empty run
    rle = mask_util.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
    rle["counts"] = rle["counts"].decode()
    return rle


class Masks:
    """What every mask output offers: ``len``, ``paste(i)`` (box-local bool + offset), ``to_full()``, ``to_rle()``,
    ``nbytes()``. The lazy ones (``box``, ``raw``) pay the paste only when asked."""

    image_size: tuple[int, int]

    def __len__(self) -> int:
        raise NotImplementedError

    def paste(self, i: int) -> tuple[Tensor, int, int]:
        raise NotImplementedError

    def to_full(self) -> Tensor:
        h, w = self.image_size
        out = torch.zeros(len(self), h, w, dtype=torch.bool)
        for i in range(len(self)):
            m, y0, x0 = self.paste(i)
            out[i, y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
        return out

    def to_rle(self) -> list[dict]:
        """COCO RLE of every instance, encoded from the box-local paste: cost grows with box area only."""
        return [region_rle(*self.paste(i), self.image_size) for i in range(len(self))]

    def nbytes(self) -> int:
        raise NotImplementedError


@dataclass
class BoxMasks(Masks):
    """Each mask pasted only inside its box, with its offset: memory grows with box area, not image area."""

    regions: list[Tensor]
    offsets: list[tuple[int, int]]  # (y0, x0)
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.regions)

    def paste(self, i: int) -> tuple[Tensor, int, int]:
        return self.regions[i], *self.offsets[i]

    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.regions)


@dataclass
class RawMasks(Masks):
    """The mask head's probabilities (N x 1 x M x M, any M) and boxes in original-image coordinates."""

    probs: Tensor
    bboxes: Tensor
    image_size: tuple[int, int]
    threshold: float = 0.5

    def __len__(self) -> int:
        return len(self.probs)

    def paste(self, i: int) -> tuple[Tensor, int, int]:
        h, w = self.image_size
        soft, y0, x0 = _paste_one(self.probs[i:i + 1], self.bboxes[i:i + 1], h, w)
        return soft >= self.threshold, y0, x0

    def nbytes(self) -> int:
        return self.probs.numel() * self.probs.element_size() + self.bboxes.numel() * 4


@dataclass
class FullMasks(Masks):
    """mmdet 3.3's output: an N x H x W bool tensor (on the host)."""

    masks: Tensor

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[-2:])

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index) -> "FullMasks":
        return FullMasks(self.masks[index])

    def paste(self, i: int) -> tuple[Tensor, int, int]:
        return self.masks[i], 0, 0

    def to_full(self) -> Tensor:
        return self.masks

    def to_rle(self) -> list[dict]:
        return [rle_encode(m.numpy()) for m in self.masks]

    def nbytes(self) -> int:
        return self.masks.numel() * self.masks.element_size()


@dataclass
class LegacyMasks(Masks):
    """mmdet 2.x's output: per class, a list of full-size host bool arrays."""

    per_class: list[list[np.ndarray]]
    order: list[tuple[int, int]]  # instance i -> (class, index in class), to compare with the others
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.order)

    def to_full(self) -> Tensor:
        h, w = self.image_size
        if not self.order:
            return torch.zeros(0, h, w, dtype=torch.bool)
        return torch.from_numpy(np.stack([self.per_class[c][j] for c, j in self.order]))

    def paste(self, i: int) -> tuple[Tensor, int, int]:
        c, j = self.order[i]
        return torch.from_numpy(self.per_class[c][j]), 0, 0

    def to_rle(self) -> list[dict]:
        return [rle_encode(self.per_class[c][j]) for c, j in self.order]

    def nbytes(self) -> int:
        return sum(m.nbytes for cls in self.per_class for m in cls)


def check(variant: str) -> str:
    from .checks import choice

    return choice(variant, MASK_VARIANTS, "masks")


def postprocess(variant: str, roi_head, mask_preds: Tensor, results, meta: dict):
    """Turn one image's mask logits (N x C x M x M) into the variant's output; boxes come back rescaled.

    A cascade hands over its stages' averaged probabilities instead of logits (mmdet's ``activate_map``).
    Returns (results with rescaled ``bboxes``, masks). ``full`` runs mmdet's own code, unchanged.
    """
    from .cascade import final, is_cascade

    cfg = roi_head.test_cfg
    head, activated = final(roi_head.mask_head), is_cascade(roi_head)
    if variant in ("full", "legacy"):
        results = head.predict_by_feat(
            mask_preds=(mask_preds,), results_list=[results], batch_img_metas=[meta], rcnn_test_cfg=cfg,
            rescale=True, activate_map=activated)[0]
        if variant == "full":
            return results, FullMasks(results.masks.cpu())
        return results, _legacy(results.masks, results.labels.cpu(), head.num_classes)
    h, w = meta["ori_shape"][:2]
    bboxes = results.bboxes
    scale = bboxes.new_tensor(meta["scale_factor"]).repeat((1, 2))
    results.bboxes = bboxes / scale  # what mmdet's paste does in place
    n = len(results)
    probs = mask_probs(roi_head, mask_preds, results.labels)
    if variant == "raw":
        return results, RawMasks(probs.cpu(), results.bboxes.cpu(), (h, w), float(cfg.mask_thr_binary))
    regions, offsets = [], []
    for i in range(n):
        soft, y0, x0 = _paste_one(probs[i:i + 1], results.bboxes[i:i + 1], h, w)
        regions.append(soft >= cfg.mask_thr_binary)
        offsets.append((y0, x0))
    if regions and regions[0].device.type != "cpu":  # one copy to the host, not N
        flat = torch.cat([r.flatten() for r in regions]).cpu()
        regions = [t.view(r.shape) for t, r in zip(flat.split([r.numel() for r in regions]), regions)]
    return results, BoxMasks(regions, offsets, (h, w))


def mask_probs(roi_head, mask_preds: Tensor, labels: Tensor) -> Tensor:
    """Each detection's fp32 mask probabilities for its own class (N x 1 x M x M), before the threshold."""
    from .cascade import final, is_cascade

    if len(labels) == 0:
        return mask_preds.new_zeros((0, 1) + tuple(mask_preds.shape[-2:])).float()
    probs = mask_preds if final(roi_head.mask_head).class_agnostic else \
        mask_preds[torch.arange(len(labels), device=mask_preds.device), labels][:, None]
    return (probs if is_cascade(roi_head) else probs.sigmoid()).float()


def _legacy(masks: Tensor, labels: Tensor, num_classes: int) -> LegacyMasks:
    per_class: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    order = []
    for i, c in enumerate(labels.tolist()):
        order.append((c, len(per_class[c])))
        per_class[c].append(masks[i].cpu().numpy())  # one host copy per instance, as mmdet 2.x did
    return LegacyMasks(per_class, order, tuple(masks.shape[-2:]))


# -- the mask sweep's summaries (``Profiler.run_masks`` rows) -------------------------------------------------
import pandas as pd  # noqa: E402  (only the summaries below need it)

from . import stages as _S  # noqa: E402


