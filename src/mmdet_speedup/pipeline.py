"""The staged forward: ``TwoStageDetector.predict`` re-stated as named, timed, swappable steps.

This is the only module that knows mmdet's internals. It calls mmdet's own methods in mmdet's order, so
with the stock choices it returns the same detections as ``model.test_step``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from . import cuda_ops, runtimes
from . import stages as S
from .cascade import final, is_cascade, merged_mask_probs, run_bbox_stages
from .checks import InputError
from .choices import AUTO, STOCK, Choices
from .compile import compile_features
from .masks import FullMasks, mask_probs, postprocess
from .models import check_two_stage, clone
from .precision import Precision, apply, to_float, to_nchw_float
from .preprocess import HostBatch, make_preprocessor
from .roi_align import swap_roi_align
from .timing import NullTimer, resolve_device

NULL = NullTimer()

ImageLike = Union[str, os.PathLike, bytes, np.ndarray]


class ImageLoadError(InputError):
    pass


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
        return None if self.masks is None else self.masks.to_full()


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


@contextlib.contextmanager
def probe(timer) -> Iterator[dict[str, int]]:
    """Times mmdet's NMS calls inside ``timer``'s stages and counts their boxes, for this context only."""
    counts: dict[str, int] = {}
    token = _PROBE.set(_Probe(timer, counts))
    try:
        yield counts
    finally:
        _PROBE.reset(token)


def install_nms_probes() -> None:
    import mmdet.models.dense_heads.rpn_head as rpn_head
    import mmdet.models.layers.bbox_nms as bbox_nms

    _wrap_nms(rpn_head, S.RPN_NMS, "rpn_nms_in")
    _wrap_nms(bbox_nms, S.ROI_BBOX_NMS, "bbox_nms_in")


@dataclass
class Features:
    """Backbone(+neck) maps as computed (reduced dtype, channels_last where chosen), and their RoI form.

    RoIAlign wants fp32 NCHW maps: mmcv's kernel misreads channels_last memory, torchvision's is slower on it.
    ``roi`` converts once (dtype and layout together) when the box head first asks, so the copy is charged to
    ``roi_bbox``: at 3840x2304 converting the FPN maps is no rounding error.
    """

    maps: tuple[Tensor, ...]
    _roi: tuple[Tensor, ...] | None = None
    #: the runtime that computed the maps (the RPN head's convolutions run in the same one)
    runtime: str = runtimes.TORCH

    @property
    def roi(self) -> tuple[Tensor, ...]:
        if self._roi is None:
            self._roi = tuple(to_nchw_float(t) for t in self.maps)
        return self._roi


@dataclass
class MaskInputs:
    """What ``mask_postprocess`` receives for one image: mask logits, the box results and the metainfo."""

    logits: Tensor
    results: Any
    meta: dict

    def copy(self) -> "MaskInputs":
        """mmdet's paste rescales the boxes in place: a sweep that reuses its inputs post-processes copies."""
        return MaskInputs(self.logits, clone_instances(self.results), self.meta)


class StagedPipeline:
    """Runs one image through the named stages with the given choices.

    Each stage range is a public method that times itself (``load``, ``preprocess``, ``to_device``, ``features``,
    ``proposals``, ``boxes``, ``mask_logits``, ``postprocess_masks``); ``__call__`` is their composition. Choices
    are resolved for the device and model (``Choices.resolve``); choices that change the model (precision,
    channels_last, BatchNorm folding, RoIAlign, compile, runtime) work on the pipeline's own copy of it.

    A non-torch ``runtime`` replaces backbone, neck, RPN head and the RoI heads' box and mask heads of that copy
    with ``runtimes.RuntimeModule``s (converted on the first call per input shape, the RoI heads once for every
    number of RoIs, inside their own stage ranges; RoIAlign, NMS and box decoding stay in torch);
    ``runtime="auto"`` keeps the torch modules and one set of runtime modules per candidate, measures backbone,
    neck and RPN convolutions on the first input of each shape (``runtimes.pick``, outside the stage ranges)
    before ``backbone``, and runs the RoI heads in the runtime that won. ``precision="int8"`` (OpenVINO) quantizes
    the converted parts with the inputs ``calibrate(images)`` recorded (else each part's first input) and runs
    what stays in torch in fp32.
    """

    def __init__(self, model, choices: Choices = STOCK, device: str | torch.device = "auto") -> None:
        check_two_stage(model)
        install_nms_probes()
        self.device = resolve_device(device)
        self.choices = c = choices.resolve(self.device, model)
        self.model = clone(model) if c.changes_model() else model
        #: what runs in torch: int8 is the runtime's (the torch parts run fp32 around it)
        self.precision = Precision("fp32" if runtimes.is_quantized(c.precision) else c.precision, self.device)
        apply(self.model, self.precision, channels_last=c.channels_last, fold_bn=c.fold_bn)
        swap_roi_align(self.model.roi_head, c.roi_align)
        #: how mmcv's compiled ops (NMS, RoIAlign) run: "mmcv", "torchvision" (on CUDA, with torchvision's RoIAlign
        #: chosen, NMS goes there too) or "fallback" (on CUDA, mmcv has no CUDA ops); see ``cuda_ops``
        self.ops = cuda_ops.prepare(self.device, c.roi_align)
        if c.compile:
            compile_features(self.model, self.device)
        self.parts = self._runtime_parts(c.runtime)
        #: the runtime that computed the last features (``auto``: what was measured fastest for that shape)
        self.last_runtime: str | None = None
        #: ``auto``'s measurements: per input shape, the medians (seconds) and the winner
        self.runtime_measurements: dict[tuple, dict] = {}
        self._parts_hash: str | None = None
        self.pre = make_preprocessor(c.preprocess, self.model, self.device)
        self.with_mask = bool(getattr(self.model.roi_head, "with_mask", False))
        self.cascade = is_cascade(self.model.roi_head)

    def __repr__(self) -> str:
        return f"StagedPipeline({self.choices.label()}, device={self.device})"

    # -- runtimes ---------------------------------------------------------------------------------------------
    def _runtime_parts(self, runtime: str) -> dict[str, dict[str, Any]]:
        """Per runtime, the modules that run backbone, neck, RPN head, box head and mask head (the model's own for
        torch; None where the model has none). The RoI heads convert with a dynamic number of RoIs."""
        m, rh = self.model, self.model.roi_head
        own = {"backbone": m.backbone, "neck": m.neck if m.with_neck else None, "rpn_head": m.rpn_head,
               "bbox_head": rh.bbox_head, "mask_head": rh.mask_head if getattr(rh, "with_mask", False) else None}
        names = runtimes.candidates(self.device, self.choices.precision) if runtime == AUTO else (runtime,)
        parts = {r: {k: runtimes.wrap(v, r, self.choices.precision, k, dynamic_batch=k in runtimes.ROI_PARTS)
                     for k, v in own.items()} for r in names}
        if runtime not in (runtimes.TORCH, AUTO):  # the model copy itself runs the runtime's parts
            for k, v in parts[runtime].items():
                if v is not None:
                    setattr(rh if k in runtimes.ROI_PARTS else m, k, v)
        return parts

    @contextlib.contextmanager
    def _roi_heads(self, runtime: str) -> Iterator[None]:
        """The model's box and mask heads are ``runtime``'s while open (``auto``: the runtime that computed the
        features; a chosen runtime's are the model's already, so nothing changes)."""
        rh = self.model.roi_head
        want = {k: v for k, v in self.parts.get(runtime, {}).items() if k in runtimes.ROI_PARTS and v is not None}
        saved = {k: getattr(rh, k) for k, v in want.items() if getattr(rh, k) is not v}
        for k in saved:
            setattr(rh, k, want[k])
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(rh, k, v)

    def modules_for(self, runtime: str) -> dict[str, Any]:
        """Backbone, neck (None without one) and RPN head for ``runtime``: torch's are the model's own (with a
        non-torch runtime chosen, the model holds that runtime's modules)."""
        if runtime == runtimes.TORCH:
            m = self.model
            return {"backbone": m.backbone, "neck": m.neck if m.with_neck else None, "rpn_head": m.rpn_head}
        return self.parts[runtime]

    def runtime_for(self, inputs: Tensor) -> str:
        """The runtime for these inputs: the chosen one, or ``auto``'s pick for their shape (measured once)."""
        if len(self.parts) == 1:
            return next(iter(self.parts))
        if self._parts_hash is None:
            self._parts_hash = runtimes.weights_hash_of(self.modules_for(runtimes.TORCH))
        key = (self._parts_hash, self.choices.precision, self.choices.channels_last,
               str(self.device), torch.get_num_threads(), tuple(inputs.shape), tuple(self.parts))
        runs = {r: (lambda r=r: self._conv_forward(r, inputs)) for r in self.parts}
        winner, medians = runtimes.pick(key, runs)
        self.runtime_measurements[tuple(inputs.shape)] = {"chosen": winner, **medians}
        return winner

    def _conv_forward(self, runtime: str, inputs: Tensor):
        """Backbone, neck and RPN head convolutions in ``runtime``, untimed (``auto``'s measurement)."""
        p, prec = self.modules_for(runtime), self.precision
        with prec.autocast():
            x = p["backbone"](prec.input(inputs, self.choices.channels_last))
            if p["neck"] is not None:
                x = p["neck"](x)
            return p["rpn_head"](tuple(x))

    def runtime_modules(self) -> list[runtimes.RuntimeModule]:
        """Every ``runtimes.RuntimeModule`` this pipeline holds (all candidates' under ``auto``), in part order."""
        return runtimes.runtime_modules([m for parts in self.parts.values() for m in parts.values()])

    def conversion_costs(self) -> list[dict]:
        """Every conversion to a non-torch runtime this pipeline's parts made (first-call cost: export and
        compile seconds, RSS growth; int8: quantization seconds and calibration samples), in part order; empty for
        torch."""
        return runtimes.conversions(self.runtime_modules())

    def calibrate(self, images, limit: int | None = None) -> dict[str, int]:
        """int8: record what each quantized part receives over ``images`` (the whole pipeline run in fp32 torch)
        and quantize with it from the next conversion on (``runtimes.calibrate``); samples per part, {} when
        nothing here is quantized."""
        return runtimes.calibrate(self, images, limit)

    @torch.no_grad()
    def __call__(self, image: ImageLike, timer=None) -> Detections:
        timer = timer or NullTimer()
        inputs, samples = self.prepare(image, timer)
        return self.from_inputs(inputs, samples, timer)

    @torch.no_grad()
    def batch(self, images: Sequence[ImageLike], timer=None) -> list[Detections]:
        """Several images of one input shape through one forward of backbone, neck, RPN head and box head; the
        mask head and the mask post-processing per image. Per-image detections, equal (up to the arithmetic's
        order) to calling the pipeline on each image; a runtime converts its graphs once more for the batch's
        shape."""
        timer = timer or NullTimer()
        if not images:
            raise InputError("a batch needs at least one image")
        prepared = [self.prepare(image, timer) for image in images]
        shapes = sorted({tuple(t.shape) for t, _ in prepared})
        if len(shapes) > 1:
            raise InputError(f"a batch needs images of one input shape after resizing, not {shapes}: padding one "
                             "to another's size would change its features at the border")
        inputs, samples = torch.cat([t for t, _ in prepared]), [s for _, ss in prepared for s in ss]
        metas = [s.metainfo for s in samples]
        out = []
        with probe(timer) as counts:
            feats = self.features(inputs, timer)
            per_image = self._boxes(feats, metas, self.proposals(feats, metas, timer), timer)
            for i, (results, meta) in enumerate(zip(per_image, metas)):
                masks = None
                if self.with_mask:
                    one = Features(tuple(f[i:i + 1] for f in feats.maps), tuple(f[i:i + 1] for f in feats.roi),
                                   runtime=feats.runtime)
                    results, masks = self.postprocess_masks(self.mask_logits(one, results, meta, timer), timer)
                out.append(Detections(results.bboxes.cpu(), results.scores.cpu(), results.labels.cpu(), masks,
                                      tuple(meta["ori_shape"][:2]), {"batch": len(images)}))
        for d in out:
            d.counts |= {k: v for k, v in counts.items() if k != "dets_out"} | {"dets_out": len(d)}
        return out

    # -- the stages, in order ---------------------------------------------------------------------------------
    def load(self, image: ImageLike, timer=NULL) -> np.ndarray:
        with timer.stage(S.LOAD):
            return load_image(image)

    def prime(self, images: Sequence) -> None:
        """Make the choices measured per input shape before any timed pass: ``auto`` pre-processing times its
        candidates on each image's shape once (``AutoPreprocessor.pick``), so no measured pass pays for it."""
        pick = getattr(self.pre, "pick", None)
        if pick is not None:
            for image in images:
                pick(load_image(image))

    def preprocess(self, img: np.ndarray, timer=NULL) -> HostBatch:
        with timer.stage(S.PREPROCESS):
            hb = self.pre.host(img)
        self.last_preprocess = hb.variant or self.choices.preprocess  # what ``auto`` picked, for the rows
        return hb

    def to_device(self, hb: HostBatch, timer=NULL) -> tuple[Tensor, list]:
        with timer.stage(S.DATA_PREPROCESSOR):
            return self.pre.to_device(hb)

    def prepare(self, image: ImageLike, timer=NULL) -> tuple[Tensor, list]:
        """``load``, ``preprocess`` and ``to_device``: the model's inputs and data samples."""
        return self.to_device(self.preprocess(self.load(image, timer), timer), timer)

    @torch.no_grad()
    def features(self, inputs: Tensor, timer=NULL) -> Features:
        prec = self.precision
        runtime = self.runtime_for(inputs)
        p = self.modules_for(runtime)
        self.last_runtime = runtime
        with prec.autocast():
            with timer.stage(S.BACKBONE):  # the input's layout/dtype cast is the backbone's to pay
                x = p["backbone"](prec.input(inputs, self.choices.channels_last))
            if p["neck"] is not None:
                with timer.stage(S.NECK):
                    x = p["neck"](x)
        return Features(tuple(x), runtime=runtime)

    @torch.no_grad()
    def proposals(self, feats: Features, metas: list[dict], timer=NULL) -> list:
        rpn = self.model.rpn_head
        with timer.stage(S.RPN), cuda_ops.routing(self.ops):
            with self.precision.autocast():
                outs = self.modules_for(feats.runtime)["rpn_head"](feats.maps)
            return rpn.predict_by_feat(*to_float(outs), batch_img_metas=metas, rescale=False)

    @torch.no_grad()
    def boxes(self, feats: Features, metas: list[dict], proposals: list, timer=NULL):
        """The box head and its NMS: one image's results (boxes rescaled here only when there are no masks)."""
        return self._boxes(feats, metas, proposals, timer)[0]

    def _boxes(self, feats: Features, metas: list[dict], proposals: list, timer) -> list:
        """The box head and its NMS for every image of the batch, in the stage range ``roi_bbox``."""
        with timer.stage(S.ROI_BBOX), self._roi_heads(feats.runtime), cuda_ops.routing(self.ops):
            return self._predict_bbox(feats.roi, metas, proposals, timer)

    @torch.no_grad()
    def mask_logits(self, feats: Features, results, meta: dict, timer=NULL) -> MaskInputs:
        with timer.stage(S.ROI_MASK), self._roi_heads(feats.runtime):
            return MaskInputs(self._mask_forward(feats.roi, results, meta, timer), results, meta)

    @torch.no_grad()
    def postprocess_masks(self, m: MaskInputs, timer=NULL, variant: str | None = None):
        """Mask logits to the chosen output (``variant`` overrides the choice); returns (results, masks)."""
        with timer.stage(S.MASK_POSTPROCESS):
            results, masks = postprocess(variant or self.choices.masks, self.model.roi_head, m.logits, m.results,
                                         m.meta)
            if self.device.type != "cpu":
                results = results.cpu()
        return results, masks

    # -- compositions -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def from_inputs(self, inputs: Tensor, samples: list, timer=None) -> Detections:
        """The stages after ``data_preprocessor``, on inputs already on the device (e.g. from a reader)."""
        return self._run(inputs, samples, timer or NullTimer())[0]

    @torch.no_grad()
    def check_outputs(self, inputs: Tensor, samples: list) -> tuple[Detections, Features, Tensor | None]:
        """One untimed pass with all an agreement check compares: the detections, the backbone(+neck) maps and
        each detection's raw mask probabilities (before the threshold; None without a mask head)."""
        return self._run(inputs, samples, NULL, with_probs=True)

    def _run(self, inputs: Tensor, samples: list, timer, with_probs: bool = False):
        with probe(timer) as counts:
            feats = self.features(inputs, timer)
            results, m = self.heads(inputs, samples, timer, feats)
            masks = probs = None
            if m is not None:
                if with_probs:  # before the post-processing rescales the boxes in place
                    probs = mask_probs(self.model.roi_head, m.logits, m.results.labels)
                results, masks = self.postprocess_masks(m, timer)
            counts["dets_out"] = len(results)
        meta = samples[0].metainfo
        return Detections(results.bboxes.cpu(), results.scores.cpu(), results.labels.cpu(), masks,
                          tuple(meta["ori_shape"][:2]), counts), feats, probs

    def heads(self, inputs: Tensor, samples: list, timer=NULL,
              feats: Features | None = None) -> tuple[Any, MaskInputs | None]:
        """``features`` (unless given) to ``roi_mask``: the box results, and the mask logits where the model
        has a mask head."""
        metas = [s.metainfo for s in samples]
        feats = self.features(inputs, timer) if feats is None else feats
        results = self.boxes(feats, metas, self.proposals(feats, metas, timer), timer)
        return results, self.mask_logits(feats, results, metas[0], timer) if self.with_mask else None

    @torch.no_grad()
    def mask_inputs(self, image: ImageLike) -> MaskInputs:
        """Every stage up to ``roi_mask``, untimed: the inputs to time ``mask_postprocess`` alone."""
        if not self.with_mask:
            raise InputError(f"{type(self.model).__name__} has no mask head")
        inputs, samples = self.prepare(image)
        with probe(NULL):
            return self.heads(inputs, samples)[1]

    def _head(self, kind: str, parent: str, timer):
        """One RoI head forward, under autocast and cast back to fp32; a cascade stage gets its own range. The
        box and mask heads are whichever the model holds (``_roi_heads``: a runtime's, or torch's)."""
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
    cuda_ops.prepare(next(model.parameters()).device)  # as shipped, unless mmcv has no CUDA ops
    data = test_pipeline(model)(dict(img=img, img_id=0))
    with torch.no_grad():
        out = model.test_step(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]))[0]
    p = out.pred_instances
    masks = FullMasks(p.masks.cpu()) if "masks" in p else None
    return Detections(p.bboxes.cpu(), p.scores.cpu(), p.labels.cpu(), masks, tuple(img.shape[:2]))
