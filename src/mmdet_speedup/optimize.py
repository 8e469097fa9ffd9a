"""The one-call API: ``optimize(model, ...)`` binds stage choices and checks them against the stock model."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from .choices import STOCK, Choices
from .equivalence import compare, match, relative_error
from .models import check_two_stage
from .pipeline import Detections, ImageLike, StagedPipeline, load_image
from .timing import resolve_device


class Predictor:
    """A stock mmdet model with stage choices bound; ``predict`` runs them, ``equivalence_report`` checks them.

    ``reference`` is what equivalence is measured against: a pipeline, or choices for one on ``model``
    (default: ``STOCK``, mmdet 3.3's path). A pipeline lets the reference be another model, e.g. the stock
    workload when the predictor's model keeps fewer proposals.
    """

    def __init__(self, model, choices: Choices = Choices.auto(), device: str | torch.device = "auto", *,
                 reference: StagedPipeline | Choices = STOCK) -> None:
        check_two_stage(model)
        self.device = resolve_device(device)
        self.pipeline = StagedPipeline(model, choices, self.device)
        self.choices = self.pipeline.choices
        self.reference = reference if isinstance(reference, StagedPipeline) else \
            StagedPipeline(model, reference, self.device)

    def __repr__(self) -> str:
        return f"Predictor({self.choices.label()}, device={self.device})"

    def __call__(self, image: ImageLike) -> Detections:
        return self.pipeline(image)

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[Detections]:
        if isinstance(images, (str, bytes, np.ndarray)) or not isinstance(images, Iterable):
            images = [images]
        return [self.pipeline(im) for im in images]

    def features(self, image: ImageLike) -> tuple[tuple, tuple]:
        """Backbone(+neck) maps of the reference and of this predictor on the same (reference) model input."""
        inputs, _ = self.reference.prepare(image)
        return self.reference.features(inputs).maps, self.pipeline.features(inputs).maps

    def equivalence_report(self, images: Sequence[ImageLike]) -> pd.DataFrame:
        """One row per image: agreement with the reference, plus soft figures (features, mask probabilities)."""
        rows = []
        names = [getattr(i, "name", None) or (str(i) if isinstance(i, str) else f"image{k}")
                 for k, i in enumerate(images)]
        for name, image in zip(names, images):
            img = load_image(image)
            ref, test = self.reference(img), self.pipeline(img)
            row = {"image": name, "variant": self.choices.label(), **compare(ref, test).as_dict(),
                   "feature_rel_err": relative_error(*self.features(img))}
            if self.pipeline.with_mask and self.reference.with_mask:
                row["mask_prob_diff_max"] = self._prob_diff(img, ref, test)
            rows.append(row)
        return pd.DataFrame(rows)

    def coco_report(self, ann_file, img_dir, max_images: int | None = None) -> pd.DataFrame:
        """Box and mask AP of the reference and of this predictor (needs a real checkpoint to mean anything)."""
        from .coco import evaluate

        return pd.DataFrame([{"variant": "reference", **evaluate(self.reference, ann_file, img_dir, max_images)},
                             {"variant": self.choices.label(),
                              **evaluate(self.pipeline, ann_file, img_dir, max_images)}])

    def _prob_diff(self, img, ref: Detections, test: Detections) -> float:
        """Max mask-probability difference over matched pairs (soft: before the 0.5 threshold)."""
        pairs = match(ref, test)
        if not pairs:
            return float("nan")
        raw_ref, raw_test = (p.postprocess_masks(p.mask_inputs(img), variant="raw")[1]
                             for p in (self.reference, self.pipeline))
        return float(max((raw_ref.probs[i] - raw_test.probs[j]).abs().max() for i, j, _ in pairs))


def optimize(model, *, preprocess: str = "auto", precision: str = "auto", masks: str = "auto",
             channels_last: bool | str = "auto", fold_bn: bool | str = "auto", roi_align: str = "auto",
             compile: bool | str = "auto", runtime: str = "auto", device: str = "auto") -> Predictor:
    """Bind the optimizations to a stock mmdet 3.x two-stage detector in one call.

    Every choice defaults to "auto", decided by ``Choices.resolve`` for the device and model (see there);
    ``preprocess`` and ``runtime`` ("torch", "openvino" or "onnxruntime" for backbone, neck and RPN head) are
    measured on the first image of each input shape. The stock model is left untouched.
    """
    choices = Choices(preprocess, precision, channels_last, fold_bn, masks, roi_align, compile, runtime)
    return Predictor(model, choices, device)
