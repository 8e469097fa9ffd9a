"""Building mmdet detectors from packaged configs with (conditioned) random weights, and the workload knobs."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checks import InputError, checkpoint_file, size
from .preprocess import resize_step
from .timing import resolve_device


#: The model cache's default size (a conditioned Mask R-CNN is 170 MB, 300 MB with a cascade), and the disk space
#: a save always leaves free.
CACHE_GB = 4.0
CACHE_MIN_FREE_GB = 2.0


class UnsupportedModelError(InputError):
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


#: The recipe that gives a detector without a checkpoint its weights (see :class:`Conditioning`), fixed before
#: the agreement figures it feeds are taken, and recorded in every run's environment. Any change to it (or to
#: ``Conditioning``'s defaults) raises its version. v1 was: PyTorch's default init, identity BatchNorms, logits
#: conditioned on one 512x512 noise image.
WEIGHTS_RECIPE = ("weights v2: the config's init_weights, seeded (no pretrained weights) "
                  "+ every BatchNorm gamma ~ N(1, 0.2) clipped to [0.3, 2], beta ~ N(0, 0.2) "
                  "+ BatchNorm running stats calibrated (reset, cumulative average, BatchNorms alone in train mode, "
                  "no gradients) on the first 3 study images through the stock test pipeline at the model's scale "
                  "+ class and mask logits conditioned on the same images (cls std 8, background bias 4, mask std 4)")


@dataclass(frozen=True)
class Conditioning:
    """Make random weights behave like trained ones where the workload depends on it.

    The weights (``WEIGHTS_RECIPE``): the config's ``init_weights`` (Kaiming convs, the heads' own inits, never a
    pretrained download), seeded by ``seed``. Then every BatchNorm gets gamma ~ N(1, ``bn_gamma_std``) clipped to
    ``bn_gamma_range`` and beta ~ N(0, ``bn_beta_std``) (this also undoes ``zero_init_residual``, which zeroes each
    Bottleneck's last gamma), and its running statistics are calibrated on ``calibration_images`` of the study's
    images: without this every BatchNorm is an identity, folding it is a no-op and reduced precision acts on an
    unrealistic network.

    Then the logits, measured on the same images. A random box head gives every class a score of ~1/81, so
    nothing clears ``score_thr`` and the mask head never runs. We rescale ``fc_cls`` so class logits have std
    ``cls_logit_std`` and give the background a bias of ``background_bias``: a trained-like few thousand class
    candidates then clear 0.05 over 1000 RoIs and ``max_per_img`` caps the output. Mask logits are scaled to std
    ``mask_logit_std`` so probabilities leave 0.5 and the binary threshold means something.

    The calibration images are the study's ``data/images/*.jpg`` (sorted, the first ``calibration_images``), or
    the packaged sample image outside a study; a built model names them in ``mmdet_speedup_calibration``.
    """

    seed: int = 0
    cls_logit_std: float = 8.0
    background_bias: float = 4.0
    mask_logit_std: float = 4.0
    bn_gamma_std: float = 0.2
    bn_gamma_range: tuple[float, float] = (0.3, 2.0)
    bn_beta_std: float = 0.2
    calibration_images: int = 3


def fmt_size(size: tuple[int, int] | None) -> str:
    return "" if size is None else f"{size[0]}x{size[1]}"


def parse_size(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"WxH"`` as positive integers; ``None`` or ``""`` means "keep" (no resize, the config's scale)."""
    if text is None or text == "":
        return None
    return size(text)


def megapixels(text: str | tuple[int, int]) -> float:
    w, h = size(text)
    return w * h / 1e6


#: The study's reference scale: cases with more pixels are "large" (fewer repeats allowed, fewer runtime rows).
STUDY_SCALE = "1333x800"


def above_study_scale(text: str | tuple[int, int]) -> bool:
    w, h = size(text)
    W, H = size(STUDY_SCALE)
    return w * h > W * H


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
        raise InputError(f"unknown config {str(config)!r}: not a file and not one of mmdet's packaged configs")
    return hits[0]


def load_config(config: str | os.PathLike, workload: Workload | None = None):
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(config)))
    check_config(cfg)
    cfg.model.backbone.init_cfg = None  # no ImageNet download: random init
    _no_pretrained(cfg.model)  # nor anywhere else (a C4 shared head loads res5 from ImageNet by default)
    if workload is not None:
        apply_workload(cfg, workload)
    return cfg


def _no_pretrained(node) -> None:
    """Drop every ``Pretrained`` init and ``pretrained=`` path from a model config, in place (no download)."""
    def pretrained(init) -> bool:
        inits = init if isinstance(init, (list, tuple)) else [init]
        return any(isinstance(i, dict) and i.get("type") == "Pretrained" for i in inits)

    if isinstance(node, dict):
        for key in list(node.keys()):
            if key == "pretrained" and isinstance(node[key], str):
                node[key] = None
            elif key == "init_cfg" and pretrained(node[key]):
                node[key] = None
            else:
                _no_pretrained(node[key])
    elif isinstance(node, (list, tuple)):
        for item in node:
            _no_pretrained(item)


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
    if w.scale is not None and resize_step(cfg) is not None:
        resize_step(cfg)["scale"] = tuple(w.scale)


# -- what the staged pipeline can split ----------------------------------------------------------------------
#: RoI heads whose test-time forward is StandardRoIHead's or CascadeRoIHead's (the others only change training).
ROI_HEADS = ("StandardRoIHead", "CascadeRoIHead", "DynamicRoIHead", "PISARoIHead")
#: Why the other RoI heads are refused: each changes the test-time forward the pipeline re-states.
ROI_HEAD_REASONS = {
    "HybridTaskCascadeRoIHead": "interleaves its box and mask stages and adds a semantic branch",
    "SCNetRoIHead": "interleaves its box and mask stages and adds semantic and glbctx branches",
    "PointRendRoIHead": "refines each mask by point sampling after the mask head",
    "MaskScoringRoIHead": "rescores masks with a MaskIoU head",
    "GridRoIHead": "locates boxes with a grid head instead of box regression",
    "DoubleHeadRoIHead": "runs separate conv and fc heads for boxes and classes",
    "TridentRoIHead": "merges the detections of three branches",
    "MultiInstanceRoIHead": "predicts several instances per RoI",
    "SparseRoIHead": "refines a learned set of queries, not RPN proposals",
}


def _refusal(detector: type, rpn: type | None, roi: type | None, bbox: list[type], mask: list[type]) -> str | None:
    """Why the pipeline cannot split this detector, or None when it can (the classes as built or configured)."""
    from mmdet.models.detectors import TwoStageDetector

    name = detector.__name__
    if not issubclass(detector, TwoStageDetector):
        return (f"{name} is not a two-stage detector; the study splits two-stage detectors with an RPN "
                "(Faster/Mask R-CNN, FPN or C4, Cascade (Mask) R-CNN)")
    for method in ("predict", "extract_feat"):
        if getattr(detector, method) is not getattr(TwoStageDetector, method):
            return f"{name} overrides {method}(), which the staged pipeline re-states from TwoStageDetector"
    if rpn is None:
        return f"{name} has no RPN head: there are no proposals to time"
    if rpn.__name__ == "EmbeddingRPNHead":
        return (f"{name} is query-based: its EmbeddingRPNHead learns a fixed set of proposal boxes, so there is no "
                "RPN stage to split")
    if rpn.__name__ != "RPNHead":
        return f"{name}'s RPN head {rpn.__name__} is not split by the pipeline (supported: RPNHead)"
    if roi is None or roi.__name__ not in ROI_HEADS:
        why = ROI_HEAD_REASONS.get(getattr(roi, "__name__", ""), "changes the RoI forward the pipeline re-states")
        return (f"{name}'s RoI head {getattr(roi, '__name__', None)} {why}; supported: StandardRoIHead, "
                "CascadeRoIHead")
    for b in bbox:
        if b.__name__ == "SABLHead":
            return f"{name}'s box head SABLHead regresses boxes by buckets, which the pipeline does not split"
    for m in mask:
        if m.__name__ != "FCNMaskHead":
            return f"{name}'s mask head {m.__name__} is not split by the pipeline (supported: FCNMaskHead)"
    return None


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple, torch.nn.ModuleList)) else [x]


def check_config(cfg) -> None:
    """Refuse, from the config alone (before building anything), a detector the pipeline cannot split."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()

    def cls(spec):
        if not spec:
            return None
        found = MODELS.get(spec["type"]) if isinstance(spec.get("type"), str) else spec.get("type")
        return found if isinstance(found, type) else None

    m = cfg.model
    detector = cls(m)
    if detector is None:
        raise UnsupportedModelError(f"unknown model type {m.get('type')!r}")
    roi = m.get("roi_head") or {}
    why = _refusal(detector, cls(m.get("rpn_head")), cls(roi) if roi else None,
                   [c for c in map(cls, _as_list(roi.get("bbox_head"))) if c],
                   [c for c in map(cls, _as_list(roi.get("mask_head"))) if c])
    if why:
        raise UnsupportedModelError(why)


def check_two_stage(model) -> None:
    """Refuse a built model the pipeline cannot split, naming its class and why."""
    roi = getattr(model, "roi_head", None)
    why = _refusal(type(model), type(getattr(model, "rpn_head", None)) if getattr(model, "with_rpn", False) else None,
                   type(roi) if roi is not None else None,
                   [type(b) for b in _as_list(getattr(roi, "bbox_head", None))],
                   [type(h) for h in _as_list(getattr(roi, "mask_head", None))])
    if why:
        raise UnsupportedModelError(why)


#: What gives a detector built without a checkpoint its weights.
WEIGHTS = ("auto", "trained", "conditioned")


def trained_serves(config: str | os.PathLike) -> bool:
    """Whether the repository's trained weights fit this config (the study's Mask R-CNN, or its box parts)."""
    from . import weights as W

    return config_path(config).stem in W.SERVES


def check_weights(config: str | os.PathLike, weights: str) -> bool:
    """Whether a build without a checkpoint gets the trained weights; refuses ``"trained"`` for a config they
    do not fit, and an unknown choice, in one line."""
    from . import weights as W
    from .checks import choice

    choice(weights, WEIGHTS, "weights")
    if weights == "trained" and not trained_serves(config):
        raise InputError(f"the trained weights serve {', '.join(W.SERVES)}, not {config_path(config).stem}")
    return weights != "conditioned" and trained_serves(config)


def build_detector(config: str | os.PathLike, *, checkpoint: str | None = None, weights: str = "auto",
                   device: str = "auto", workload: Workload | None = Workload(),
                   conditioning: Conditioning | None = Conditioning()):
    """An mmdet two-stage detector in eval mode.

    Its weights: ``checkpoint`` (an mmdet checkpoint) when given; else ``weights``: ``"trained"`` (the
    repository's Mask R-CNN trained on the generated shapes, also a Faster R-CNN FPN's box parts),
    ``"conditioned"`` (seeded random weights, see :class:`Conditioning`), or ``"auto"``: trained where they fit
    the config, conditioned elsewhere (the C4 and cascade models).
    """
    from mmdet.apis import init_detector
    from mmdet.utils import register_all_modules

    register_all_modules()
    dev = resolve_device(device)
    if checkpoint is not None:
        checkpoint_file(checkpoint)
    trained = checkpoint is None and check_weights(config, weights)
    cfg = load_config(config, workload)
    if trained:
        return _build_trained(cfg, config, dev, workload)
    if conditioning is not None and checkpoint is None:
        torch.manual_seed(conditioning.seed)
        np.random.seed(conditioning.seed)
    import contextlib
    import io
    import warnings
    # init_detector warns "use COCO classes by default" without a checkpoint; mmengine re-enables warnings
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model = init_detector(cfg, checkpoint=checkpoint, device=str(dev))
        except Exception as e:
            if checkpoint is None:
                raise
            raise InputError(f"could not load checkpoint {checkpoint} into {cfg.model.type}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if checkpoint is not None:
        check_fits(model, checkpoint, config_path(config).stem)
    check_two_stage(model)
    model.eval()
    if checkpoint is None and conditioning is not None:
        images = calibration_images(conditioning.calibration_images)
        cached = conditioned_cache_path(cfg, conditioning, images, dev)
        if cached is None or not _load_conditioned(model, cached):
            batches = calibration_batches(model, images)
            init_weights(model, conditioning)
            randomize_bn(model, conditioning)
            calibrate_bn(model, batches)
            condition(model, conditioning, batches)
            if cached is not None:
                _save_conditioned(model, cached)
        model.mmdet_speedup_calibration = tuple(p.name for p in images)
    model.mmdet_speedup_weights = "checkpoint" if checkpoint is not None else \
        "conditioned" if conditioning is not None else "random"
    model.mmdet_speedup_config = str(config_path(config).stem)
    model.mmdet_speedup_workload = workload
    return model


def check_fits(model, checkpoint: str | os.PathLike, config: str) -> None:
    """A checkpoint must hold every weight of the model, shaped as the model's (mmengine loads leniently and only
    warns): a checkpoint of another architecture is one line, not a model with random parts."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"checkpoint {checkpoint} cannot be read as weights: {type(e).__name__}") from None
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else {}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        first = (missing or extra or bad)[0]
        raise InputError(f"checkpoint {checkpoint} does not fit {config}: {len(missing)} weights missing, "
                         f"{len(extra)} unexpected, {len(bad)} of another shape (first: {first})")


def _build_trained(cfg, config, dev: torch.device, workload: Workload | None):
    """The config's detector with the repository's trained weights, checked (see :mod:`weights`)."""
    import contextlib
    import io
    import warnings

    from mmdet.apis import init_detector

    from . import weights as W

    state = W.load_state(config=config_path(config).stem)  # every check before the model is built
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        model = init_detector(cfg, checkpoint=None, device="cpu")
    W.fit(model, state, W.default_path(), config_path(config).stem)
    model.to(dev)
    check_two_stage(model)
    model.eval()
    record = W.read_record(W.default_path())
    classes = list(model.dataset_meta["classes"])
    classes[:len(record.get("classes", ()))] = record.get("classes", ())  # the shapes take the first labels
    model.dataset_meta = {**model.dataset_meta, "classes": tuple(classes)}
    model.mmdet_speedup_weights = f"trained {record['sha256'][:12]}"
    model.mmdet_speedup_config = str(config_path(config).stem)
    model.mmdet_speedup_workload = workload
    return model


def conditioned_cache_path(cfg, c: Conditioning, images: list[Path], device: torch.device) -> Path | None:
    """Where a conditioned model's weights are kept between processes, keyed by everything they depend on: the
    config with its workload, the conditioning, the calibration images' bytes, the device type, the code that
    conditions and the library versions. Conditioning a 3840x2304 model runs its calibration images through it
    (about a minute on 2 cores) in every chapter that builds one. ``$MMDET_SPEEDUP_MODEL_CACHE`` names the folder
    (default ``${XDG_CACHE_HOME:-~/.cache}/mmdet-speedup/models``); ``0`` turns the cache off. The folder is held
    to ``$MMDET_SPEEDUP_MODEL_CACHE_GB`` (default ``CACHE_GB``), least recently used out first."""
    import mmcv
    import mmdet

    from . import cascade

    folder = os.environ.get("MMDET_SPEEDUP_MODEL_CACHE", "")
    if folder == "0":
        return None
    folder = folder or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmdet-speedup" / "models"
    h = hashlib.sha256()
    for part in (json.dumps(cfg.to_dict(), sort_keys=True, default=str), repr(c), device.type, torch.__version__, mmdet.__version__, mmcv.__version__,
                 Path(__file__).read_text(), Path(cascade.__file__).read_text(), *(p.read_bytes() for p in images)):
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return Path(folder) / f"{h.hexdigest()[:32]}.pt"


def _load_conditioned(model, path: Path) -> bool:
    """Load cached conditioned weights and the random state conditioning left (later draws stay as without the
    cache); False when there is none or it cannot be read, and the model is conditioned again."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        state, own = saved["state_dict"], model.state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            return False
        model.load_state_dict(state)
    except Exception:  # a missing, partial or stale file costs a conditioning, never a wrong model
        return False
    torch.set_rng_state(saved["torch_rng"])
    np.random.set_state(saved["numpy_rng"])
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: the last to be evicted
    return True


def _save_conditioned(model, path: Path) -> None:
    """Keep the conditioned weights at ``path``, within the cache's size and never at the cost of the run: a
    save that would leave less than ``CACHE_MIN_FREE_GB`` on the disk, or that fails, is skipped with a warning
    (the model is conditioned again next time)."""
    state = {"state_dict": model.state_dict(), "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}
    nbytes = sum(t.numel() * t.element_size() for t in state["state_dict"].values())
    path.parent.mkdir(parents=True, exist_ok=True)
    cap = float(os.environ.get("MMDET_SPEEDUP_MODEL_CACHE_GB") or CACHE_GB) * 2**30
    free = shutil.disk_usage(path.parent).free
    if free - nbytes < CACHE_MIN_FREE_GB * 2**30 or nbytes > cap:
        warnings.warn(f"model cache: not keeping {nbytes / 2**20:.0f} MB in {path.parent} "
                      f"({free / 2**30:.1f} GB free on its disk, {cap / 2**30:.1f} GB allowed)", stacklevel=3)
        return
    _evict(path.parent, keep=cap - nbytes)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # another process reading mid-write sees no file, not half of one
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"model cache: could not keep {path.name}: {e}", stacklevel=3)


def _evict(folder: Path, keep: float) -> None:
    """Remove the least recently used cached models until those left take at most ``keep`` bytes."""
    files = []
    for f in folder.glob("*.pt"):
        with contextlib.suppress(OSError):  # another process may have removed it meanwhile
            files.append((f.stat(), f))
    total = 0
    for st, f in sorted(files, key=lambda x: x[0].st_mtime, reverse=True):
        total += st.st_size
        if total > keep:
            f.unlink(missing_ok=True)


def batch_norms(model) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm of the model (torch's and mmcv's, which subclass ``_BatchNorm``), in module order."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def init_weights(model, c: Conditioning) -> None:
    """The config's ``init_weights``, seeded; refuses (rather than downloads) a ``Pretrained`` init left in it."""
    from mmengine.logging import MMLogger

    for name, m in model.named_modules():
        inits = getattr(m, "init_cfg", None)
        inits = inits if isinstance(inits, (list, tuple)) else [inits]
        if any(isinstance(i, dict) and i.get("type") == "Pretrained" for i in inits):
            raise InputError(f"{name or type(model).__name__} would load pretrained weights: {inits}")
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel("WARNING")  # init_weights logs every parameter's init at INFO
    try:
        torch.manual_seed(c.seed)
        model.init_weights()
    finally:
        logger.setLevel(level)


@torch.no_grad()
def randomize_bn(model, c: Conditioning) -> None:
    """Every BatchNorm's gamma ~ N(1, bn_gamma_std) clipped to ``bn_gamma_range``, beta ~ N(0, bn_beta_std)."""
    g = torch.Generator().manual_seed(c.seed)
    lo, hi = c.bn_gamma_range
    for bn in batch_norms(model):
        if bn.weight is not None:
            gamma = (1 + c.bn_gamma_std * torch.randn(bn.weight.shape, generator=g)).clamp_(lo, hi)
            bn.weight.copy_(gamma)
        if bn.bias is not None:
            bn.bias.copy_(c.bn_beta_std * torch.randn(bn.bias.shape, generator=g))


def calibration_images(n: int) -> list[Path]:
    """The first ``n`` of the study's images (sorted), or the packaged sample image outside a study."""
    from .project import images_dir, sample_image

    found = sorted(images_dir().glob("*.jpg")) if images_dir().is_dir() else []
    return found[:n] or [sample_image()]


def calibration_batches(model, images: list[Path]) -> list[tuple[Tensor, list]]:
    """Each image through the stock test pipeline and data preprocessor (the model's scale): (inputs, samples)."""
    import cv2

    from .preprocess import test_pipeline

    pipeline = test_pipeline(model)
    batches = []
    for path in images:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"could not read calibration image {path}")
        data = pipeline(dict(img=img, img_id=0))
        out = model.data_preprocessor(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]), False)
        batches.append((out["inputs"], out["data_samples"]))
    return batches


@torch.no_grad()
def calibrate_bn(model, batches: list[tuple[Tensor, list]]) -> None:
    """Set every BatchNorm's running mean and variance to their average over the calibration images.

    One forward per image (batch 1), with each BatchNorm module itself in train mode and ``momentum=None`` (a
    cumulative average) after its statistics are reset: ResNet's ``norm_eval`` keeps BatchNorm in eval under
    ``model.train()``, so the modules are switched one by one. The forward is ``extract_feat`` when every BatchNorm
    is in the backbone or neck (FPN), else the whole test forward, so BatchNorms after the features (a C4 shared
    head's res5) see the RoIs they see at inference. Eval mode and each momentum are restored.
    """
    bns = [bn for bn in batch_norms(model) if bn.track_running_stats]
    if not bns:
        return
    saved = [(bn, bn.training, bn.momentum) for bn in bns]
    in_features = {id(m) for f in (model.backbone, getattr(model, "neck", None)) if f is not None for m in f.modules()}
    features_only = all(id(bn) in in_features for bn in bns)
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for inputs, samples in batches:
            if features_only:
                model.extract_feat(inputs)
            else:
                model.predict(inputs, samples, rescale=False)
    finally:
        for bn, training, momentum in saved:
            bn.train(training)
            bn.momentum = momentum


@torch.no_grad()
def condition(model, c: Conditioning, batches: list[tuple[Tensor, list]]) -> None:
    """Rescale the class and mask logit layers (see :class:`Conditioning`), measured on the calibration images.

    The logits' spread is measured over every RPN proposal of every image (mask logits: the first 64 of each), on
    the real images the BatchNorms were calibrated on: a synthetic noise image drives calibrated features an order
    of magnitude past a photo's, and logits scaled on it leave most photos with no class above ``score_thr``.
    A cascade averages its stages' class logits: each stage is first brought to unit std, then all by one
    factor so the average has ``cls_logit_std``; the background bias is added to every stage (its mean).
    Scaling a stage's logits does not change the classes its boxes are refined by (argmax).
    """
    from mmdet.structures.bbox import bbox2roi

    from .cascade import is_cascade, run_bbox_stages

    roi_head = model.roi_head
    cascade = is_cascade(roi_head)
    heads = list(roi_head.bbox_head) if cascade else [roi_head.bbox_head]
    with_mask = getattr(roi_head, "with_mask", False)
    mask_heads = (list(roi_head.mask_head) if cascade else [roi_head.mask_head]) if with_mask else []
    logits: list[list[Tensor]] = [[] for _ in heads]  # per stage, per image
    mask_logits: list[list[Tensor]] = [[] for _ in mask_heads]
    for inputs, samples in batches:
        x = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(x, samples, rescale=False)
        rois = bbox2roi([p.bboxes for p in proposals])
        stage_logits: list[Tensor] = []

        def bbox_forward(stage, feats, r):
            out = roi_head._bbox_forward(stage, feats, r) if cascade else roi_head._bbox_forward(feats, r)
            stage_logits.append(out["cls_score"])
            return out

        if cascade:
            run_bbox_stages(roi_head, x, rois, [s.metainfo for s in samples], bbox_forward)
        else:
            bbox_forward(0, x, rois)
        for stage, t in enumerate(stage_logits):
            logits[stage].append(t)
        for stage in range(len(mask_heads)):
            fwd = roi_head._mask_forward(stage, x, rois[:64]) if cascade else roi_head._mask_forward(x, rois[:64])
            mask_logits[stage].append(fwd["mask_preds"])
    cls = [torch.cat(t) for t in logits]
    stds = [t.std().clamp_min(1e-12) for t in cls]
    mean_std = float(sum(t / s for t, s in zip(cls, stds)).div(len(cls)).std()) if cascade else 1.0
    for head, s in zip(heads, stds):
        head.fc_cls.weight.mul_(c.cls_logit_std / (s * mean_std))
        head.fc_cls.bias.mul_(c.cls_logit_std / (s * mean_std))
        bg = head.num_classes  # mmdet puts background last
        if head.fc_cls.bias.numel() > bg:
            head.fc_cls.bias[bg] += c.background_bias
    for head, preds in zip(mask_heads, mask_logits):
        mstd = torch.cat(preds).std().clamp_min(1e-12)
        head.conv_logits.weight.mul_(c.mask_logit_std / mstd)
        head.conv_logits.bias.mul_(c.mask_logit_std / mstd)


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
