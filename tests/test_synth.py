"""The generated data set: same seed, same bytes (held by the committed manifest); COCO files pycocotools reads."""
import contextlib
import io
import json

import numpy as np
import pytest

from mmdet_speedup import synth
from mmdet_speedup.checks import InputError


@pytest.mark.parametrize("name, index", [("train", 0), ("train", 599), ("val", 0), ("val", 57)])
def test_an_image_is_the_manifests_bytes(name, index):
    """Any image can be made alone, and its pixels and annotations hash to the committed digest."""
    s = synth.split(name)
    img, objects = synth.render(s, index)
    anns = synth.annotations(objects, index + 1, 1)
    got = synth.digest(img, [{k: v for k, v in a.items() if k != "id"} for a in anns])
    assert got == synth.manifest()[name]["digests"][index]


def test_the_manifest_covers_every_split():
    m = synth.manifest()
    assert m["version"] == synth.VERSION
    for name, s in synth.SPLITS.items():
        assert m[name]["images"] == s.images == len(m[name]["digests"]) and tuple(m[name]["size"]) == s.size
    assert synth.SPLITS["val"].images >= 100 and synth.SPLITS["val"].size == (1333, 800)
    assert synth.SPLITS["val_3840x2304"].size == (3840, 2304)


def test_val_backgrounds_are_never_used_for_training():
    assert not set(synth.SPLITS["train"].backgrounds) & set(synth.SPLITS["val"].backgrounds)
    assert synth.SPLITS["val"].backgrounds == synth.SPLITS["val_3840x2304"].backgrounds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synth.generate("train", tmp_path_factory.mktemp("synth"), images=4, image_size="320x224", seed=3)


def test_annotations_load_in_pycocotools_and_match_their_masks(tiny):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tiny))
    assert len(coco.getImgIds()) == 4 and sorted(coco.getCatIds()) == list(range(1, len(synth.CLASSES) + 1))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and all(a["iscrowd"] == 0 for a in anns)
    for a in anns:
        m = coco.annToMask(a)
        assert int(m.sum()) == a["area"] >= synth.MIN_PIXELS
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)  # the tight box
        assert float(mask_utils.area(a["segmentation"])) == a["area"]
    for img in coco.loadImgs(coco.getImgIds()):
        assert (synth.image_dir(tiny) / img["file_name"]).is_file()


def test_same_seed_same_bytes_other_seed_other_image(tiny, tmp_path):
    again = synth.generate("train", tmp_path, images=4, image_size="320x224", seed=3)
    other = synth.generate("train", tmp_path, images=4, image_size="320x224", seed=4)
    a, b, c = (json.loads(p.read_text()) for p in (tiny, again, other))
    assert a["digests"] == b["digests"] and a["annotations"] == b["annotations"]
    assert not set(a["digests"]) & set(c["digests"])


def test_objects_overlap_are_cut_by_the_border_and_span_the_sizes():
    s = synth.split("val")
    sides, hidden, cut, counts = [], 0, 0, []
    for i in range(6):
        _, objs = synth.render(s, i)
        counts.append(len(objs))
        for o in objs:
            x1, y1, x2, y2 = o["box"]
            sides.append(max(x2 - x1, y2 - y1))
            hidden += o["visible"] < 1
            cut += x1 == 0 or y1 == 0 or x2 == s.size[0] or y2 == s.size[1]
    assert all(s.objects[0] <= n <= s.objects[1] for n in counts)
    assert hidden > 0 and cut > 0
    assert min(sides) < 40 and max(sides) > 250


@pytest.mark.parametrize("kw, match", [
    (dict(images=0), "images must be positive"),
    (dict(image_size="0x0"), "size must be positive"),
    (dict(image_size="60x40"), "too small"),
])
def test_impossible_requests_are_one_line(tmp_path, kw, match):
    with pytest.raises(InputError, match=match):
        synth.generate("train", tmp_path, **kw)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_an_unknown_split_is_refused():
    with pytest.raises(InputError, match="unknown split 'test'"):
        synth.split("test")
