"""Box and mask AP with pycocotools, for users who have a real checkpoint and COCO-format annotations.

Agreement between random-weight models (``equivalence``) is not mAP; this is.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Sequence

from .masks import rle_encode
from .pipeline import Detections


def to_coco_results(dets: Detections, image_id: int, cat_ids: Sequence[int]) -> list[dict]:
    """Detections as COCO result dicts (xywh boxes; RLE masks when present). ``cat_ids[label]`` maps labels."""
    out = []
    rles = None
    if dets.masks is not None:
        rles = dets.masks.to_rle() if hasattr(dets.masks, "to_rle") else [rle_encode(m.numpy()) for m in dets.masks]
    for i, (box, score, label) in enumerate(zip(dets.bboxes.tolist(), dets.scores.tolist(), dets.labels.tolist())):
        x1, y1, x2, y2 = box
        r = {"image_id": int(image_id), "category_id": int(cat_ids[label]), "bbox": [x1, y1, x2 - x1, y2 - y1],
             "score": float(score)}
        if rles is not None:
            r["segmentation"] = rles[i]
        out.append(r)
    return out


def coco_ap(results: list[dict], ann_file: str | Path, iou_types: Sequence[str] = ("bbox", "segm")) -> dict[str, float]:
    """COCO AP (IoU .50:.95) and AP50 per IoU type; quiet."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        out: dict[str, float] = {}
        if not results:
            return {f"{t}_AP": 0.0 for t in iou_types}
        dt = gt.loadRes(results)
        for t in iou_types:
            if t == "segm" and "segmentation" not in results[0]:
                continue
            ev = COCOeval(gt, dt, t)
            ev.params.imgIds = sorted({r["image_id"] for r in results} | set(gt.getImgIds()))
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[f"{t}_AP"], out[f"{t}_AP50"] = float(ev.stats[0]), float(ev.stats[1])
    return out


def evaluate(predictor, ann_file: str | Path, img_dir: str | Path, max_images: int | None = None,
             stock: bool = False) -> dict[str, float]:
    """Run ``predictor`` (or its stock pipeline) over the annotated images and score them."""
    ann = json.loads(Path(ann_file).read_text())
    cat_ids = sorted(c["id"] for c in ann["categories"])
    num_classes = predictor.stock_model.roi_head.bbox_head.num_classes
    if len(cat_ids) != num_classes:
        raise ValueError(f"{ann_file} has {len(cat_ids)} categories but the model predicts {num_classes} classes")
    pipe = predictor.stock() if stock else predictor.pipeline
    results = []
    for img in ann["images"][:max_images]:
        dets = pipe(str(Path(img_dir) / img["file_name"]))
        results += to_coco_results(dets, img["id"], cat_ids)
    return coco_ap(results, ann_file)
