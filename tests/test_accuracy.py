"""AP re-accumulated from per-image matches equals pycocotools' on a hand-made set; delta AP and its interval."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmdet_speedup import accuracy as A
from mmdet_speedup.coco import coco_ap


def _square(x: float, y: float, s: float) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


@pytest.fixture()
def scene(tmp_path):
    """12 images, 2 categories, 1-4 objects each; detections with shifted boxes, misses and false positives."""
    rng = np.random.default_rng(3)
    images, anns, results = [], [], []
    for i in range(1, 13):
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 200})
        for j in range(int(rng.integers(1, 5))):
            x, y, s = float(rng.uniform(0, 120)), float(rng.uniform(0, 120)), float(rng.uniform(12, 70))
            cat = int(rng.integers(1, 3))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, s, s],
                         "area": s * s, "iscrowd": 0, "segmentation": [_square(x, y, s)]})
            if rng.random() < 0.8:  # found, a little off
                d = float(rng.normal(0, s * 0.1))
                results.append({"image_id": i, "category_id": cat, "bbox": [x + d, y - d, s, s * 1.05],
                                "score": float(rng.uniform(0.3, 1.0))})
        if rng.random() < 0.5:  # a false positive
            results.append({"image_id": i, "category_id": 1, "bbox": [150.0, 150.0, 30.0, 30.0],
                            "score": float(rng.uniform(0.0, 0.9))})
    ann = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return path, results


def test_per_image_accumulation_equals_pycocotools(scene):
    path, results = scene
    ev = A.per_image(results, path)
    assert A.ap(ev) == pytest.approx(coco_ap(results, path, ("bbox",))["bbox_AP"], abs=1e-12)
    some = [0, 2, 3, 7]  # a subset of images scores like pycocotools on that subset
    ids = [ev.image_ids[i] for i in some]
    subset = [r for r in results if r["image_id"] in ids]
    assert A.ap(ev, some) == pytest.approx(coco_ap(subset, path, ("bbox",), img_ids=ids)["bbox_AP"], abs=1e-12)


def test_masks_too(scene):
    from pycocotools import mask as mask_utils

    path, results = scene
    segm = []
    for r in results:
        x, y, w, h = r["bbox"]
        rle = mask_utils.frPyObjects([_square(x, y, w)], 200, 200)[0]
        rle["counts"] = rle["counts"].decode()
        segm.append({**r, "segmentation": rle})
    ev = A.per_image(segm, path, "segm")
    assert A.ap(ev) == pytest.approx(coco_ap(segm, path, ("segm",))["segm_AP"], abs=1e-12)


def test_delta_ap_is_zero_against_itself_and_negative_for_worse_boxes(scene):
    path, results = scene
    ref = A.per_image(results, path)
    same = A.delta_ap(ref, A.per_image(results, path), n_boot=200)
    assert same.delta == 0 and same.lo == 0 and same.hi == 0 and same.n_images == 12
    shifted = [{**r, "bbox": [r["bbox"][0] + 6, r["bbox"][1] + 6, *r["bbox"][2:]]} for r in results]
    worse = A.delta_ap(ref, A.per_image(shifted, path), n_boot=200)
    assert worse.delta < 0 and worse.lo <= worse.delta <= worse.hi and worse.hi < 0


def test_perfect_and_empty_detections(scene):
    path, _ = scene
    ann = json.loads(path.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in ann["annotations"]]
    assert A.ap(A.per_image(perfect, path)) == pytest.approx(1.0)
    assert A.ap(A.per_image([], path)) == 0.0
    with pytest.raises(ValueError, match="same images"):
        A.delta_ap(A.per_image(perfect, path), A.per_image(perfect, path, img_ids=[1, 2]))


def test_the_accuracy_rule_keeps_changes_or_cannot_tell():
    from mmdet_speedup.stats import CANNOT_TELL, CHANGES_ACCURACY, KEEPS
    from mmdet_speedup.study.words import ACCURACY_MARGIN, MIN_SCORED_IMAGES, accuracy_word, delta_text

    assert ACCURACY_MARGIN == 0.010 and MIN_SCORED_IMAGES == 50
    d = lambda lo, hi: A.Delta((lo + hi) / 2, lo, hi, 100, 0.5, 0.5 + (lo + hi) / 2)  # noqa: E731
    assert accuracy_word(d(-0.004, 0.003), d(-0.009, 0.0), 100) == KEEPS
    assert accuracy_word(d(-0.004, 0.003), d(-0.03, -0.012), 100) == CHANGES_ACCURACY  # mask wholly outside
    assert accuracy_word(d(-0.015, 0.003), None, 100) == CANNOT_TELL  # straddles the margin
    assert accuracy_word(d(-0.004, 0.003), None, 49) == CANNOT_TELL  # too few images
    assert delta_text(d(-0.004, 0.002)) == "-0.001 (95% CI -0.004 to +0.002, 100 images)"
