"""COCO AP from pycocotools' per-image matches, re-accumulated in numpy, and delta AP with a paired bootstrap.

pycocotools evaluates each image once (``COCOeval.evaluate``); AP is then an accumulation over images. Doing
that accumulation here, on any multiset of images, makes a bootstrap over images cost milliseconds per
resample instead of a full evaluation, and gives the same AP as ``COCOeval.accumulate`` on the full set.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PerImage:
    """One IoU type's per-image evaluation at area "all" and the largest ``maxDets``: per (category, image) the
    detections' scores, whether each matched at each IoU threshold, whether it is ignored, and how many ground
    truths count (not ignored)."""

    iou_type: str
    image_ids: tuple[int, ...]
    cat_ids: tuple[int, ...]
    cells: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, int]]
    rec_thrs: np.ndarray
    n_thrs: int


def per_image(results: list[dict], ann_file: str | Path, iou_type: str = "bbox",
              img_ids: Sequence[int] | None = None) -> PerImage:
    """Evaluate every image of ``img_ids`` (default: all of ``ann_file``) once with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ids = sorted(gt.getImgIds() if img_ids is None else {int(i) for i in img_ids})
        if results:
            dt = gt.loadRes([dict(r) for r in results])  # loadRes writes into each dict: keep the caller's
        else:  # nothing detected: every object missed (loadRes refuses an empty list)
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = ids
        ev.evaluate()
    p = ev.params
    max_det, n_img, n_area = p.maxDets[-1], len(p.imgIds), len(p.areaRng)
    cells = {}
    for k in range(len(p.catIds)):
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0: "all"
            if e is None:
                continue
            cells[(k, i)] = (np.asarray(e["dtScores"][:max_det], dtype=float), e["dtMatches"][:, :max_det] > 0,
                             e["dtIgnore"][:, :max_det].astype(bool), int(np.count_nonzero(e["gtIgnore"] == 0)))
    return PerImage(iou_type, tuple(p.imgIds), tuple(p.catIds), cells, np.asarray(p.recThrs), len(p.iouThrs))


def _flat(ev: PerImage) -> list[tuple]:
    """Per category with ground truth somewhere: its detections over all images in ``COCOeval.accumulate``'s
    order (score descending, ties in image order), each one's image, matches and ignore flags, and the counted
    ground truths per image. Built once per evaluation; every resample reuses it."""
    flat = getattr(ev, "_flat_cache", None)
    if flat is not None:
        return flat
    n = len(ev.image_ids)
    flat = []
    for k in range(len(ev.cat_ids)):
        cells = [(i, ev.cells[(k, i)]) for i in range(n) if (k, i) in ev.cells]
        if not cells:
            continue
        npig = np.zeros(n)
        for i, c in cells:
            npig[i] = c[3]
        scores = np.concatenate([c[0] for _, c in cells])
        order = np.argsort(-scores, kind="mergesort")
        img = np.concatenate([np.full(len(c[0]), i) for i, c in cells])[order]
        dtm = np.concatenate([c[1] for _, c in cells], axis=1)[:, order]
        dtig = np.concatenate([c[2] for _, c in cells], axis=1)[:, order]
        flat.append((img, (dtm & ~dtig).astype(float), (~dtm & ~dtig).astype(float), npig))
    object.__setattr__(ev, "_flat_cache", flat)
    return flat


def ap(ev: PerImage, images: Sequence[int] | np.ndarray | None = None) -> float:
    """COCO AP@[.5:.95] over ``images`` (indices into ``ev.image_ids``, repeats allowed: a bootstrap sample;
    default every image once), accumulated as ``COCOeval.accumulate`` does: per category and IoU threshold the
    precision envelope at 101 recall points, averaged over those with ground truth; -1 where none has any."""
    n = len(ev.image_ids)
    weight = np.ones(n) if images is None else np.bincount(np.asarray(images, dtype=int), minlength=n)
    return float(ap_weighted(ev, weight[None].astype(float))[0])


def ap_weighted(ev: PerImage, weights: np.ndarray, chunk: int = 100) -> np.ndarray:
    """AP for each row of ``weights`` (samples x images, how often each image is drawn), all rows at once.

    An image drawn c times counts each of its detections and ground truths c times: its detections enter the
    cumulative sums with weight c, which gives the same envelope as c adjacent copies would."""
    out = []
    for at in range(0, len(weights), chunk):
        w_ = weights[at:at + chunk]
        total, count = np.zeros(len(w_)), np.zeros(len(w_))
        for img, tp_flag, fp_flag, npig_per_image in _flat(ev):
            npig = w_ @ npig_per_image  # (samples,)
            has = npig > 0
            count += has
            if not tp_flag.shape[1] or not has.any():
                continue
            w = w_[has][:, None, img]  # (samples, 1, detections)
            tp = np.cumsum(tp_flag * w, axis=2)
            fp = np.cumsum(fp_flag * w, axis=2)
            rc = tp / npig[has, None, None]
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[..., ::-1], axis=2)[..., ::-1]  # the precision envelope
            total[has] += _at_recalls(rc, pr, ev.rec_thrs).reshape(int(has.sum()), -1).sum(axis=1)
        size = ev.n_thrs * len(ev.rec_thrs)
        out.append(np.where(count > 0, total / np.maximum(count, 1) / size, -1.0))
    return np.concatenate(out) if out else np.zeros(0)


def _at_recalls(rc: np.ndarray, pr: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """The envelope's precision at each recall threshold for every (sample, IoU threshold) row: what
    ``searchsorted(rc_row, rec_thrs, "left")`` finds, as how many of the row's recalls lie below each threshold
    (one ``searchsorted`` into the thresholds for all rows, then a per-row histogram)."""
    rows, d, m = int(np.prod(rc.shape[:-1])), rc.shape[-1], len(rec_thrs)
    rc, pr = rc.reshape(rows, d), pr.reshape(rows, d)
    below = np.searchsorted(rec_thrs, rc, side="right")  # rc < rec_thrs[j] iff j >= below
    hist = np.bincount((below + (m + 1) * np.arange(rows)[:, None]).ravel(), minlength=rows * (m + 1))
    ins = np.cumsum(hist.reshape(rows, m + 1), axis=1)[:, :m]
    return np.where(ins < d, np.take_along_axis(pr, np.minimum(ins, d - 1), axis=1), 0.0)


@dataclass(frozen=True)
class Delta:
    """Test AP minus reference AP on the same images, with a paired bootstrap interval over images."""

    delta: float
    lo: float
    hi: float
    n_images: int
    ref_ap: float
    test_ap: float


def delta_ap(ref: PerImage, test: PerImage, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Delta:
    """``ap(test) - ap(ref)`` with a percentile interval from resampling images, the same images for both sides
    (paired: an image that is hard for one is hard for the other)."""
    if ref.image_ids != test.image_ids or ref.cat_ids != test.cat_ids:
        raise ValueError("delta AP needs both evaluations on the same images and categories")
    n = len(ref.image_ids)
    a, b = ap(ref), ap(test)
    if test is ref:  # one pass: the same detections, nothing to resample
        return Delta(0.0, 0.0, 0.0, n, a, a)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    weights = np.stack([np.bincount(s, minlength=n) for s in draws]).astype(float)
    boot = ap_weighted(test, weights) - _boot_ap(ref, weights, (n_boot, seed))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    d = b - a
    return Delta(d, float(min(lo, d)), float(max(hi, d)), n, a, b)


def _boot_ap(ev: PerImage, weights: np.ndarray, key: tuple) -> np.ndarray:
    """The reference's resampled APs, kept on it: every row of a chapter is compared with one reference on the
    same draws (same seed)."""
    cache = ev.__dict__.setdefault("_boot_cache", {})
    if key not in cache:
        cache[key] = ap_weighted(ev, weights)
    return cache[key]


# -- scoring rows: one untimed pass per distinct numerics -------------------------------------------------
#: Detection-level agreement is kept as a diagnostic over the detections at least this confident.
CONFIDENT = 0.3


def numerics_key(pipe) -> str:
    """What decides a pipeline's outputs; pipelines with one key give the same detections by construction, so
    one pass serves them all. Left out: RoIAlign's implementation (mmcv's, torchvision's and the threaded one
    are bit-identical) and the mask form (``box`` and ``raw`` paste back to ``full``, and scoring pastes them).
    A choice measured at run time (``auto`` pre-processing, runtime) enters as what it picked, so the key is
    read after the pipeline's first image."""
    import json

    c, cfg = pipe.choices, pipe.model.cfg
    test_cfg = json.dumps(cfg.model.test_cfg.to_dict(), sort_keys=True, default=str)
    pre = getattr(pipe, "last_preprocess", None) or c.preprocess
    runtime = getattr(pipe, "last_runtime", None) or c.runtime
    scale = next((s.get("scale") for s in cfg.test_dataloader.dataset.pipeline if s.get("type") == "Resize"), None)
    parts = [getattr(pipe.model, "mmdet_speedup_config", ""), getattr(pipe.model, "mmdet_speedup_weights", ""),
             f"scale={scale}", test_cfg, pre, c.precision,
             f"cl={c.channels_last}", f"foldbn={c.fold_bn}", f"compile={c.compile}", runtime]
    return "|".join(str(p) for p in parts)


@dataclass
class Scored:
    """One pass's detections on the scored images, evaluated once per image (box, and mask where present)."""

    key: str
    results: list[dict]
    evals: dict[str, PerImage]
    seconds: float
    by: str  # the row whose pass this is


#: A run set's folder of passes (``scripts/run_study.py`` sets it for one invocation): a pass one chapter made
#: serves every later chapter that scores the same numerics on the same images.
PASSES_ENV = "MMDET_SPEEDUP_PASSES"


class Scorer:
    """Scores pipelines on the first ``images`` of a labelled split, one untimed pass per numerics key (cached
    for the scorer's life, and across the chapters of a run set in ``cache_dir``), and compares each with a
    reference pass by delta AP. ``by``: who makes the passes (the chapter), recorded with each one."""

    def __init__(self, ann_file: str | Path, image_dir: str | Path, images: int | None = None, *,
                 cache_dir: str | Path | None = None, by: str = "") -> None:
        import json

        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.doc = json.loads(self.ann_file.read_text())
        self.images = self.doc["images"][:images]
        if not self.images:
            raise ValueError(f"{self.ann_file} has no images to score")
        self.passes: dict[str, Scored] = {}
        self.cache_dir, self.by = (Path(cache_dir) if cache_dir else None), by

    def _cache_file(self, key: str) -> Path | None:
        import hashlib

        if self.cache_dir is None:
            return None
        h = hashlib.sha256(f"{key}|{self.ann_file.resolve()}|{self.image_ids}".encode()).hexdigest()[:24]
        return self.cache_dir / f"{h}.json"

    def _cached(self, key: str) -> Scored | None:
        """The pass of ``key`` from memory, or from the run set's folder (evaluated here once)."""
        import json

        if key in self.passes:
            return self.passes[key]
        f = self._cache_file(key)
        if f is None or not f.is_file():
            return None
        saved = json.loads(f.read_text())
        self.passes[key] = self._evaluated(key, saved["results"], saved["seconds"], saved["by"])
        return self.passes[key]

    def _evaluated(self, key: str, results: list[dict], seconds: float, by: str) -> Scored:
        types = ["bbox"] + (["segm"] if "segmentation" in results[0] else [])
        evals = {t_: per_image(results, self.ann_file, t_, self.image_ids) for t_ in types}
        return Scored(key, results, evals, seconds, by)

    @property
    def image_ids(self) -> list[int]:
        return [im["id"] for im in self.images]

    def paths(self) -> list[str]:
        return [str(self.image_dir / im["file_name"]) for im in self.images]

    def score(self, label: str, pipe, key: str | None = None, num_classes: int | None = None) -> Scored:
        """``pipe``'s pass, or the cached pass of an earlier row with the same numerics key. A pipe that is not a
        ``StagedPipeline`` (a deployed graph: any callable from an image path to ``Detections``) passes its own
        ``key`` and ``num_classes``."""
        import time

        from .cascade import final
        from .coco import category_ids, to_coco_results

        if num_classes is None:
            num_classes = final(pipe.model.roi_head.bbox_head).num_classes
        cats = category_ids(self.doc, num_classes, self.ann_file)
        paths = self.paths()
        if key is not None and self._cached(key):
            return self._cached(key)
        t = time.perf_counter()
        if key is None:
            pipe.prime(paths[:1])
        first = pipe(paths[0])
        key = key or numerics_key(pipe)
        if self._cached(key):
            return self._cached(key)
        results = to_coco_results(first, self.images[0]["id"], cats)
        for im, path in zip(self.images[1:], paths[1:]):
            results += to_coco_results(pipe(path), im["id"], cats)
        seconds = time.perf_counter() - t
        if not results:
            raise ValueError(f"no detections on any of the {len(paths)} scored images: nothing to score")
        stray = {r["image_id"] for r in results} - set(self.image_ids)
        if stray:
            raise ValueError(f"detections for image ids {sorted(stray)[:5]} that are not among the scored images")
        by = f"{self.by}: {label}" if self.by else label
        self.passes[key] = self._evaluated(key, results, seconds, by)
        f = self._cache_file(key)
        if f is not None:
            import json
            import os

            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": key, "results": results, "seconds": seconds, "by": by}))
            os.replace(tmp, f)
        return self.passes[key]

    def row(self, label: str, scored: Scored, ref: Scored, n_boot: int = 1000) -> dict:
        """One accuracy row: AP, delta AP against ``ref`` with its paired interval, and the pass it came from."""
        out = {"row": label, "images": len(self.images), "pass_of": scored.by, "pass_s": round(scored.seconds, 2),
               "key": scored.key}
        for t_, name in (("bbox", "box"), ("segm", "mask")):
            if t_ in scored.evals and t_ in ref.evals:
                d = delta_ap(ref.evals[t_], scored.evals[t_], n_boot=n_boot)
                out |= {f"{name}_AP": d.test_ap, f"{name}_dAP": d.delta, f"{name}_dAP_lo": d.lo,
                        f"{name}_dAP_hi": d.hi}
        return out
