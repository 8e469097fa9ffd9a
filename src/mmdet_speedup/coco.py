"""Box and mask AP with pycocotools, for users who have a real checkpoint and COCO-format annotations.

Agreement between random-weight models (``equivalence``) is not mAP; this is.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterable, Sequence

from .masks import rle_encode
from .pipeline import Detections


def to_coco_results(dets: Detections, image_id: int, cat_ids: Sequence[int]) -> list[dict]:
    """Detections as COCO result dicts (xywh boxes; RLE masks when present). ``cat_ids[label]`` maps labels; a
    label past ``cat_ids`` (a class the annotations do not have) is left out, and its mask never encoded."""
    from .masks import FullMasks, Masks, region_rle

    masks = dets.masks
    out = []
    for i, (box, score, label) in enumerate(zip(dets.bboxes.tolist(), dets.scores.tolist(), dets.labels.tolist())):
        if label >= len(cat_ids):
            continue
        x1, y1, x2, y2 = box
        r = {"image_id": int(image_id), "category_id": int(cat_ids[label]), "bbox": [x1, y1, x2 - x1, y2 - y1],
             "score": float(score)}
        if masks is not None:
            full = masks.masks[i] if isinstance(masks, FullMasks) else None if isinstance(masks, Masks) else masks[i]
            r["segmentation"] = region_rle(*masks.paste(i), masks.image_size) if full is None else rle_encode(full.numpy())
        out.append(r)
    return out


#: COCOeval's first six summary figures, in its order (the last six are recalls).
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_ap(results: list[dict], ann_file: str | Path, iou_types: Sequence[str] = ("bbox", "segm"),
            img_ids: Iterable[int] | None = None, detail: bool = False) -> dict[str, float]:
    """COCO AP (IoU .50:.95) and AP50 per IoU type (``detail``: also AP75 and AP by object size); quiet.

    ``img_ids`` are the images that were run: only their ground truth is scored, and one of them without a
    single result still counts (all its objects missed). ``None`` scores every image of ``ann_file``. Only the
    file's categories are scored, so its categories may be a subset of the model's classes.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    ids = set(gt.getImgIds()) if img_ids is None else {int(i) for i in img_ids}
    if ids - set(gt.getImgIds()):
        raise ValueError(f"image ids {sorted(ids - set(gt.getImgIds()))} are not in {ann_file}")
    stray = {int(r["image_id"]) for r in results} - ids
    if stray:
        raise ValueError(f"results for image ids {sorted(stray)}, which are not among the images scored")
    names = STATS if detail else STATS[:2]
    if not results:
        return {f"{t}_{k}": 0.0 for t in iou_types for k in names}
    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        for t in iou_types:
            if t == "segm" and "segmentation" not in results[0]:
                continue
            ev = COCOeval(gt, dt, t)
            ev.params.imgIds = sorted(ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out.update({f"{t}_{k}": float(v) for k, v in zip(names, ev.stats)})
    return out


def category_ids(ann: dict, num_classes: int, ann_file: str | Path = "annotations") -> list[int]:
    """The file's category ids in label order: label k is the k-th smallest id. A file with fewer categories
    than the model has classes (the generated shapes take the first labels) scores those labels only."""
    cat_ids = sorted(c["id"] for c in ann["categories"])
    if not cat_ids or len(cat_ids) > num_classes:
        raise ValueError(f"{ann_file} has {len(cat_ids)} categories but the model predicts {num_classes} classes")
    return cat_ids


def evaluate(pipe, ann_file: str | Path, img_dir: str | Path, max_images: int | None = None,
             detail: bool = False) -> dict[str, float]:
    """Run ``pipe`` (a ``StagedPipeline``) over the first ``max_images`` annotated images and score those."""
    from .cascade import final

    ann = json.loads(Path(ann_file).read_text())
    cat_ids = category_ids(ann, final(pipe.model.roi_head.bbox_head).num_classes, ann_file)
    ran = ann["images"][:max_images]
    results = []
    for img in ran:
        dets = pipe(str(Path(img_dir) / img["file_name"]))
        results += to_coco_results(dets, img["id"], cat_ids)
    return coco_ap(results, ann_file, img_ids=[img["id"] for img in ran], detail=detail)
