"""The one-call API: ``optimize(model, ...)`` binds stage choices and checks them against the stock model."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from .equivalence import compare, relative_error
from .masks import RawMasks
from .models import check_two_stage, clone
from .pipeline import STOCK, Choices, Detections, ImageLike, StagedPipeline, load_image
from .records import cpu_has_bf16
from .timing import resolve_device


def default_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


class Predictor:
    """A stock mmdet model with stage choices bound; ``predict`` runs them, ``equivalence_report`` checks them."""

    def __init__(self, model, choices: Choices, device: str | torch.device = "auto") -> None:
        check_two_stage(model)
        self.device = resolve_device(device)
        self.stock_model = model
        self.choices = choices
        self.pipeline = StagedPipeline(clone(model) if choices.changes_model() else model, choices, self.device)
        self._stock: StagedPipeline | None = None

    def __repr__(self) -> str:
        return f"Predictor({self.choices.label()}, device={self.device})"

    def __call__(self, image: ImageLike) -> Detections:
        return self.pipeline(image)

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[Detections]:
        if isinstance(images, (str, bytes, np.ndarray)) or not isinstance(images, Iterable):
            images = [images]
        return [self.pipeline(im) for im in images]

    def stock(self, masks: str = "full") -> StagedPipeline:
        if self._stock is None or self._stock.choices.masks != masks:
            self._stock = StagedPipeline(self.stock_model, STOCK.replace(masks=masks), self.device)
        return self._stock

    @torch.no_grad()
    def features(self, image: ImageLike) -> tuple[tuple, tuple]:
        """Backbone(+neck) features of the stock and the optimized model on the same stock-preprocessed input."""
        img = load_image(image)
        inputs, _ = self.stock().pre(img)
        ref = self.stock_model.extract_feat(inputs)
        p = self.pipeline
        with p.precision.autocast():
            test = p.model.extract_feat(p.precision.input(inputs, self.choices.channels_last))
        return ref, test

    def equivalence_report(self, images: Sequence[ImageLike]) -> pd.DataFrame:
        """One row per image: agreement with the stock model (mmdet 3.3's path), plus soft figures."""
        rows = []
        names = [getattr(i, "name", None) or (str(i) if isinstance(i, str) else f"image{k}")
                 for k, i in enumerate(images)]
        for name, image in zip(names, images):
            img = load_image(image)
            ref, test = self.stock()(img), self.pipeline(img)
            row = {"image": name, "variant": self.choices.label(), **compare(ref, test).as_dict()}
            f_ref, f_test = self.features(img)
            row["feature_rel_err"] = relative_error(f_ref, f_test)
            if isinstance(test.masks, RawMasks) or self.pipeline.with_mask:
                row["mask_prob_diff_max"] = self._prob_diff(img, ref, test)
            rows.append(row)
        return pd.DataFrame(rows)

    def coco_report(self, ann_file, img_dir, max_images: int | None = None) -> pd.DataFrame:
        """Box and mask AP of the stock model and of this predictor (needs a real checkpoint to mean anything)."""
        from .coco import evaluate

        rows = [{"variant": "stock", **evaluate(self, ann_file, img_dir, max_images, stock=True)},
                {"variant": self.choices.label(), **evaluate(self, ann_file, img_dir, max_images)}]
        return pd.DataFrame(rows)

    def _prob_diff(self, img, ref: Detections, test: Detections) -> float:
        """Max mask-probability difference over matched pairs (soft: before the 0.5 threshold)."""
        from .equivalence import match

        raw_ref = self.stock("raw")(img).masks
        raw_test = test.masks if isinstance(test.masks, RawMasks) else \
            StagedPipeline(self.pipeline.model, self.choices.replace(masks="raw"), self.device)(img).masks
        if raw_ref is None or raw_test is None:
            return float("nan")
        pairs = match(ref, test)
        if not pairs:
            return float("nan")
        return float(max((raw_ref.probs[i] - raw_test.probs[j]).abs().max() for i, j, _ in pairs))


def optimize(model, *, preprocess: str = "auto", precision: str = "auto", masks: str | None = None,
             channels_last: bool | None = None, fold_bn: bool = False, roi_align: str = "auto",
             compile: bool = False, device: str = "auto") -> Predictor:
    """Bind the optimizations to a stock mmdet 3.x two-stage detector in one call.

    ``precision="auto"`` picks fp16 on CUDA, bf16 on a CPU with bf16 matrix instructions, fp32 otherwise;
    ``channels_last`` defaults to on with reduced precision; ``masks`` to ``raw`` where the model has a mask
    head; ``roi_align`` to torchvision's kernel on the CPU (faster there, same output). The stock model is
    left untouched.
    """
    check_two_stage(model)
    dev = resolve_device(device)
    if precision == "auto":
        precision = default_precision(dev)
    if channels_last is None:
        channels_last = precision != "fp32"
    if masks is None:
        masks = "raw" if getattr(model.roi_head, "with_mask", False) else "full"
    if roi_align == "auto":
        roi_align = "mmcv" if dev.type == "cuda" else "threaded"
    return Predictor(model, Choices(preprocess, precision, bool(channels_last), bool(fold_bn), masks, roi_align,
                                       bool(compile)), dev)
