"""Batched inference in the staged pipeline: a list of images in, per-image detections out, as image by image."""
import json

import pytest
import torch

from mmdet_speedup import STOCK, Choices, StagedPipeline, Workload, build_detector, synth, weights
from mmdet_speedup.checks import InputError

pytestmark = pytest.mark.skipif(not weights.default_path().is_file(), reason="no trained weights in this checkout")


@pytest.fixture(scope="module")
def val_pair():
    ann = synth.generate("val", images=2, image_size="480x320")
    doc = json.loads(ann.read_text())
    return [str(ann.parent / "images" / im["file_name"]) for im in doc["images"]]


@pytest.fixture(scope="module")
def trained():
    return build_detector("mask-rcnn_r50_fpn_1x_coco", weights="trained", device="cpu",
                          workload=Workload(scale=(480, 320)))


@pytest.mark.parametrize("choices", [STOCK, Choices(channels_last=True, masks="raw")], ids=["stock", "cl raw"])
def test_batch_of_two_equals_two_single_images(trained, val_pair, choices):
    pipe = StagedPipeline(trained, choices, "cpu")
    batched, single = pipe.batch(val_pair), [pipe(p) for p in val_pair]
    assert len(batched) == 2 and all(len(d) > 0 for d in single)
    for b, s in zip(batched, single):
        assert b.image_size == s.image_size and len(b) == len(s) and torch.equal(b.labels, s.labels)
        torch.testing.assert_close(b.bboxes, s.bboxes, atol=0.05, rtol=0)
        torch.testing.assert_close(b.scores, s.scores, atol=1e-4, rtol=0)
        iou = (b.mask_array() & s.mask_array()).sum() / (b.mask_array() | s.mask_array()).sum().clamp(min=1)
        assert float(iou) > 0.999 and b.counts["batch"] == 2 and b.counts["dets_out"] == len(b)


def test_a_batch_of_mixed_shapes_or_none_is_refused(trained, val_pair, images):
    pipe = StagedPipeline(trained, STOCK, "cpu")
    with pytest.raises(InputError, match="one input shape"):
        pipe.batch([val_pair[0], str(images[0])])
    with pytest.raises(InputError, match="at least one image"):
        pipe.batch([])
