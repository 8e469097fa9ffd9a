"""The one-call API: ``optimize(model, ...)`` binds stage choices and checks them against the stock model."""
from __future__ import annotations

import hashlib
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .choices import STOCK, Choices
from .equivalence import compare, match, relative_error
from .models import check_two_stage
from .pipeline import Detections, ImageLike, StagedPipeline, load_image
from .timing import resolve_device


class ReferenceOutputs(NamedTuple):
    detections: Detections
    maps: tuple  # backbone(+neck) maps on the reference's own model input
    probs: Tensor | None  # raw mask probabilities, before the 0.5 threshold; None without a mask head
    inputs: Tensor  # that model input: a row's maps are compared on it


class Reference:
    """The pipeline rows are checked against, run once per image however many rows share it: an agreement
    check of every rung of a ladder against ``stock`` ran ``stock`` once per rung (at 3840x2304 that was most of
    the ladder chapter's agreement time). Memoizes by image content, so only share it across rows whose
    reference is the same model and choices."""

    def __init__(self, pipeline: StagedPipeline) -> None:
        self.pipeline = pipeline
        self._memo: dict[tuple, ReferenceOutputs] = {}

    @classmethod
    def of(cls, model, choices: Choices = STOCK, device: str | torch.device = "auto") -> "Reference":
        return cls(StagedPipeline(model, choices, resolve_device(device)))

    def __repr__(self) -> str:
        return f"Reference({self.pipeline.choices.label()})"

    @property
    def with_mask(self) -> bool:
        return self.pipeline.with_mask

    def prepare(self, img: np.ndarray):
        return self.pipeline.prepare(img)

    def outputs(self, img: np.ndarray) -> ReferenceOutputs:
        key = (img.shape, str(img.dtype), hashlib.blake2b(np.ascontiguousarray(img).data, digest_size=16).digest())
        if key not in self._memo:
            inputs, samples = self.pipeline.prepare(img)
            detections, feats, probs = self.pipeline.check_outputs(inputs, samples)
            self._memo[key] = ReferenceOutputs(detections, feats.maps, probs, inputs)
        return self._memo[key]


class Predictor:
    """A stock mmdet model with stage choices bound; ``predict`` runs them, ``equivalence_report`` checks them.

    ``reference`` is what equivalence is measured against: a ``Reference`` (shared by rows checked against
    the same pipeline), a pipeline, or choices for one on ``model`` (default: ``STOCK``, mmdet 3.3's path). A
    pipeline lets the reference be another model, e.g. the stock workload when the predictor's model keeps fewer
    proposals.
    """

    def __init__(self, model, choices: Choices = Choices.auto(), device: str | torch.device = "auto", *,
                 reference: Reference | StagedPipeline | Choices = STOCK) -> None:
        check_two_stage(model)
        self.device = resolve_device(device)
        self.pipeline = StagedPipeline(model, choices, self.device)
        self.choices = self.pipeline.choices
        if isinstance(reference, Choices):
            reference = StagedPipeline(model, reference, self.device)
        self.reference = reference if isinstance(reference, Reference) else Reference(reference)

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
        img = load_image(image)
        inputs, _ = self.reference.prepare(img)
        return self.reference.outputs(img).maps, self.pipeline.features(inputs).maps

    def equivalence_report(self, images: Sequence[ImageLike], min_score: float = 0.0) -> pd.DataFrame:
        """One row per image: agreement with the reference over detections scoring at least ``min_score``
        (``equivalence.compare``), plus soft figures (features, mask probabilities)."""
        rows = []
        names = [getattr(i, "name", None) or (str(i) if isinstance(i, str) else f"image{k}")
                 for k, i in enumerate(images)]
        for name, image in zip(names, images):
            img = load_image(image)
            ref = self.reference.outputs(img)
            inputs, samples = self.pipeline.prepare(img)
            test, feats, probs = self.pipeline.check_outputs(inputs, samples)
            # maps are compared on the reference's input; a row that prepares the same input already has them
            same_input = inputs.shape == ref.inputs.shape and inputs.dtype == ref.inputs.dtype and \
                bool(torch.equal(inputs, ref.inputs.to(inputs.device)))
            maps = feats.maps if same_input else self.pipeline.features(ref.inputs).maps
            agree = compare(ref.detections, test, min_score=min_score).as_dict()
            row = {"image": name, "variant": self.choices.label(), **agree,
                   "feature_rel_err": relative_error(ref.maps, maps)}
            if probs is not None and ref.probs is not None:
                row["mask_prob_diff_max"] = _prob_diff(ref, test, probs)
            rows.append(row)
        return pd.DataFrame(rows)

    def coco_report(self, ann_file, img_dir, max_images: int | None = None) -> pd.DataFrame:
        """Box and mask AP of the reference and of this predictor (needs a real checkpoint to mean anything)."""
        from .coco import evaluate

        return pd.DataFrame([{"variant": "reference",
                              **evaluate(self.reference.pipeline, ann_file, img_dir, max_images)},
                             {"variant": self.choices.label(),
                              **evaluate(self.pipeline, ann_file, img_dir, max_images)}])

def _prob_diff(ref: ReferenceOutputs, test: Detections, probs: Tensor) -> float:
    """Max mask-probability difference over matched pairs (soft: before the 0.5 threshold)."""
    pairs = match(ref.detections, test)
    if not pairs:
        return float("nan")
    return float(max((ref.probs[i] - probs[j]).abs().max() for i, j, _ in pairs))


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
