"""NMS workbench: seeded synthetic boxes with known objects, interchangeable NMS implementations,
and a timing sweep that writes tidy rows (chapter 04 reads its fits and the C4-versus-FPN summaries off them in
``study.nms``).

Every implementation has the signature ``(boxes, scores, idxs, iou_threshold) -> keep`` where ``keep``
is an int64 index tensor sorted by decreasing score. ``idxs`` are class (or FPN level) indices; the
class-agnostic ones (``torchvision``, ``mmcv``) ignore them.

Strategies worth knowing (read from the installed sources):

* ``torchvision.ops.batched_nms`` uses the offset trick (one NMS call) up to ``boxes.numel()`` 4000 on
  the CPU (1000 boxes) or 100_000 on a GPU (25_000 boxes), and a per-class loop above that.
* ``mmcv.ops.batched_nms`` always offsets the boxes, then makes one NMS call when there are fewer than
  ``split_thr`` boxes (``nms_cfg['split_thr']``, default 10000); from ``split_thr`` boxes on it loops over
  ``torch.unique(idxs)``, one NMS per index on the (still offset) boxes, gathers the survivors into a
  mask and re-sorts them by score (honouring ``max_num`` in ``nms_cfg`` only on that path).
  mmdet's FPN RPN calls it with one level index per box over at most ``nms_pre`` per level (1000 x 5
  levels at test time), so it stays on the one-call path; the R-CNN head's multi-class NMS can cross it.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torchvision
from torch import Tensor

from mmdet_speedup import stages as S
from mmdet_speedup.environment import git_sha
from mmdet_speedup.records import BENCHMARK_VERSION, append_rows, new_run_id
from mmdet_speedup.timing import benchmark, resolve_device

NmsFn = Callable[[Tensor, Tensor, Tensor, float], Tensor]

NMS_COLUMNS: tuple[str, ...] = (
    "run_id", "timestamp", "git_sha", "benchmark_version", "device", "implementation", "box_set", "n",
    "num_classes", "iou_threshold", "repeat", "ms", "kept", "status", "message", "threads",
)


# --------------------------------------------------------------------------- box generators

@dataclass
class BoxSet:
    """``n`` boxes, each a jittered copy of one of the known ``objects`` (``object_of[i]`` says which)."""

    boxes: Tensor       # [n, 4] float32 xyxy
    scores: Tensor      # [n] float32 in [0, 1]
    labels: Tensor      # [n] int64 in [0, num_classes)
    objects: Tensor     # [num_objects, 4] float32 xyxy
    object_of: Tensor   # [n] int64 in [0, num_objects)

    def __len__(self) -> int:
        return self.boxes.shape[0]


def _generator(seed: int) -> torch.Generator:
    # Drawn on the CPU then moved, so a seed gives the same boxes on every device.
    return torch.Generator().manual_seed(seed)


def _distinct(raw: Tensor) -> Tensor:
    """Ranks of ``raw`` scaled to [0, 1): same order, no ties.

    float32 draws tie at a few thousand boxes, and tied scores make the kept order kernel-dependent;
    NMS and top-k only read the order, so nothing else is lost.
    """
    ranks = torch.empty(raw.shape[0], dtype=torch.int64)
    ranks[raw.argsort()] = torch.arange(raw.shape[0])
    return ranks.float() / max(raw.shape[0], 1)


def _random_boxes(n: int, image_size: tuple[int, int], min_size: float, max_size: float,
                  g: torch.Generator) -> Tensor:
    w_img, h_img = image_size
    # Log-uniform sizes: detectors see objects over orders of magnitude of scale.
    lo, hi = math.log(min_size), math.log(max_size)
    wh = torch.exp(lo + (hi - lo) * torch.rand(n, 2, generator=g))
    wh = torch.minimum(wh, torch.tensor([w_img - 1.0, h_img - 1.0]))
    # Placing the corner in [0, size - wh] keeps every box inside the image without clipping.
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([float(w_img), float(h_img)]) - wh)
    return torch.cat([xy, xy + wh], dim=1)


def uniform_boxes(n: int, *, image_size: tuple[int, int] = (1333, 800), seed: int = 0,
                  device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """``n`` boxes at uniform positions, log-uniform sizes (8 px to half the image), distinct uniform scores."""
    g = _generator(seed)
    boxes = _random_boxes(n, image_size, 8.0, max(image_size) / 2, g)
    scores = _distinct(torch.rand(n, generator=g))
    return boxes.to(device), scores.to(device)


def random_idxs(n: int, num_classes: int, *, seed: int = 0, device: str | torch.device = "cpu") -> Tensor:
    """Seeded class / level indices, independent of position, so boxes of different indices overlap."""
    g = _generator(seed + 1)
    return torch.randint(num_classes, (n,), generator=g).to(device)


def clustered_boxes(n: int, *, num_objects: int = 20, image_size: tuple[int, int] = (1333, 800),
                    jitter: float = 0.1, seed: int = 0, device: str | torch.device = "cpu",
                    num_classes: int = 1) -> BoxSet:
    """``n`` boxes clustered on ``num_objects`` known objects, RPN-like: tighter copies score higher.

    Objects are used round-robin, so with ``n >= num_objects`` each has ``n // num_objects`` copies or one
    more, and its first copy is near-exact (IoU > 0.88): with no NMS every object is recalled. Every other
    copy's corners move by ``jitter * U(0, 1) * N(0, 1)`` (clamped to 3 sigma) times the object's size; its
    score ranks by its IoU with the object plus noise. Labels are drawn per box, independently of the
    object, like FPN level ids.
    """
    if num_objects < 1 or num_classes < 1:
        raise ValueError("num_objects and num_classes must be >= 1")
    w_img, h_img = image_size
    g = _generator(seed)
    objects = _random_boxes(num_objects, image_size, 32.0, min(image_size) / 2, g)
    perm = torch.randperm(n, generator=g)
    object_of = perm % num_objects
    looseness = torch.rand(n, generator=g)
    # perm < num_objects picks exactly one copy per object: the tight copy that guarantees recall.
    first = perm < num_objects
    # Corners of the tight copy move at most 1.5% of the object's size whatever the jitter: IoU > 0.88.
    scale = torch.where(first, torch.full_like(looseness, 0.005), jitter * looseness)

    src = objects[object_of]
    size = (src[:, 2:] - src[:, :2]).repeat(1, 2)
    noise = torch.randn(n, 4, generator=g).clamp(-3.0, 3.0)
    boxes = src + scale[:, None] * noise * size
    x1, y1, x2, y2 = boxes.unbind(1)
    x1, x2 = torch.minimum(x1, x2).clamp(0, w_img - 1), torch.maximum(x1, x2).clamp(max=w_img)
    y1, y2 = torch.minimum(y1, y2).clamp(0, h_img - 1), torch.maximum(y1, y2).clamp(max=h_img)
    # At least one pixel wide and tall, so every box is valid (x2 > x1) for every NMS kernel.
    boxes = torch.stack([x1, y1, torch.maximum(x2, x1 + 1), torch.maximum(y2, y1 + 1)], dim=1)

    iou = torchvision.ops.box_iou(boxes, objects).gather(1, object_of[:, None]).squeeze(1) if n else boxes[:, 0]
    scores = _distinct(10.0 * (iou - 0.6) + 0.2 * torch.randn(n, generator=g))
    labels = torch.randint(num_classes, (n,), generator=g)
    return BoxSet(boxes.to(device), scores.to(device), labels.to(device), objects.to(device),
                  object_of.to(device))


# --------------------------------------------------------------------------- implementations

def nms_torchvision(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return torchvision.ops.nms(boxes, scores, iou_threshold)


def nms_torchvision_batched(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)


def nms_mmcv(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    from mmcv.ops import nms  # imported here so the workbench loads where mmcv's ops are not built

    return nms(boxes, scores, float(iou_threshold))[1]


def nms_mmcv_batched(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *,
                     split_thr: int | None = None) -> Tensor:
    from mmcv.ops import batched_nms

    cfg: dict = dict(type="nms", iou_threshold=float(iou_threshold))
    if split_thr is not None:
        cfg["split_thr"] = split_thr
    return batched_nms(boxes, scores, idxs, cfg)[1]


def nms_offset(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *,
               nms: Callable[[Tensor, Tensor, float], Tensor] = torchvision.ops.nms) -> Tensor:
    """One NMS call: shifting each index's boxes past the largest coordinate makes indices never overlap."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def nms_per_class(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *,
                  nms: Callable[[Tensor, Tensor, float], Tensor] = torchvision.ops.nms) -> Tensor:
    """One NMS call per index: C small O(n_c^2) problems instead of one O(n^2), at C calls' overhead."""
    keep = [mask[nms(boxes[mask], scores[mask], iou_threshold)]
            for mask in ((idxs == c).nonzero().view(-1) for c in torch.unique(idxs))]
    if not keep:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    keep_all = torch.cat(keep)
    return keep_all[scores[keep_all].argsort(descending=True)]


IMPLEMENTATIONS: dict[str, NmsFn] = {
    "torchvision": nms_torchvision,
    "torchvision_batched": nms_torchvision_batched,
    "mmcv": nms_mmcv,
    "mmcv_batched": nms_mmcv_batched,
    "offset": nms_offset,
    "per_class": nms_per_class,
}
#: These ignore ``idxs``: with ``num_classes > 1`` they solve a different (harder) problem.
CLASS_AGNOSTIC = frozenset({"torchvision", "mmcv"})


# --------------------------------------------------------------------------- recall

def recall(box_set: BoxSet, keep: Tensor, iou: float = 0.5) -> float:
    """Fraction of the known objects matched (IoU >= ``iou``) by at least one kept box."""
    kept = box_set.boxes[keep]
    if kept.numel() == 0 or box_set.objects.numel() == 0:
        return 0.0
    best = torchvision.ops.box_iou(box_set.objects, kept).max(dim=1).values
    return int((best >= iou).sum()) / len(best)


def topk_recall(box_set: BoxSet, k: int, iou_threshold: float, *, iou: float = 0.5,
                implementation: str = "torchvision_batched") -> float:
    """Recall after keeping the top-``k`` by score, then NMS: what a smaller pre-NMS N costs."""
    top = box_set.scores.argsort(descending=True)[:k]
    nms = IMPLEMENTATIONS[implementation]
    keep = top[nms(box_set.boxes[top], box_set.scores[top], box_set.labels[top], iou_threshold)]
    return recall(box_set, keep, iou)


# --------------------------------------------------------------------------- sweep

def _make_input(box_set: str, n: int, seed: int, device: torch.device,
                num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    if box_set == "uniform":
        boxes, scores = uniform_boxes(n, seed=seed, device=device)
        return boxes, scores, random_idxs(n, num_classes, seed=seed, device=device)
    if box_set == "clustered":
        bs = clustered_boxes(n, seed=seed, device=device, num_classes=num_classes)
        return bs.boxes, bs.scores, bs.labels
    raise ValueError(f"unknown box_set {box_set!r}: expected 'uniform' or 'clustered'")


def sweep(ns: Iterable[int], implementations: Iterable[str] | Mapping[str, NmsFn],
          iou_thresholds: Iterable[float], box_sets: Iterable[str] = ("uniform", "clustered"), *,
          repeats: int = 5, warmup: int = 1, device: str | torch.device = "auto", seed: int = 0,
          out_csv: str | None = None, run_id: str | None = None, num_classes: int = 1) -> list[dict]:
    """Time every implementation on every (box_set, n, iou_threshold): one row per repeat.

    Rows are appended to ``out_csv`` as each cell finishes, so an interrupted sweep keeps what it
    measured; an implementation that raises gives one ``status="error"`` row and the sweep goes on.
    """
    dev = resolve_device(device)
    impls = dict(implementations) if isinstance(implementations, Mapping) else \
        {name: IMPLEMENTATIONS[name] for name in implementations}
    iou_thresholds, ns = list(iou_thresholds), list(ns)
    base = {"run_id": run_id or new_run_id("nms-"), "git_sha": git_sha(),
            "benchmark_version": BENCHMARK_VERSION, "device": str(dev), "num_classes": num_classes,
            "threads": torch.get_num_threads()}
    rows: list[dict] = []
    for box_set in box_sets:
        for n in ns:
            boxes, scores, idxs = _make_input(box_set, n, seed, dev, num_classes)
            for thr in iou_thresholds:
                for name, fn in impls.items():
                    cell = {**base, "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
                            "implementation": name, "box_set": box_set, "n": n, "iou_threshold": thr}
                    note = "class-agnostic: ignores idxs" if name in CLASS_AGNOSTIC and num_classes > 1 else ""
                    try:
                        kept = int(fn(boxes, scores, idxs, thr).numel())
                        times = benchmark(lambda: fn(boxes, scores, idxs, thr), warmup=warmup,
                                          repeats=repeats, device=dev)
                        new = [{**cell, "repeat": i, "ms": t, "kept": kept, "status": "ok", "message": note}
                               for i, t in enumerate(times)]
                    except Exception as e:  # noqa: BLE001 - a broken kernel is a result, not a crash
                        new = [{**cell, "repeat": -1, "ms": float("nan"), "kept": -1, "status": "error",
                                "message": f"{type(e).__name__}: {e}"[:500]}]
                    rows.extend(new)
                    if out_csv is not None:
                        append_rows(out_csv, new, NMS_COLUMNS)
    return rows


def recall_table(ks: Iterable[int], *, n: int = 12000, num_objects: int = 60, iou_threshold: float = 0.7,
                 seed: int = 0) -> pd.DataFrame:
    """``topk_recall`` for each (distinct) k on one seeded set of ``n`` clustered boxes: columns ``k``, ``recall``."""
    box_set = clustered_boxes(n, num_objects=num_objects, seed=seed)
    ks = sorted({int(k) for k in ks})
    return pd.DataFrame({"k": ks, "recall": [topk_recall(box_set, k, iou_threshold) for k in ks]})
