"""The staged forward: ``TwoStageDetector.predict`` re-stated as named, timed, swappable steps.

This is the only module that knows mmdet's internals. It calls mmdet's own methods in mmdet's order, so
with the stock choices it returns the same detections as ``model.test_step``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from . import stages as S
from .cascade import final, is_cascade, merged_mask_probs, run_bbox_stages
from .checks import InputError
from .masks import MASK_VARIANTS, full_masks, postprocess
from .models import check_two_stage
from .precision import PRECISIONS, Precision, apply, to_float, to_nchw_float
from .compile import compile_features
from .roi_align import ROI_ALIGN_IMPLS, swap_roi_align
from .preprocess import PREPROCESS_VARIANTS, make_preprocessor
from .timing import NullTimer, resolve_device

ImageLike = Union[str, os.PathLike, bytes, np.ndarray]


class ImageLoadError(InputError):
    pass


@dataclass(frozen=True)
class Choices:
    """One choice per swappable stage; an optimization is a set of choices, never a fork of the pipeline."""

    preprocess: str = "stock"
    precision: str = "fp32"
    channels_last: bool = False
    fold_bn: bool = False
    masks: str = "full"
    roi_align: str = "mmcv"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_VARIANTS:
            raise ValueError(f"unknown preprocess {self.preprocess!r}; choose from {', '.join(PREPROCESS_VARIANTS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.masks not in MASK_VARIANTS:
            raise ValueError(f"unknown masks {self.masks!r}; choose from {', '.join(MASK_VARIANTS)}")
        if self.roi_align not in ROI_ALIGN_IMPLS:
            raise ValueError(f"unknown roi_align {self.roi_align!r}; choose from {', '.join(ROI_ALIGN_IMPLS)}")

    def label(self) -> str:
        parts = [self.preprocess, self.precision]
        if self.channels_last:
            parts.append("cl")
        if self.fold_bn:
            parts.append("foldbn")
        if self.roi_align != "mmcv":
            parts.append(f"roi-{self.roi_align}")
        if self.compile:
            parts.append("compiled")
        parts.append(self.masks)
        return "/".join(parts)

    def changes_model(self) -> bool:
        return (self.precision != "fp32" or self.channels_last or self.fold_bn or self.roi_align != "mmcv"
                or self.compile)

    def replace(self, **kw) -> "Choices":
        return replace(self, **kw)


STOCK = Choices()


@dataclass
class Detections:
    """One image's detections on the host: boxes in original-image pixels, and masks in the chosen form."""

    bboxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Any = None
    image_size: tuple[int, int] = (0, 0)
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def mask_array(self) -> Tensor | None:
        return full_masks(self.masks)


def clone_instances(results):
    """A real copy of an InstanceData (its ``clone`` shares tensors, and mmdet's paste rescales boxes in place)."""
    out = results.__class__(metainfo=dict(results.metainfo_items()))
    for k, v in results.items():
        out[k] = v.clone() if isinstance(v, Tensor) else v
    return out


def load_image(src: ImageLike) -> np.ndarray:
    """Decode to uint8 BGR HWC (cv2), with a clear error for unreadable input."""
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
            raise ImageLoadError(f"expected a uint8 HxWx3 BGR array, got {src.dtype} {src.shape}")
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        img = cv2.imdecode(np.frombuffer(src, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ImageLoadError("could not decode the image bytes")
        return img
    path = Path(src)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageLoadError(f"could not decode image (corrupt or not an image): {path}")
    return img


# -- NMS instrumentation: mmdet imports batched_nms by name into two modules; wrap both once. -------------
@dataclass
class _Probe:
    timer: Any
    counts: dict[str, int]


_PROBE: contextvars.ContextVar[_Probe | None] = contextvars.ContextVar("mmdet_speedup_probe", default=None)


def _wrap_nms(module, stage: str, count_key: str) -> None:
    orig = module.batched_nms
    if getattr(orig, "_mmdet_speedup", False):
        return

    def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
        probe = _PROBE.get()
        if probe is None:
            return orig(boxes, scores, idxs, nms_cfg, class_agnostic)
        probe.counts[count_key] = probe.counts.get(count_key, 0) + int(boxes.shape[0])
        with probe.timer.stage(stage):
            return orig(boxes, scores, idxs, nms_cfg, class_agnostic)

    batched_nms._mmdet_speedup = True
    module.batched_nms = batched_nms


def install_nms_probes() -> None:
    import mmdet.models.dense_heads.rpn_head as rpn_head
    import mmdet.models.layers.bbox_nms as bbox_nms

    _wrap_nms(rpn_head, S.RPN_NMS, "rpn_nms_in")
    _wrap_nms(bbox_nms, S.ROI_BBOX_NMS, "bbox_nms_in")


class StagedPipeline:
    """Runs one image through the named stages with the given choices.

    For choices that change the model (precision, channels_last, BatchNorm folding, RoIAlign, compile) pass a
    copy: the levers mutate the modules they are given (``optimize`` does this for you).
    """

    def __init__(self, model, choices: Choices = STOCK, device: str | torch.device = "auto") -> None:
        check_two_stage(model)
        install_nms_probes()
        self.model = model
        self.choices = choices
        self.device = resolve_device(device)
        self.precision = Precision(choices.precision, self.device)
        apply(model, self.precision, channels_last=choices.channels_last, fold_bn=choices.fold_bn)
        swap_roi_align(model.roi_head, choices.roi_align)
        if choices.compile:
            compile_features(model, self.device)
        self.pre = make_preprocessor(choices.preprocess, model, self.device)
        self.with_mask = bool(getattr(model.roi_head, "with_mask", False))
        self.cascade = is_cascade(model.roi_head)
        self._capture: list | None = None
        if not self.with_mask and choices.masks != "full":
            raise ValueError(f"masks={choices.masks!r} needs a model with a mask head "
                             f"({type(model).__name__} has none)")

    @torch.no_grad()
    def __call__(self, image: ImageLike, timer=None) -> Detections:
        timer = timer or NullTimer()
        with timer.stage(S.LOAD):
            img = load_image(image)
        with timer.stage(S.PREPROCESS):
            hb = self.pre.host(img)
        with timer.stage(S.DATA_PREPROCESSOR):
            inputs, samples = self.pre.to_device(hb)
        return self.from_inputs(inputs, samples, timer)

    @torch.no_grad()
    def from_inputs(self, inputs: Tensor, samples: list, timer=None) -> Detections:
        """The stages after ``data_preprocessor``, on inputs already on the device (e.g. from a reader)."""
        timer = timer or NullTimer()
        counts: dict[str, int] = {}
        token = _PROBE.set(_Probe(timer, counts))
        try:
            return self._forward(inputs, samples, timer, counts)
        finally:
            _PROBE.reset(token)

    def _forward(self, inputs: Tensor, samples: list, timer, counts: dict[str, int]) -> Detections:
        m, c, prec = self.model, self.choices, self.precision
        metas = [s.metainfo for s in samples]
        with prec.autocast():
            with timer.stage(S.BACKBONE):  # the input's layout/dtype cast is the backbone's to pay
                x = m.backbone(prec.input(inputs, c.channels_last))
            if m.with_neck:
                with timer.stage(S.NECK):
                    x = m.neck(x)
        with timer.stage(S.RPN):
            with prec.autocast():
                outs = m.rpn_head(x)
            proposals = m.rpn_head.predict_by_feat(*to_float(outs), batch_img_metas=metas, rescale=False)
        with timer.stage(S.ROI_BBOX):
            # RoIAlign wants fp32 NCHW features: mmcv's kernel misreads channels_last memory, torchvision's is
            # slower on it. One copy per map (dtype and layout together), charged here: at 3840x2304 converting
            # the FPN maps is no rounding error.
            x = tuple(to_nchw_float(t) for t in x)
            results = self._predict_bbox(x, metas, proposals, timer)[0]
        masks = None
        if self.with_mask:
            with timer.stage(S.ROI_MASK):
                mask_preds = self._mask_forward(x, results, metas[0], timer)
            if self._capture is not None:
                self._capture.append((mask_preds, clone_instances(results), metas[0]))
            with timer.stage(S.MASK_POSTPROCESS):
                results, masks = postprocess(c.masks, m.roi_head, mask_preds, results, metas[0])
                if self.device.type != "cpu":
                    results = results.cpu()
        counts["dets_out"] = len(results)
        return Detections(results.bboxes.cpu(), results.scores.cpu(), results.labels.cpu(), masks,
                          tuple(metas[0]["ori_shape"][:2]), counts)

    def mask_inputs(self, image: ImageLike) -> tuple[Tensor, Any, dict]:
        """What ``mask_postprocess`` receives for this image (mask logits, results, metainfo): to time it alone."""
        self._capture = []
        try:
            self(image)
            return self._capture[0]
        finally:
            self._capture = None

    def _head(self, kind: str, parent: str, timer):
        """One RoI head forward, under autocast and cast back to fp32; a cascade stage gets its own range."""
        rh, prec = self.model.roi_head, self.precision
        fwd = rh._bbox_forward if kind == "bbox" else rh._mask_forward
        keys = ("cls_score", "bbox_pred") if kind == "bbox" else ("mask_preds",)

        def forward(stage: int, x, rois) -> dict:
            with timer.stage(S.cascade_stage(parent, stage)) if self.cascade else contextlib.nullcontext():
                with prec.autocast():
                    out = fwd(stage, x, rois) if self.cascade else fwd(x, rois)
                return {k: to_float(out[k]) for k in keys}
        return forward

    def _predict_bbox(self, x, metas, proposals, timer):
        """``predict_bbox`` (standard or cascade) with the head forwards under autocast and the rest in fp32."""
        from mmdet.structures.bbox import bbox2roi

        rh = self.model.roi_head
        rois = bbox2roi([p.bboxes for p in proposals])
        if rois.shape[0] == 0:
            return rh.predict_bbox(x, metas, proposals, rcnn_test_cfg=rh.test_cfg, rescale=not self.with_mask)
        forward = self._head("bbox", S.ROI_BBOX, timer)
        if self.cascade:
            rois, cls_scores, bbox_preds = run_bbox_stages(rh, x, rois, metas, forward)
        else:
            out = forward(0, x, rois)
            n = tuple(len(p) for p in proposals)
            rois, cls_scores, bbox_preds = rois.split(n, 0), out["cls_score"].split(n, 0), out["bbox_pred"].split(n, 0)
        return final(rh.bbox_head).predict_by_feat(
            rois=rois, cls_scores=cls_scores, bbox_preds=bbox_preds, batch_img_metas=metas,
            rcnn_test_cfg=rh.test_cfg, rescale=not self.with_mask)

    def _mask_forward(self, x, results, meta: dict, timer) -> Tensor:
        """Mask logits (N x C x M x M); a cascade's stages averaged as probabilities, as mmdet does."""
        from mmdet.structures.bbox import bbox2roi

        rh = self.model.roi_head
        rois = bbox2roi([results.bboxes])
        if rois.shape[0] == 0:
            return x[0].new_zeros((0, final(rh.mask_head).num_classes, 1, 1))
        forward = self._head("mask", S.ROI_MASK, timer)
        if self.cascade:
            return merged_mask_probs(rh, x, rois, meta, forward)
        return forward(0, x, rois)["mask_preds"]


def stock_test_step(model, image: ImageLike) -> Detections:
    """mmdet's own path, untouched: the config's test pipeline and ``model.test_step`` (the baseline)."""
    from .preprocess import test_pipeline

    img = load_image(image)
    data = test_pipeline(model)(dict(img=img, img_id=0))
    with torch.no_grad():
        out = model.test_step(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]))[0]
    p = out.pred_instances
    masks = p.masks.cpu() if "masks" in p else None
    return Detections(p.bboxes.cpu(), p.scores.cpu(), p.labels.cpu(), masks, tuple(img.shape[:2]))
