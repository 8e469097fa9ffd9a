"""Training the study's Mask R-CNN on the generated shapes, through mmengine's Runner, resumable at any point.

The model is ``mask-rcnn_r50_fpn_1x_coco`` as the study runs it (80-class heads; the shapes take the first
labels), trained from scratch: BatchNorm trains (no pretrained statistics), crops of full-size images keep
objects near their inference size, backbone and neck run under bf16 autocast where the CPU has bf16 matrix
instructions (mmcv's NMS refuses bf16, so the heads stay fp32). State is saved every ``checkpoint_every``
iterations under the work folder and a new run resumes from the last save: iteration, optimizer, scheduler
and the data order (``SeededSampler`` skips what was trained on without loading it).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .environment import cpu_has_bf16

import numpy as np
import torch

from .checks import InputError, count

CONFIG = "mask-rcnn_r50_fpn_1x_coco"


@dataclass(frozen=True)
class Recipe:
    iters: int = 1900
    batch: int = 2
    crop: int = 384
    resize: tuple[float, float] = (0.5, 1.25)  # RandomResize of the 1333x800 image before the crop
    lr: float = 2e-4
    weight_decay: float = 0.05
    warmup: int = 100
    final_lr: float = 0.02  # of lr, at the end of the cosine decay
    clip: float = 10.0
    rois_per_image: int = 128
    autocast: bool = True  # bf16 for backbone and neck, where the CPU has bf16 matrix instructions
    checkpoint_every: int = 40
    log_every: int = 10
    init: str | None = None  # a weights file (safetensors) to start from: a later stage, fresh optimizer
    bn_images: int = 200  # train crops that re-estimate BatchNorm statistics at export
    seed: int = 0


def work_root() -> Path:
    """``$MMDET_SPEEDUP_TRAIN`` or ``${XDG_CACHE_HOME:-~/.cache}/mmdet-speedup/train``: outside the repository."""
    env = os.environ.get("MMDET_SPEEDUP_TRAIN")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmdet-speedup" / "train"


# -- mmengine pieces -------------------------------------------------------------------------------------
def _register() -> None:
    from mmengine.dataset import DefaultSampler  # noqa: F401  (registry populated)
    from mmengine.hooks import Hook
    from mmengine.registry import DATA_SAMPLERS, HOOKS, LOOPS
    from mmengine.runner.loops import IterBasedTrainLoop, _InfiniteDataloaderIterator
    from torch.utils.data import Sampler

    if "SeededSampler" in DATA_SAMPLERS.module_dict:
        return

    @DATA_SAMPLERS.register_module()
    class SeededSampler(Sampler):
        """An endless stream of seeded permutations, one per pass; ``start`` skips indices without loading them."""

        def __init__(self, dataset, seed: int = 0, start: int = 0) -> None:
            self.n, self.seed, self.start = len(dataset), seed, start

        def __iter__(self) -> Iterator[int]:
            return order(self.n, self.seed, self.start)

        def __len__(self) -> int:
            return self.n

    @LOOPS.register_module()
    class ResumableLoop(IterBasedTrainLoop):
        """mmengine's loop, but a resumed run skips the trained data in the sampler instead of loading it."""

        def run(self):
            self.runner.call_hook("before_train")
            self.runner.call_hook("before_train_epoch")
            if self._iter > 0:
                self.dataloader.sampler.start = self._iter * self.dataloader.batch_size
                self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
            while self._iter < self._max_iters and not self.stop_training:
                self.runner.model.train()
                self.run_iter(next(self.dataloader_iterator))
            self.runner.call_hook("after_train_epoch")
            self.runner.call_hook("after_train")
            return self.runner.model

    @HOOKS.register_module()
    class AutocastHook(Hook):
        """Backbone and neck under bf16 autocast, their outputs back in fp32 for the heads (mmcv's ops)."""

        def before_train(self, runner) -> None:
            autocast_features(runner.model)


def order(n: int, seed: int, start: int = 0) -> Iterator[int]:
    """Index ``start`` onwards of the stream: permutation k of range(n) is seeded by (seed, k)."""
    k, skip = divmod(start, n)
    while True:
        perm = np.random.default_rng([seed, k]).permutation(n)
        for i in perm[skip:]:
            yield int(i)
        k, skip = k + 1, 0


def autocast_features(model) -> None:
    """Wrap ``extract_feat`` so backbone and neck run in bf16 and return fp32 maps; idempotent."""
    if getattr(model.extract_feat, "_mmdet_speedup_autocast", False):
        return
    inner = model.extract_feat

    def extract_feat(inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = inner(inputs)
        return tuple(f.float() for f in feats)

    extract_feat._mmdet_speedup_autocast = True
    model.extract_feat = extract_feat


def config(recipe: Recipe, ann_file: Path, work_dir: Path):
    """The mmdet config of the study's model with this recipe's training settings."""
    from .models import load_config
    from .synth import CLASSES, image_dir

    cfg = load_config(CONFIG)
    m = cfg.model
    m.backbone.norm_eval = False  # no pretrained statistics: BatchNorm must learn
    m.backbone.frozen_stages = -1
    m.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    m.train_cfg.rcnn.sampler.num = recipe.rois_per_image
    cfg.train_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True, poly2mask=True),
        dict(type="RandomResize", scale=(1333, 800), ratio_range=tuple(recipe.resize), keep_ratio=True),
        dict(type="RandomCrop", crop_size=(recipe.crop, recipe.crop), recompute_bbox=True, allow_negative_crop=False),
        dict(type="FilterAnnotations", min_gt_bbox_wh=(2, 2), by_mask=True),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PackDetInputs"),
    ]
    cfg.train_dataloader = dict(
        batch_size=recipe.batch, num_workers=0, persistent_workers=False,
        sampler=dict(type="SeededSampler", seed=recipe.seed),
        dataset=dict(type="CocoDataset", data_root="", ann_file=str(ann_file),
                     data_prefix=dict(img=str(image_dir(ann_file)) + "/"), metainfo=dict(classes=CLASSES),
                     filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=cfg.train_pipeline,
                     backend_args=None))
    cfg.train_cfg = dict(type="ResumableLoop", max_iters=recipe.iters, val_interval=10**9)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=recipe.lr,
                                                                 weight_decay=recipe.weight_decay),
                             clip_grad=dict(max_norm=recipe.clip, norm_type=2),
                             paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
    warm = min(recipe.warmup, recipe.iters - 1)
    cfg.param_scheduler = [  # mmengine chains them: the cosine starts from the lr the warm-up left
        *([dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=warm)] if warm > 0 else []),
        dict(type="CosineAnnealingLR", by_epoch=False, begin=warm, end=recipe.iters, T_max=recipe.iters - warm,
             eta_min=recipe.lr * recipe.final_lr),
    ]
    cfg.default_hooks = dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=recipe.log_every),
        param_scheduler=dict(type="ParamSchedulerHook"),
        checkpoint=dict(type="CheckpointHook", interval=recipe.checkpoint_every, by_epoch=False, max_keep_ckpts=1,
                        save_last=True),
        sampler_seed=dict(type="DistSamplerSeedHook"),
    )
    cfg.custom_hooks = [dict(type="AutocastHook")] if recipe.autocast and cpu_has_bf16() else []
    cfg.log_processor = dict(type="LogProcessor", window_size=10, by_epoch=False)
    cfg.visualizer = dict(type="DetLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")], name="visualizer")
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                       dist_cfg=dict(backend="gloo"))
    cfg.randomness = dict(seed=recipe.seed)
    cfg.work_dir = str(work_dir)
    cfg.load_from = None
    cfg.resume = True
    cfg.launcher = "none"
    return cfg


def train(recipe: Recipe = Recipe(), ann_file: str | os.PathLike | None = None,
          work_dir: str | os.PathLike | None = None, until: int | None = None) -> Path:
    """Train (or resume) to ``recipe.iters``, or stop after iteration ``until``; return the work folder."""
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    from . import synth

    register_all_modules()
    _register()
    count(recipe.iters, "iterations")
    ann = Path(ann_file) if ann_file else synth.generate("train")
    if not ann.is_file():
        raise InputError(f"annotation file not found: {ann}")
    work = Path(work_dir) if work_dir else work_root() / "mask-rcnn"
    work.mkdir(parents=True, exist_ok=True)
    cfg = config(recipe, ann, work)
    if until is not None:
        cfg.train_cfg["max_iters"] = min(recipe.iters, int(until))  # the scheduler keeps the recipe's length
    if recipe.init and not (work / "last_checkpoint").is_file():  # a new stage from saved weights
        from . import weights

        torch.save({"state_dict": weights.load_state(recipe.init)}, work / "init.pth")
        keep_earlier_stages(Path(recipe.init), work)
        cfg.load_from, cfg.resume = str(work / "init.pth"), False
    (work / "recipe.json").write_text(json.dumps(asdict(recipe), indent=1))
    runner = Runner.from_cfg(cfg)
    with _own_state_loads():
        runner.train()
    return work


def keep_earlier_stages(init: Path, work: Path) -> None:
    """Copy the starting weights' record and learning curve into the work folder, so that the export of this
    stage reports every stage even after it has overwritten the file it started from."""
    from . import weights

    rec = weights.read_record(init)
    (work / "earlier_record.json").write_text(json.dumps(rec, indent=1))
    curve = init.with_name(init.stem + "_curve.csv")
    if curve.is_file():
        (work / "earlier_curve.csv").write_text(curve.read_text())


def stages(work: Path, recipe: Recipe, iterations: int, seconds: float, curve):
    """This stage joined to the stages its starting weights came from: the per-stage list, the totals, and the
    learning curve with iterations counted from the first stage's start (``stage`` column: 1, 2, ...)."""
    import pandas as pd

    this = dict(recipe=asdict(recipe), iterations=iterations, seconds_in_loop=seconds)
    earlier = work / "earlier_record.json"
    if not (recipe.init and earlier.is_file()):
        return [this], curve.assign(stage=1)
    rec = json.loads(earlier.read_text())
    before = rec.get("stages") or [dict(recipe=rec["recipe"], iterations=rec["iterations"],
                                        seconds_in_loop=rec["seconds_in_loop"])]
    old = pd.read_csv(work / "earlier_curve.csv") if (work / "earlier_curve.csv").is_file() else curve.iloc[:0]
    if "stage" not in old:
        old = old.assign(stage=1)
    offset = sum(s["iterations"] for s in before)
    new = curve.assign(iter=curve["iter"] + offset, stage=len(before) + 1)
    return [*before, this], pd.concat([old, new], ignore_index=True)


@contextlib.contextmanager
def _own_state_loads() -> Iterator[None]:
    """mmengine's resume unpickles its own saved state (a HistoryBuffer, numpy scalars), which torch's default
    ``weights_only`` load refuses; the file is this training's own, written in the work folder."""
    load = torch.load
    torch.load = functools.partial(load, weights_only=False)
    try:
        yield
    finally:
        torch.load = load


def last_checkpoint(work_dir: str | os.PathLike) -> Path:
    p = Path(work_dir) / "last_checkpoint"
    if not p.is_file():
        raise InputError(f"no training state in {work_dir} (no last_checkpoint): train first")
    return Path(p.read_text().strip())


def trained_model(work_dir: str | os.PathLike):
    """The model as the last save left it (eval mode, fp32), built from the study's config."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import MODELS

    from .models import load_config

    register_all_modules()
    cfg = load_config(CONFIG)
    model = MODELS.build(cfg.model)
    state = torch.load(last_checkpoint(work_dir), map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=True)
    model.cfg = cfg
    return model.eval()


@torch.no_grad()
def reestimate_bn(model, recipe: Recipe, ann_file: Path, images: int | None = None) -> int:
    """BatchNorm running statistics as the cumulative average over train crops (the training pipeline, fp32):
    training's running averages trail weights that kept moving; these are the final weights' own."""
    from mmengine.dataset import Compose
    from mmdet.utils import register_all_modules

    from .models import batch_norms

    register_all_modules()
    _register()
    cfg = config(recipe, ann_file, Path("/nonexistent"))
    from mmdet.registry import DATASETS
    ds = DATASETS.build(copy.deepcopy(cfg.train_dataloader["dataset"]))
    n = images or recipe.bn_images
    bns = batch_norms(model)
    saved = [(bn.training, bn.momentum) for bn in bns]
    state = np.random.get_state()
    np.random.seed(recipe.seed + 1)
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for k, idx in zip(range(n), order(len(ds), recipe.seed + 1)):
            item = ds[idx]
            data = model.data_preprocessor({"inputs": [item["inputs"]], "data_samples": [item["data_samples"]]}, False)
            model.backbone(data["inputs"])
    finally:
        np.random.set_state(state)
        for bn, (training, momentum) in zip(bns, saved):
            bn.train(training)
            bn.momentum = momentum
    return n


def learning_curve(work_dir: str | os.PathLike):
    """Every logged iteration of every run in ``work_dir`` (resumed runs append), last log of an iteration wins."""
    import pandas as pd

    rows = []
    for f in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        for line in f.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    if not rows:
        raise InputError(f"no training log in {work_dir}")
    df = pd.DataFrame(rows)
    keep = [c for c in ("iter", "lr", "time", "data_time", "loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
                        "acc", "loss_bbox", "loss_mask", "grad_norm") if c in df]
    return df[keep].drop_duplicates("iter", keep="last").sort_values("iter").reset_index(drop=True)


def export(work_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
           recipe: Recipe | None = None, bn_images: int | None = None) -> dict:
    """Write the last save's weights, BatchNorm re-estimated, as the repository's safetensors file with its
    record (recipe, iterations, time in the loop) and the learning curve beside it."""
    import time

    from . import synth, weights
    from .cpu import cpu_identity

    work = Path(work_dir) if work_dir else work_root() / "mask-rcnn"
    if recipe is None:
        saved = work / "recipe.json"
        recipe = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(saved.read_text()).items()}) \
            if saved.is_file() else Recipe()
    model = trained_model(work)
    t = time.perf_counter()
    n = reestimate_bn(model, recipe, synth.generate("train"), images=bn_images or Recipe().bn_images)
    bn_s = time.perf_counter() - t
    done = int(torch.load(last_checkpoint(work), map_location="cpu", weights_only=False)["meta"]["iter"])
    curve = learning_curve(work)
    curve = curve[curve["iter"] <= done]  # a run stopped after its last save logged iterations it lost
    seconds = round(float(curve["time"].sum() * (curve["iter"].diff().fillna(curve["iter"].iloc[0]).mean())), 1)
    done_stages, curve = stages(work, recipe, done, seconds, curve)
    path = Path(out) if out else weights.default_path()
    rec = weights.save(model, path, dict(
        config=CONFIG, classes=list(synth.CLASSES), recipe=asdict(recipe),
        iterations=sum(s["iterations"] for s in done_stages),
        seconds_in_loop=round(sum(s["seconds_in_loop"] for s in done_stages), 1), stages=done_stages,
        bn_reestimated_on=n, bn_seconds=round(bn_s, 1), data=f"synth v{synth.VERSION}, seed 0, train split",
        machine=cpu_identity()))
    curve.to_csv(path.with_name(path.stem + "_curve.csv"), index=False)
    return dict(rec, path=str(path))
