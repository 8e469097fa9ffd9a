"""Building mmdet detectors from packaged configs with (conditioned) random weights, and the workload knobs."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .timing import resolve_device


class UnsupportedModelError(ValueError):
    """The detector cannot be split into the study's stages (e.g. a one-stage detector)."""


@dataclass(frozen=True)
class Workload:
    """The knobs that set how much work one inference is, recorded with every row.

    ``scale`` is the model's Resize target (W, H); ``dets_per_image`` the box head's ``max_per_img``;
    ``rpn_pre_nms`` the RPN's top-N before NMS (per level on FPN, on the one level on C4);
    ``rpn_proposals`` the proposals the RPN keeps. ``None`` keeps the config's value.
    """

    scale: tuple[int, int] | None = (1333, 800)
    dets_per_image: int | None = 100
    rpn_pre_nms: int | None = None
    rpn_proposals: int | None = None
    score_thr: float | None = None


@dataclass(frozen=True)
class Conditioning:
    """Make random weights behave like trained ones where the workload depends on it.

    A random box head gives every class a score of ~1/81, so nothing clears ``score_thr`` and the
    mask head never runs. We rescale ``fc_cls`` so class logits have std ``cls_logit_std`` and give
    the background a bias of ``background_bias``: a trained-like few thousand class candidates then
    clear 0.05 over 1000 RoIs and ``max_per_img`` caps the output. Mask logits are scaled to std
    ``mask_logit_std`` so probabilities leave 0.5 and the binary threshold means something.
    """

    seed: int = 0
    cls_logit_std: float = 8.0
    background_bias: float = 4.0
    mask_logit_std: float = 4.0
    calibration_size: int = 512


def fmt_size(size: tuple[int, int] | None) -> str:
    return "" if size is None else f"{size[0]}x{size[1]}"


def parse_size(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if text is None or text == "":
        return None
    if isinstance(text, (tuple, list)):
        return int(text[0]), int(text[1])
    try:
        w, h = str(text).lower().split("x")
        return int(w), int(h)
    except ValueError as e:
        raise ValueError(f"size must look like WxH (e.g. 1333x800), got {text!r}") from e


def config_path(config: str | os.PathLike) -> Path:
    """A config path, or the name of one of mmdet's packaged configs (e.g. ``mask-rcnn_r50_fpn_1x_coco``)."""
    p = Path(config)
    if p.is_file():
        return p
    import mmdet
    root = Path(mmdet.__file__).parent / ".mim" / "configs"
    name = p.name if p.suffix == ".py" else p.name + ".py"
    hits = sorted(root.rglob(name))
    if not hits:
        raise FileNotFoundError(f"unknown config {str(config)!r}: not a file and not one of mmdet's packaged configs")
    return hits[0]


def load_config(config: str | os.PathLike, workload: Workload | None = None):
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(config)))
    cfg.model.backbone.init_cfg = None  # no ImageNet download: random init
    if workload is not None:
        apply_workload(cfg, workload)
    return cfg


def apply_workload(cfg, w: Workload) -> None:
    test_cfg = cfg.model.get("test_cfg")
    if test_cfg is None or "rpn" not in test_cfg or "rcnn" not in test_cfg:
        raise UnsupportedModelError("only two-stage detectors with an RPN and an RoI head are supported "
                                    f"(model type {cfg.model.get('type')!r})")
    if w.dets_per_image is not None:
        test_cfg.rcnn.max_per_img = int(w.dets_per_image)
    if w.score_thr is not None:
        test_cfg.rcnn.score_thr = float(w.score_thr)
    if w.rpn_pre_nms is not None:
        test_cfg.rpn.nms_pre = int(w.rpn_pre_nms)
    if w.rpn_proposals is not None:
        test_cfg.rpn.max_per_img = int(w.rpn_proposals)
    if w.scale is not None:
        for t in _test_pipeline(cfg):
            if t.get("type") == "Resize":
                t["scale"] = tuple(w.scale)


def _test_pipeline(cfg) -> list:
    if cfg.get("test_dataloader") is not None:
        return cfg.test_dataloader.dataset.pipeline
    return cfg.get("test_pipeline", [])


def check_two_stage(model) -> None:
    from mmdet.models.detectors import TwoStageDetector

    if not isinstance(model, TwoStageDetector) or not getattr(model, "with_rpn", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a two-stage detector with an RPN; the study splits "
            "two-stage detectors (Faster/Mask R-CNN, FPN or C4) into stages")


def build_detector(config: str | os.PathLike, *, checkpoint: str | None = None, device: str = "auto",
                   workload: Workload | None = Workload(), conditioning: Conditioning | None = Conditioning()):
    """An mmdet two-stage detector in eval mode. Without a checkpoint: seeded, conditioned random weights."""
    from mmdet.apis import init_detector
    from mmdet.utils import register_all_modules

    register_all_modules()
    dev = resolve_device(device)
    cfg = load_config(config, workload)
    if conditioning is not None and checkpoint is None:
        torch.manual_seed(conditioning.seed)
        np.random.seed(conditioning.seed)
    import contextlib
    import io
    import warnings
    # init_detector warns "use COCO classes by default" without a checkpoint; mmengine re-enables warnings
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        model = init_detector(cfg, checkpoint=checkpoint, device=str(dev))
    check_two_stage(model)
    model.eval()
    if checkpoint is None and conditioning is not None:
        condition(model, conditioning)
    model.mmdet_speedup_config = str(config_path(config).stem)
    model.mmdet_speedup_workload = workload
    return model


@torch.no_grad()
def condition(model, c: Conditioning) -> None:
    """Rescale the class and mask logit layers (see :class:`Conditioning`), calibrated on one synthetic image."""
    from mmdet.structures import DetDataSample

    roi_head = model.roi_head
    fc_cls = roi_head.bbox_head.fc_cls
    g = torch.Generator().manual_seed(c.seed)
    size = c.calibration_size
    img = torch.randint(0, 256, (1, 3, size, size), generator=g).float().to(fc_cls.weight.device)
    meta = dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0),
                pad_shape=(size, size), batch_input_shape=(size, size))
    sample = DetDataSample(metainfo=meta)
    norm = model.data_preprocessor
    x = model.extract_feat((img - norm.mean) / norm.std)
    proposals = model.rpn_head.predict(x, [sample], rescale=False)
    from mmdet.structures.bbox import bbox2roi
    rois = bbox2roi([p.bboxes for p in proposals])
    out = roi_head._bbox_forward(x, rois)
    std = out["cls_score"].std().clamp_min(1e-12)
    fc_cls.weight.mul_(c.cls_logit_std / std)
    fc_cls.bias.mul_(c.cls_logit_std / std)
    bg = roi_head.bbox_head.num_classes  # mmdet puts background last
    if fc_cls.bias.numel() > bg:
        fc_cls.bias[bg] += c.background_bias
    if getattr(roi_head, "with_mask", False):
        logits = roi_head.mask_head.conv_logits
        m = roi_head._mask_forward(x, rois[:64])["mask_preds"]
        mstd = m.std().clamp_min(1e-12)
        logits.weight.mul_(c.mask_logit_std / mstd)
        logits.bias.mul_(c.mask_logit_std / mstd)


def set_workload(model, *, dets_per_image: int | None = None, rpn_pre_nms: int | None = None,
                 rpn_proposals: int | None = None) -> None:
    """Change the test-time knobs of a built model in place (the heads read their ``test_cfg`` at run time)."""
    rpn, rcnn = model.rpn_head.test_cfg, model.roi_head.test_cfg
    cfg = model.cfg.model.test_cfg
    for value, live, rec, key in ((dets_per_image, rcnn, cfg.rcnn, "max_per_img"),
                                  (rpn_pre_nms, rpn, cfg.rpn, "nms_pre"),
                                  (rpn_proposals, rpn, cfg.rpn, "max_per_img")):
        if value is not None:
            live[key] = int(value)
            rec[key] = int(value)


def clone(model):
    """A deep copy that keeps our annotations (optimizations mutate their own copy, never the stock model)."""
    return copy.deepcopy(model)
