"""AP machinery on tiny synthetic COCO files built here (no download), with answers known in advance."""
import json
import shutil

import numpy as np
import pytest
import torch

from mmdet_speedup import BoxMasks, Detections, optimize
from mmdet_speedup.coco import coco_ap, to_coco_results
from mmdet_speedup.masks import FullMasks, rle_encode

H, W = 60, 80
CATS = [2, 5, 9]  # not 1..n: labels map through cat_ids
# (image id, category id, y0, x0, h, w): each object an ellipse inscribed in its box, no two boxes touching
OBJECTS = [(1, 2, 4, 4, 20, 24), (1, 5, 30, 10, 22, 18), (1, 2, 8, 44, 26, 30),
           (2, 9, 10, 12, 24, 28), (2, 2, 34, 50, 20, 22)]


def _ellipse(y0, x0, h, w) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    cy, cx = y0 + (h - 1) / 2, x0 + (w - 1) / 2
    return ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]  # x1 y1 x2 y2, pixel edges


def _write_ann(path, images, anns):
    cats = [{"id": c, "name": str(c)} for c in CATS]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture(scope="module")
def ann(tmp_path_factory):
    """Two 60x80 images; ground truth = the ellipses above as RLE, boxes their tight boxes."""
    anns = []
    for k, (img_id, cat, *geom) in enumerate(OBJECTS, 1):
        m = _ellipse(*geom)
        x1, y1, x2, y2 = _box(m)
        anns.append({"id": k, "image_id": img_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": float(m.sum()), "iscrowd": 0, "segmentation": rle_encode(m)})
    images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2)]
    return _write_ann(tmp_path_factory.mktemp("coco") / "ann.json", images, anns)


def _dets(img_id, form, move=lambda m: m, label_of=lambda cat: CATS.index(cat)):
    """Hand-made detections of image ``img_id``'s objects, each mask ``move``d, in the mask form ``form``."""
    mine = [o for o in OBJECTS if o[0] == img_id]
    masks = np.stack([move(_ellipse(*o[2:])) for o in mine])
    boxes = torch.tensor([_box(m) for m in masks])
    full = torch.from_numpy(masks)
    if form == "full":  # the pipeline's full masks: the N x H x W tensor behind to_rle()/to_full()
        full = FullMasks(full)
    elif form == "box":  # box-local regions and their offsets
        b = boxes.long().tolist()
        full = BoxMasks([full[i, y1:y2, x1:x2] for i, (x1, y1, x2, y2) in enumerate(b)],
                        [(y1, x1) for x1, y1, _, _ in b], (H, W))
    scores = torch.linspace(0.9, 0.5, len(mine))
    labels = torch.tensor([label_of(o[1]) for o in mine])
    return Detections(boxes, scores, labels, full, (H, W))


def _results(img_ids, form="tensor", **kw):
    return [r for i in img_ids for r in to_coco_results(_dets(i, form, **kw), i, CATS)]


@pytest.mark.parametrize("form", ["tensor", "full", "box"])
def test_perfect_results_score_ap_one(ann, form):
    ap = coco_ap(_results([1, 2], form), ann)
    assert ap == {"bbox_AP": 1.0, "bbox_AP50": 1.0, "segm_AP": 1.0, "segm_AP50": 1.0}


def test_to_coco_results_maps_labels_boxes_and_masks(ann):
    res = _results([2])
    gt = [a for a in json.loads(ann.read_text())["annotations"] if a["image_id"] == 2]
    assert [r["category_id"] for r in res] == [a["category_id"] for a in gt]  # labels through cat_ids
    assert [r["bbox"] for r in res] == [a["bbox"] for a in gt]  # xyxy -> xywh
    assert [r["segmentation"] for r in res] == [a["segmentation"] for a in gt]
    assert [r["image_id"] for r in res] == [2, 2] and res[0]["score"] == pytest.approx(0.9)
    no_masks = Detections(torch.zeros(1, 4), torch.ones(1), torch.zeros(1, dtype=torch.long))
    boxes_only = to_coco_results(no_masks, 7, CATS)
    assert "segmentation" not in boxes_only[0]


@pytest.mark.parametrize("form", ["tensor", "full", "box"])
def test_shifted_results_score_clearly_lower(ann, form):
    ap = coco_ap(_results([1, 2], form, move=lambda m: np.roll(m, 4, axis=1)), ann)  # 4 px to the right
    # still found at IoU 0.5, lost at the strict thresholds: AP (.50:.95) falls, AP50 does not
    assert ap["bbox_AP50"] == 1.0 and ap["segm_AP50"] == 1.0
    assert ap["bbox_AP"] < 0.6 and ap["segm_AP"] < 0.6


def test_garbage_results_score_zero(ann):
    wrong = _results([1, 2], label_of=lambda cat: CATS.index(cat) - 1)  # every object in another category
    far = _results([1, 2], move=lambda m: np.ascontiguousarray(m[::-1]))  # upside down: IoU < 0.5 with its own
    for res in (wrong, far):
        ap = coco_ap(res, ann)
        assert ap["bbox_AP"] == 0.0 and ap["segm_AP"] == 0.0, ap


def test_only_the_images_run_are_scored(ann):
    res = _results([1])  # image 2 was not run
    assert coco_ap(res, ann, img_ids=[1]) == {"bbox_AP": 1.0, "bbox_AP50": 1.0, "segm_AP": 1.0, "segm_AP50": 1.0}
    # an image that was run counts even with no detections: its objects are missed
    both = coco_ap(res, ann, img_ids=[1, 2])
    assert both["bbox_AP"] < 0.7 and both["segm_AP"] < 0.7
    assert coco_ap(res, ann) == both  # without img_ids: every image in the file
    assert coco_ap([], ann, img_ids=[2]) == {"bbox_AP": 0.0, "bbox_AP50": 0.0, "segm_AP": 0.0, "segm_AP50": 0.0}


def test_image_ids_outside_the_scored_set_are_an_error(ann):
    with pytest.raises(ValueError, match="not among the images scored"):
        coco_ap(_results([1, 2]), ann, img_ids=[1])
    with pytest.raises(ValueError, match=r"\[9\] are not in"):
        coco_ap(_results([1]), ann, img_ids=[1, 9])


# -- through the predictor: ground truth = the stock model's own detections ----------------------------------
@pytest.fixture(scope="module")
def own(tmp_path_factory, mask_rcnn, images, stock_dets):
    """Image 1 annotated with the stock model's detections on it (byte-identical copy); image 2 with two boxes."""
    root = tmp_path_factory.mktemp("own")
    for i, src in enumerate(images[:2], 1):
        shutil.copy(src, root / f"{i}.jpg")
    cat_ids = list(range(1, 81))
    h, w = stock_dets.image_size
    anns = [{"id": k, "image_id": 1, "category_id": r["category_id"], "bbox": r["bbox"], "iscrowd": 0,
             "area": r["bbox"][2] * r["bbox"][3], "segmentation": r["segmentation"]}
            for k, r in enumerate(to_coco_results(stock_dets, 1, cat_ids), 1)]
    anns += [{"id": 1000 + k, "image_id": 2, "category_id": 1, "bbox": [10.0 + 50 * k, 10.0, 40.0, 30.0],
              "iscrowd": 0, "area": 1200.0, "segmentation": [[10.0 + 50 * k, 10.0, 50.0 + 50 * k, 10.0,
                                                              50.0 + 50 * k, 40.0, 10.0 + 50 * k, 40.0]]}
             for k in range(2)]
    imgs = [{"id": i, "file_name": f"{i}.jpg", "height": h, "width": w} for i in (1, 2)]
    cats = [{"id": c, "name": str(c)} for c in cat_ids]
    both, first = root / "ann.json", root / "ann_image1.json"
    both.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    first.write_text(json.dumps({"images": imgs[:1], "annotations": [a for a in anns if a["image_id"] == 1],
                                 "categories": cats}))
    return root, both, first


def test_max_images_scores_only_the_images_run(mask_rcnn, own):
    root, both, first = own
    # choices that change no detection on the CPU (box masks and threaded RoIAlign are bit-identical there)
    p = optimize(mask_rcnn, preprocess="stock", precision="fp32", channels_last=False, fold_bn=False, masks="box",
                 roi_align="threaded", compile=False, runtime="torch", device="cpu")
    rep = p.coco_report(both, root, max_images=1)
    alone = p.coco_report(first, root)
    assert len(rep) == 2  # the reference (stock) and the predictor
    # boxes are the ground truth itself: AP 1 (0.54 when image 2's unrun objects counted as missed)
    assert (rep["bbox_AP"] == 1.0).all() and (rep["bbox_AP50"] == 1.0).all(), rep
    # masks too, up to the instances whose random-weight mask is empty (COCO matches no empty mask): the same
    # score as a file that holds image 1 alone
    assert rep[["segm_AP", "segm_AP50"]].equals(alone[["segm_AP", "segm_AP50"]]), (rep, alone)
    assert (rep["segm_AP"] > 0.5).all()


def test_category_count_mismatch_is_a_clear_error(mask_rcnn, own, tmp_path):
    root, both, _ = own
    a = json.loads(both.read_text())
    a["categories"] = a["categories"] + [{"id": 81, "name": "81"}]  # a subset is scored; more classes cannot be
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(a))
    with pytest.raises(ValueError, match="81 categories but the model predicts 80"):
        optimize(mask_rcnn, precision="fp32", runtime="torch", device="cpu").coco_report(bad, root, max_images=1)


class _FakePipe:
    """A pipeline of an 80-class model that returns the hand-made detections of each image, plus one of a
    class the annotations do not have (label 50), which the evaluation must leave out."""

    def __init__(self, move=lambda m: m):
        from types import SimpleNamespace

        self.model = SimpleNamespace(roi_head=SimpleNamespace(bbox_head=SimpleNamespace(num_classes=80)))
        self.move = move

    def __call__(self, path):
        d = _dets(int(path.rsplit("/", 1)[-1].split(".")[0]), "tensor", self.move)
        extra = torch.zeros(1, H, W, dtype=torch.bool)
        extra[0, 20:40, 20:40] = True
        return Detections(torch.cat([d.bboxes, torch.tensor([[20.0, 20.0, 40.0, 40.0]])]),
                          torch.cat([d.scores, torch.tensor([0.99])]), torch.cat([d.labels, torch.tensor([50])]),
                          torch.cat([d.masks, extra]), (H, W))


def test_a_category_subset_of_the_models_classes_is_scored(ann):
    from mmdet_speedup.coco import evaluate

    perfect = evaluate(_FakePipe(), ann, ann.parent, detail=True)
    assert perfect["bbox_AP"] == perfect["segm_AP"] == perfect["bbox_AP75"] == 1.0
    shifted = evaluate(_FakePipe(lambda m: np.roll(m, 4, axis=1)), ann, ann.parent)
    assert shifted["bbox_AP"] < 0.6 and shifted["segm_AP"] < 0.6
    a = json.loads(ann.read_text())
    a["categories"] = [{"id": c, "name": str(c)} for c in range(1, 82)]
    too_many = ann.with_name("too_many.json")
    too_many.write_text(json.dumps(a))
    with pytest.raises(ValueError, match="81 categories but the model predicts 80 classes"):
        evaluate(_FakePipe(), too_many, ann.parent)
