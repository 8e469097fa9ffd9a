"""What the model page computes: the data's statistics, the trained model's AP on the val splits, its figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import synth
from ..coco import STATS, category_ids, coco_ap, to_coco_results


def data_table(ann_files: dict[str, Path]) -> pd.DataFrame:
    """One column per split: images, objects, objects per image, object sizes, occlusion, border cuts."""
    cols = {}
    for name, f in ann_files.items():
        doc = json.loads(Path(f).read_text())
        s = synth.statistics(f)
        w, h = doc["images"][0]["width"], doc["images"][0]["height"]
        boxes = np.array([a["bbox"] for a in doc["annotations"]])
        cut = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 0] + boxes[:, 2] >= w) | (boxes[:, 1] + boxes[:, 3] >= h)
        q = np.percentile(s["sides"], [10, 50, 90])
        cols[name] = {
            "image size": f"{w}x{h}", "images": s["images"], "objects": s["objects"],
            "objects per image (min / median / max)": f"{s['per_image'].min()} / {np.median(s['per_image']):.0f} / "
                                                      f"{s['per_image'].max()}",
            "object side, px (p10 / median / p90)": f"{q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f}",
            "objects partly hidden by others": f"{(s['visible'] < 1).mean():.0%}",
            "objects cut by the border": f"{cut.mean():.0%}",
            "objects per class (min / max)": f"{s['classes'].min()} / {s['classes'].max()}",
        }
    return pd.DataFrame(cols)


def size_histogram(ann_files: dict[str, Path], ax) -> None:
    """Objects by side (sqrt of visible area, px; log bins), per split, as a share of the split's objects."""
    bins = np.geomspace(8, 1200, 25)
    for name, f in ann_files.items():
        sides = synth.statistics(f)["sides"]
        ax.hist(sides, bins=bins, weights=np.full(len(sides), 100 / len(sides)), histtype="step", lw=2, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("object side: sqrt(visible area), px")
    ax.set_ylabel("% of the split's objects")
    ax.legend()


def detect(pipe, ann_file: Path, n: int | None = None) -> tuple[list[dict], list[int], dict[int, object]]:
    """COCO results of ``pipe`` on the first ``n`` images of a split, the ids run, and the detections by id."""
    doc = json.loads(Path(ann_file).read_text())
    cats = category_ids(doc, pipe.model.roi_head.bbox_head.num_classes, ann_file)
    results, ids, dets = [], [], {}
    for img in doc["images"][:n]:
        d = pipe(str(synth.image_dir(ann_file) / img["file_name"]))
        results += to_coco_results(d, img["id"], cats)
        ids.append(img["id"])
        dets[img["id"]] = d
    return results, ids, dets


def ap_row(results: list[dict], ann_file: Path, ids: list[int], split: str) -> dict:
    ap = coco_ap(results, ann_file, img_ids=ids, detail=True)
    return {"split": split, "images": len(ids), **ap}


def ap_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Box and mask AP per split, COCO's figures on the 0-1 scale, as recorded."""
    out = {}
    for _, r in rows.iterrows():
        out[f"{r['split']} ({int(r['images'])} images)"] = {
            **{f"box {k}": r[f"bbox_{k}"] for k in STATS}, **{f"mask {k}": r[f"segm_{k}"] for k in STATS}}
    return pd.DataFrame(out)


def found_share(dets, ann_file: Path, image_id: int, score: float = 0.5, iou: float = 0.5) -> tuple[int, int]:
    """How many annotated objects of one image a detection of the right class finds (box IoU >= ``iou``,
    score > ``score``), and how many there are."""
    import torch
    from torchvision.ops import box_iou

    doc = json.loads(Path(ann_file).read_text())
    gt = [a for a in doc["annotations"] if a["image_id"] == image_id]
    cats = sorted(c["id"] for c in doc["categories"])
    keep = dets.scores > score
    boxes, labels = dets.bboxes[keep], dets.labels[keep]
    g = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in gt)], dtype=torch.float32)
    glabels = torch.tensor([cats.index(a["category_id"]) for a in gt])
    if len(boxes) == 0 or len(g) == 0:
        return 0, len(gt)
    m = box_iou(g, boxes.float()) * (glabels[:, None] == labels[None, :])
    return int((m.max(1).values >= iou).sum()), len(gt)


def draw(ax, image_path: Path, dets, classes, score: float = 0.5, title: str = "") -> None:
    """An image with the detections above ``score``: masks tinted, boxes and class names."""
    import cv2

    img = cv2.imread(str(image_path))[..., ::-1].astype(np.float32) / 255
    keep = (dets.scores > score).nonzero().flatten().tolist()
    import matplotlib
    import matplotlib.patches

    colors = matplotlib.colormaps["tab10"]
    for i in keep:
        c = np.array(colors(int(dets.labels[i]) % 10)[:3])
        if dets.masks is not None:
            m, y0, x0 = dets.masks.paste(i)
            m = m.numpy().astype(bool)
            region = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
            region[m] = 0.45 * region[m] + 0.55 * c
    ax.imshow(img)
    for i in keep:
        x1, y1, x2, y2 = dets.bboxes[i].tolist()
        c = colors(int(dets.labels[i]) % 10)
        ax.add_patch(matplotlib.patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=c, lw=1))
        ax.text(x1, y1, f"{classes[int(dets.labels[i])]} {float(dets.scores[i]):.2f}", color="white", fontsize=7,
                bbox=dict(facecolor=c, alpha=0.8, pad=1, lw=0), va="bottom")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)


def curve_figure(curve: pd.DataFrame, ax) -> None:
    """The training loss (running mean over 50 iterations) and its parts."""
    for col, label in (("loss", "total"), ("loss_cls", "box class"), ("loss_bbox", "box regression"),
                       ("loss_mask", "mask"), ("loss_rpn_cls", "RPN objectness")):
        if col in curve:
            window = max(1, 50 // max(1, int(curve["iter"].diff().median() or 1)))
            ax.plot(curve["iter"], curve[col].rolling(window, min_periods=1).mean(), label=label,
                    lw=2 if col == "loss" else 1)
    if "stage" in curve:  # a later stage restarts the schedule (warm-up, peak lr): where it starts
        for _, first in curve.groupby("stage")["iter"].min().iloc[1:].items():
            ax.axvline(first, color="#888888", lw=0.8, ls="--")
            ax.text(first, ax.get_ylim()[1], " next stage", va="top", fontsize=7, color="#555555")
    ax.set_xlabel("iteration (batch of 2 crops)")
    ax.set_ylabel("loss (running mean of 50 iterations)")
    ax.legend()


def recipe_table(record: dict) -> pd.DataFrame:
    """The training recipe and its cost, as the weights' record holds them."""
    r, m = record["recipe"], record.get("machine") or {}
    parts = record.get("stages") or [dict(recipe=r, iterations=record["iterations"])]
    stages = " + ".join(f"{s['iterations']} ({s['recipe']['warmup']} warm-up, cosine over {s['recipe']['iters']}"
                        f"{', from the previous stage' if k else ', from scratch'})" for k, s in enumerate(parts))
    return pd.DataFrame({"value": {
        "iterations": record["iterations"], "stages": stages, "batch": f"{r['batch']} crops, {r['crop']} px",
        "resize before the crop": f"x{r['resize'][0]:g} to x{r['resize'][1]:g} of 1333x800",
        "optimizer": f"AdamW, lr {r['lr']:g}, decay {r['weight_decay']:g}",
        "gradient norm clipped at": f"{r['clip']:g}",
        "schedule (each stage)": f"linear warm-up, cosine decay to {r['final_lr']:g} lr",
        "sampled RoIs per image": r["rois_per_image"],
        "time in the training loop": f"{record['seconds_in_loop'] / 3600:.2f} h, 2 cores "
                                     f"({m.get('uarch') or m.get('vendor', 'CPU')})",
        "BatchNorm re-estimated on": f"{record['bn_reestimated_on']} train crops",
        "weights file (MiB)": f"{record['bytes'] / 2**20:.1f}",
        "sha256": f"{record['sha256'][:16]}...",
    }})


#: The val splits and the model's scale for each (the study's cases at the size of the image).
VAL_SCALES = {"val": (1333, 800), "val_3840x2304": (3840, 2304)}


def evaluate(splits: dict[str, Path], images: dict[str, int], device, keep: int = 3):
    """The stock pipeline of the trained model on the first ``images[split]`` images of each val split: one AP
    row per split, and the detections of the first ``keep`` images of ``val`` (the figure, the found share)."""
    from ..choices import STOCK
    from ..models import Workload, build_detector
    from ..pipeline import StagedPipeline

    rows, kept = [], {}
    for split, scale in VAL_SCALES.items():
        if not images.get(split):
            continue
        model = build_detector("mask-rcnn_r50_fpn_1x_coco", weights="trained", device=str(device),
                               workload=Workload(scale=scale))
        results, ids, dets = detect(StagedPipeline(model, STOCK, device), splits[split], images[split])
        rows.append(ap_row(results, splits[split], ids, split))
        if split == "val":
            kept = {i: dets[i] for i in ids[:keep]}
    return pd.DataFrame(rows), kept


def figure(ann_file: Path, dets: dict, n: int):
    """The first ``n`` of ``dets`` drawn on their images, side by side."""
    import matplotlib.pyplot as plt

    doc = json.loads(Path(ann_file).read_text())
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    shown = list(dets.items())[:n]
    _, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.5), layout="tight", squeeze=False)
    for ax, (i, d) in zip(axes[0], shown):
        draw(ax, synth.image_dir(ann_file) / files[i], d, synth.CLASSES, title=files[i])


def evaluate_coco(checkpoint: str, folder: str, images: int, device) -> pd.DataFrame:
    """A real checkpoint's AP on the first ``images`` of COCO val2017 (a reader's own checkpoint and folder)."""
    from ..checks import coco_folder
    from ..choices import STOCK
    from ..coco import evaluate
    from ..models import build_detector
    from ..pipeline import StagedPipeline

    ann, img_dir = coco_folder(folder)
    model = build_detector("mask-rcnn_r50_fpn_1x_coco", checkpoint=checkpoint, device=str(device))
    ap = evaluate(StagedPipeline(model, STOCK, device), ann, img_dir, images, detail=True)
    return pd.DataFrame([{"split": "COCO val2017", "images": images, **ap}])


#: The project's floor for the trained model on the val split (issue: the trained model), and its aim.
FLOOR = {"bbox_AP": 0.30, "bbox_AP50": 0.60}


def floor_text(row) -> str:
    """Whether the val split's AP row reaches the floor, in words, with the figures."""
    short = [f"{k.split('_')[1]} {row[k]:.3f} < {v:.2f}" for k, v in FLOOR.items() if row[k] < v]
    if not short:
        return (f"reached (box AP {row['bbox_AP']:.3f}, AP50 {row['bbox_AP50']:.3f} on "
                f"{int(row['images'])} images)")
    return f"not reached ({', '.join(short)} on {int(row['images'])} images)"
