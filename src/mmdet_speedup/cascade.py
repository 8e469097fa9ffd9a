"""Cascade R-CNN's RoI stages, re-stated so each stage's head can be timed and run under reduced precision.

``run_bbox_stages`` is ``CascadeRoIHead._refine_roi`` and ``merged_mask_probs`` the loop of
``CascadeRoIHead.predict_mask``, in mmdet's order, with every head forward going through a callable the
pipeline supplies (its timer range, autocast and the fp32 cast back). With a plain forward they return
mmdet's own tensors, so the staged pipeline matches ``model.test_step`` on a cascade detector too.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

#: ``forward(stage, x, rois) -> dict`` with ``cls_score``/``bbox_pred`` (box) or ``mask_preds`` (mask).
Forward = Callable[[int, tuple, Tensor], dict]


def is_cascade(roi_head) -> bool:
    from mmdet.models.roi_heads import CascadeRoIHead

    return isinstance(roi_head, CascadeRoIHead)


def final(head):
    """The head that makes the output: the last stage's of a cascade, else the head itself."""
    return head[-1] if isinstance(head, nn.ModuleList) else head


def run_bbox_stages(roi_head, x: tuple, rois: Tensor, metas: Sequence[dict], forward: Forward):
    """Per stage: head forward, then (but for the last) boxes regressed by the predicted class become the next
    stage's RoIs. Returns the last RoIs, the stages' mean class scores and the last box deltas, per image."""
    from mmdet.structures.bbox import get_box_tensor

    n = tuple(int((rois[:, 0] == i).sum()) for i in range(len(metas)))
    ms_scores = []
    for stage in range(roi_head.num_stages):
        out = forward(stage, x, rois)
        rois = rois.split(n, 0)
        cls_scores = out["cls_score"].split(n, 0)
        bbox_preds = out["bbox_pred"].split(n, 0)
        ms_scores.append(cls_scores)
        if stage < roi_head.num_stages - 1:
            head = roi_head.bbox_head[stage]
            if head.custom_activation:
                cls_scores = [head.loss_cls.get_activation(s) for s in cls_scores]
            refined = []
            for i, meta in enumerate(metas):
                if rois[i].shape[0] > 0:
                    label = cls_scores[i][:, :-1].argmax(dim=1)
                    boxes = get_box_tensor(head.regress_by_class(rois[i][:, 1:], label, bbox_preds[i], meta))
                    refined.append(torch.cat([rois[i][:, [0]], boxes], dim=1))
            rois = torch.cat(refined)
    cls_scores = [sum(s[i] for s in ms_scores) / float(len(ms_scores)) for i in range(len(metas))]
    return rois, cls_scores, bbox_preds


def merged_mask_probs(roi_head, x: tuple, rois: Tensor, meta: dict, forward: Forward) -> Tensor:
    """The stages' mask probabilities averaged (mmdet's ``merge_aug_masks``): probabilities, not logits."""
    from mmdet.models.test_time_augs import merge_aug_masks

    probs = [forward(stage, x, rois)["mask_preds"].sigmoid() for stage in range(roi_head.num_stages)]
    return merge_aug_masks(probs, meta)
