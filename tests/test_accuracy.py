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


def test_an_image_drawn_twice_counts_like_two_copies_of_it(scene):
    """A bootstrap resample's repeats: weighting an image's detections equals scoring a duplicate of it."""
    path, results = scene
    ann = json.loads(path.read_text())
    draw = [0, 0, 3, 5, 5, 5, 9]
    ids = [ann["images"][i]["id"] for i in draw]
    images, anns, res = [], [], []
    for k, i in enumerate(ids, start=100):  # each draw a new image id, its objects and detections copied
        images.append({**next(im for im in ann["images"] if im["id"] == i), "id": k})
        anns += [{**a, "image_id": k} for a in ann["annotations"] if a["image_id"] == i]
        res += [{**r, "image_id": k} for r in results if r["image_id"] == i]
    anns = [{**a, "id": n} for n, a in enumerate(anns, start=1)]
    dup = path.with_name("dup.json")
    dup.write_text(json.dumps({**ann, "images": images, "annotations": anns}))
    ev = A.per_image(results, path)
    assert A.ap(ev, draw) == pytest.approx(coco_ap(res, dup, ("bbox",))["bbox_AP"], abs=1e-12)


def test_resamples_at_once_equal_one_at_a_time(scene):
    """The bootstrap's vectorized accumulation: each weighting's AP equals ``ap`` on that draw."""
    path, results = scene
    ev = A.per_image(results, path)
    draws = np.random.default_rng(3).integers(0, len(ev.image_ids), size=(7, len(ev.image_ids)))
    weights = np.stack([np.bincount(d, minlength=len(ev.image_ids)) for d in draws]).astype(float)
    assert A.ap_weighted(ev, weights, chunk=3) == pytest.approx([A.ap(ev, d) for d in draws], abs=1e-12)
    assert A.delta_ap(ev, ev) == A.Delta(0.0, 0.0, 0.0, len(ev.image_ids), A.ap(ev), A.ap(ev))


def test_the_bootstrap_interval_covers_a_known_delta():
    """Synthetic detections: the test side loses one object in five at random (its detection gone); over many
    images the interval holds the full-set delta, lies below zero, and narrows as images are added."""
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(11)
    images, anns, ref, test = [], [], [], []
    for i in range(1, 201):
        images.append({"id": i, "file_name": f"{i}.png", "width": 100, "height": 100})
        for j in range(3):
            box = [10.0 + 25 * j, 10.0, 20.0, 20.0]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": box, "area": 400.0,
                         "iscrowd": 0, "segmentation": [_square(box[0], box[1], 20.0)]})
            det = {"image_id": i, "category_id": 1, "bbox": box, "score": float(rng.uniform(0.5, 1))}
            ref.append(det)
            if rng.random() > 0.2:
                test.append(det)
    path = Path(tempfile.mkdtemp()) / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    r, t = A.per_image(ref, path), A.per_image(test, path)
    d = A.delta_ap(r, t, n_boot=300)
    assert d.lo <= d.delta <= d.hi < 0 and d.delta == pytest.approx(A.ap(t) - A.ap(r))
    few = A.delta_ap(A.per_image(ref, path, img_ids=range(1, 21)), A.per_image(test, path, img_ids=range(1, 21)),
                     n_boot=300)
    assert few.hi - few.lo > d.hi - d.lo


def test_the_rule_on_recorded_rows():
    import pandas as pd

    from mmdet_speedup.study import words

    def row(box, mask, n=100, **kw):
        return pd.Series({"images": n, "box_dAP": sum(box) / 2, "box_dAP_lo": box[0], "box_dAP_hi": box[1],
                          "mask_dAP": sum(mask) / 2, "mask_dAP_lo": mask[0], "mask_dAP_hi": mask[1], **kw})

    assert words.row_accuracy(row((-0.004, 0.003), (-0.009, 0.0))) == "keeps accuracy"
    assert words.row_accuracy(row((-0.004, 0.003), (-0.03, -0.012))) == "changes accuracy"
    assert words.row_accuracy(row((-0.015, 0.003), (-0.001, 0.001))) == "cannot tell"
    assert words.row_accuracy(row((-0.004, 0.003), (-0.001, 0.001), n=49)) == "cannot tell"
    assert words.row_accuracy(pd.Series({"images": 100, "error": "ValueError: no detections"})) == "error"
    acc = pd.DataFrame([row((0, 0), (0, 0), n=20, pass_of="stock"), row((-0.004, 0.003), (-0.009, 0.0), n=20,
                        pass_of="stock")], index=["stock", "x"])
    assert words.accuracy_table(acc)["accuracy"].tolist() == ["reference", "cannot tell"]
    assert "every row's word is \"cannot tell\"" in words.accuracy_sentence(acc)  # said once, for the table


class _FakePipe:
    """A pipeline stand-in: fixed detections per image, its choices, and a count of the images it ran."""

    def __init__(self, model, choices, dets):
        self.model, self.choices, self.dets, self.ran = model, choices, dets, 0

    def prime(self, images):
        pass

    def __call__(self, path):
        self.ran += 1
        return self.dets(path)


def test_rows_with_one_numerics_key_share_one_pass(scene, monkeypatch):
    import torch
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmdet_speedup import Choices
    from mmdet_speedup.pipeline import Detections

    path, _ = scene
    cfg = Config(dict(model=dict(test_cfg=dict(rpn=dict(nms_pre=1000), rcnn=dict(max_per_img=100))),
                      test_dataloader=dict(dataset=dict(pipeline=[dict(type="Resize", scale=(200, 200))]))))
    head = SimpleNamespace(bbox_head=SimpleNamespace(num_classes=80))
    model = SimpleNamespace(cfg=cfg, roi_head=head)

    def dets(p):
        return Detections(torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.tensor([0.9]), torch.tensor([0]), None)

    scorer = A.Scorer(path, path.parent, images=5)
    stock, threaded = _FakePipe(model, Choices(), dets), _FakePipe(model, Choices(roi_align="threaded", masks="raw"), dets)
    cast = _FakePipe(model, Choices(precision="bf16"), dets)
    a, b, c = scorer.score("stock", stock), scorer.score("threaded", threaded), scorer.score("bf16", cast)
    assert b is a and c is not a and b.by == "stock"
    assert stock.ran == 5 and threaded.ran == 1 and cast.ran == 5  # the sharer ran only the image its key needs
    assert scorer.row("threaded", b, a)["box_dAP"] == 0.0


def test_a_row_without_detections_is_refused(scene):
    import torch
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmdet_speedup import Choices
    from mmdet_speedup.pipeline import Detections

    path, _ = scene
    cfg = Config(dict(model=dict(test_cfg=dict()), test_dataloader=dict(dataset=dict(pipeline=[]))))
    model = SimpleNamespace(cfg=cfg, roi_head=SimpleNamespace(bbox_head=SimpleNamespace(num_classes=80)))
    empty = _FakePipe(model, Choices(), lambda p: Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), None))
    with pytest.raises(ValueError, match="no detections on any of the 3 scored images"):
        A.Scorer(path, path.parent, images=3).score("empty", empty)


def test_a_pass_serves_a_later_chapter_of_the_run_set(scene, tmp_path):
    import torch
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmdet_speedup import Choices
    from mmdet_speedup.pipeline import Detections

    path, _ = scene
    cfg = Config(dict(model=dict(test_cfg=dict()), test_dataloader=dict(dataset=dict(pipeline=[]))))
    model = SimpleNamespace(cfg=cfg, roi_head=SimpleNamespace(bbox_head=SimpleNamespace(num_classes=80)))

    def dets(p):
        return Detections(torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.tensor([0.9]), torch.tensor([0]), None)

    first = A.Scorer(path, path.parent, images=4, cache_dir=tmp_path / "passes", by="02_precision")
    a = first.score("fp32", _FakePipe(model, Choices(), dets))
    later, pipe = A.Scorer(path, path.parent, images=4, cache_dir=tmp_path / "passes", by="06_ladder"), \
        _FakePipe(model, Choices(), dets)
    b = later.score("stock", pipe)
    assert pipe.ran == 1 and b.by == "02_precision: fp32" and b.results == a.results  # one image for its key
    other = A.Scorer(path, path.parent, images=3, cache_dir=tmp_path / "passes").score("stock", _FakePipe(model, Choices(), dets))
    assert other.by == "stock"  # other images: a pass of its own


def test_int8_calibration_never_sees_a_scored_image(tmp_path, monkeypatch):
    """The runtimes chapter calibrates int8 on ``calibration_samples``: train-split images, none of them a val
    image (the split's backgrounds differ too, see synth)."""
    import inspect

    import cv2

    from mmdet_speedup import book, synth
    from mmdet_speedup.study import runtimes

    monkeypatch.setenv("MMDET_SPEEDUP_DATA", str(tmp_path))
    cal = book.calibration_samples("320x192", 2)
    assert [s.name for s in cal] == ["train_00000.png", "train_00001.png"]
    val = synth.generate("val", images=3)
    scored = [cv2.imread(str(synth.image_dir(val) / f"val_{i:05d}.png")) for i in range(3)]
    train = [cv2.imread(str(synth.image_dir(synth.generate("train", images=2)) / s.name)) for s in cal]
    assert not any(t.shape == v.shape and (t == v).all() for t in train for v in scored)
    src = inspect.getsource(runtimes.run_case)
    assert "calibration_samples" in src and "int8_pipeline, model, calibration" in src
