"""AP machinery on a small synthetic COCO fixture built here (no download)."""
import json

import cv2
import numpy as np
import pytest
import torch

from mmdet_speedup import Detections, optimize
from mmdet_speedup.coco import coco_ap, evaluate, to_coco_results


@pytest.fixture(scope="module")
def fixture(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("coco")
    anns, imgs, k = [], [], 1
    rng = np.random.default_rng(0)
    for i, src in enumerate(images[:2]):
        img = cv2.imread(str(src))
        cv2.imwrite(str(root / f"{i}.jpg"), img)
        h, w = img.shape[:2]
        imgs.append({"id": i + 1, "file_name": f"{i}.jpg", "height": h, "width": w})
        for _ in range(3):
            x, y = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
            bw, bh = rng.uniform(30, w * 0.3), rng.uniform(30, h * 0.3)
            poly = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
            anns.append({"id": k, "image_id": i + 1, "category_id": int(rng.choice([1, 3])), "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0, "segmentation": [poly]})
            k += 1
    cats = [{"id": c, "name": str(c)} for c in range(1, 81)]  # as many as the model has classes
    path = root / "ann.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return path, root, anns, imgs


def _dets_from(anns, img, shift=0.0):
    from pycocotools import mask as mu
    mine = [a for a in anns if a["image_id"] == img["id"]]
    boxes = torch.tensor([[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
                           a["bbox"][1] + a["bbox"][3]] for a in mine], dtype=torch.float32)
    masks = torch.from_numpy(np.stack([mu.decode(mu.frPyObjects(a["segmentation"], img["height"], img["width"])).max(2)
                                       for a in mine]).astype(bool))
    labels = torch.tensor([a["category_id"] - 1 for a in mine])
    return Detections(boxes, torch.ones(len(mine)), labels, masks, (img["height"], img["width"]))


def test_perfect_detections_score_ap_one(fixture):
    path, _, anns, imgs = fixture
    res = [r for img in imgs for r in to_coco_results(_dets_from(anns, img), img["id"], list(range(1, 81)))]
    ap = coco_ap(res, path)
    assert ap["bbox_AP"] == pytest.approx(1.0) and ap["segm_AP"] > 0.9


def test_shifted_detections_score_lower(fixture):
    path, _, anns, imgs = fixture
    res = [r for img in imgs for r in to_coco_results(_dets_from(anns, img, shift=25.0), img["id"], list(range(1, 81)))]
    assert coco_ap(res, path)["bbox_AP"] < 0.9


def test_category_count_mismatch_is_a_clear_error(mask_rcnn, fixture, tmp_path):
    path, root, _, _ = fixture
    ann = json.loads(path.read_text())
    ann["categories"] = ann["categories"][:3]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="categories"):
        optimize(mask_rcnn, precision="fp32", device="cpu").coco_report(bad, root, max_images=1)


def test_predictor_coco_report_runs(mask_rcnn, fixture):
    path, root, _, _ = fixture
    rep = optimize(mask_rcnn, precision="fp32", device="cpu").coco_report(path, root, max_images=1)
    assert list(rep["variant"])[0] == "stock" and {"bbox_AP", "segm_AP"} <= set(rep.columns)
    assert rep[["bbox_AP", "segm_AP"]].ge(0).all().all()  # random weights: a number, not a claim
