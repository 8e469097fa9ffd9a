import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from mmdet_speedup import STOCK, ImageLoadError, StagedPipeline, UnsupportedModelError, optimize
from mmdet_speedup.loader import PrefetchReader, ReaderError, run_overlapped, run_serial


def test_optimize_one_call_and_report(mask_rcnn, images):
    from mmdet_speedup import Choices
    from mmdet_speedup.environment import cpu_has_bf16

    p = optimize(mask_rcnn, device="cpu")
    assert p.choices == Choices.auto().resolve("cpu", mask_rcnn)  # optimize decides nothing of its own
    assert p.choices.precision == ("bf16" if cpu_has_bf16() else "fp32") and p.choices.masks == "raw"
    assert p.choices.channels_last is (p.choices.precision != "fp32") and p.choices.roi_align == "threaded"
    assert p.pipeline.model is not mask_rcnn and p.reference.pipeline.model is mask_rcnn  # the stock model is not touched
    assert p.choices.runtime == "auto"  # measured on the first image of each input shape
    dets = p.predict(images[:1])
    assert len(dets) == 1 and len(dets[0]) >= 50
    assert p.pipeline.last_runtime in p.pipeline.parts and len(p.pipeline.runtime_measurements) == 1
    rep = optimize(mask_rcnn, preprocess="stock", precision="fp32", masks="raw", runtime="torch",
                   device="cpu").equivalence_report(images[:1])
    r = rep.iloc[0]
    assert r["matched_ref"] == 1.0 and r["box_iou_min"] == 1.0 and r["mask_iou_min"] == 1.0
    assert r["feature_rel_err"] == 0.0 and r["mask_prob_diff_max"] == 0.0


def test_rows_sharing_a_reference_run_it_once_per_image_and_report_what_their_own_would(mask_rcnn, images,
                                                                                       monkeypatch):
    from mmdet_speedup import Choices
    from mmdet_speedup.optimize import Predictor, Reference

    ref, calls = Reference.of(mask_rcnn, STOCK, "cpu"), []
    call = StagedPipeline.check_outputs
    monkeypatch.setattr(StagedPipeline, "check_outputs",
                        lambda self, *a, **k: (calls.append(self) if self is ref.pipeline else None,
                                               call(self, *a, **k))[1])
    choices = Choices(preprocess="stock", precision="fp32", masks="raw", runtime="torch")
    shared = [Predictor(mask_rcnn, c, "cpu", reference=ref).equivalence_report(images[:1]) for c in (STOCK, choices)]
    own = Predictor(mask_rcnn, choices, "cpu").equivalence_report(images[:1])
    assert len(calls) == 1  # two rows, one image: stock ran once
    assert shared[0].iloc[0]["mask_iou_min"] == 1.0 and shared[0].iloc[0]["feature_rel_err"] == 0.0
    cols = ["matched_ref", "box_iou_min", "mask_iou_min", "feature_rel_err", "mask_prob_diff_max"]
    assert shared[1][cols].equals(own[cols])  # the memo changes nothing a row reports


@pytest.mark.parametrize("same_input", [True, False])
def test_an_agreement_check_runs_each_pipeline_once_and_reports_what_separate_passes_would(mask_rcnn, image,
                                                                                             monkeypatch, same_input):
    """One pass per pipeline and image gives detections, maps and mask probabilities (at 3840x2304 a pass of
    ``stock`` takes about 37 s on 2 cores); a row whose model input differs from the reference's runs its
    backbone once more, on the reference's input, so maps are always compared on the same input."""
    from mmdet_speedup import Choices
    from mmdet_speedup.equivalence import compare, match, relative_error
    from mmdet_speedup.optimize import Predictor

    p = Predictor(mask_rcnn, Choices(preprocess="stock", precision="bf16", masks="raw", runtime="torch"), "cpu")
    test, ref = p.pipeline, p.reference.pipeline
    if not same_input:  # a preprocessing that rounds differently
        prepare = test.prepare
        monkeypatch.setattr(test, "prepare", lambda img, *a: (lambda x: (x[0] + 1e-3, x[1]))(prepare(img, *a)))
    passes, features = {}, StagedPipeline.features
    monkeypatch.setattr(StagedPipeline, "features", lambda self, *a, **k: (
        passes.__setitem__(self, passes.get(self, 0) + 1), features(self, *a, **k))[1])
    row = p.equivalence_report([image]).iloc[0]
    assert passes == {ref: 1, test: 1 if same_input else 2}

    inputs = ref.prepare(image)[0]
    dets, own = ref(image), test(image)
    probs = [q.postprocess_masks(q.mask_inputs(image), variant="raw")[1].probs for q in (ref, test)]
    assert row["feature_rel_err"] == relative_error(ref.features(inputs).maps, test.features(inputs).maps) > 0
    assert row["mask_prob_diff_max"] == max(float((probs[0][i] - probs[1][j]).abs().max())
                                            for i, j, _ in match(dets, own)) > 0
    assert row["matched_ref"] == compare(dets, own).matched_ref


def test_report_cannot_pass_vacuously(mask_rcnn, image):
    """A variant that changes results must show it: fewer detections means fewer matched."""
    from mmdet_speedup import compare
    ref = StagedPipeline(mask_rcnn, STOCK, "cpu")(image)
    half = type(ref)(ref.bboxes[::2], ref.scores[::2], ref.labels[::2], ref.masks[::2], ref.image_size)
    a = compare(ref, half)
    assert a.matched_ref == pytest.approx(0.5, abs=0.01) and a.matched_test == 1.0 and not a.passes()


def test_faster_rcnn_supported(faster_rcnn, image):
    p = optimize(faster_rcnn, device="cpu")
    assert p.choices.masks == "full"
    d = p(image)
    assert d.masks is None and len(d) > 0
    with pytest.raises(ValueError, match="needs a model with a mask head"):
        optimize(faster_rcnn, masks="raw", device="cpu")


def test_one_stage_detector_is_rejected():
    from mmdet_speedup import Workload, build_detector
    with pytest.raises(UnsupportedModelError, match="two-stage"):
        build_detector("retinanet_r50_fpn_1x_coco", device="cpu", workload=Workload(scale=(320, 224)))


def test_bad_images(mask_rcnn, tmp_path):
    pipe = StagedPipeline(mask_rcnn, STOCK, "cpu")
    with pytest.raises(ImageLoadError, match="not found"):
        pipe(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match="corrupt"):
        pipe(bad)


# -- overlapped loading ------------------------------------------------------------------------------------
def test_reader_keeps_order_and_matches_serial(mask_rcnn, images):
    pipe = StagedPipeline(mask_rcnn, STOCK, "cpu")
    srcs = list(images[:3]) * 2
    names = [it.name for it in PrefetchReader(srcs, pipe, depth=2, workers=2)]
    assert names == [p.name for p in srcs]
    from mmdet_speedup import identical
    for a, b in zip(run_serial(pipe, srcs[:3]), run_overlapped(pipe, srcs[:3], depth=2)):
        assert identical(a, b)


def test_reader_error_names_the_image_and_does_not_hang(mask_rcnn, images, tmp_path):
    pipe = StagedPipeline(mask_rcnn, STOCK, "cpu")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 garbage")
    srcs = [images[0], bad, images[1], images[2]]
    got = []
    done = threading.Event()

    def consume():
        try:
            for it in PrefetchReader(srcs, pipe, depth=3):
                got.append(it.name)
        except ReaderError as e:
            got.append(e)
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    assert done.wait(60), "reader hung"
    assert got[0] == images[0].name and isinstance(got[1], ReaderError) and "broken.jpg" in str(got[1])


# -- CLI ---------------------------------------------------------------------------------------------------
def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mmdet_speedup", "profile", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["no-such-config_1x"], "unknown config"),
    (["mask-rcnn_r50_fpn_1x_coco", "--image", "/nonexistent.jpg"], "image not found"),
    (["retinanet_r50_fpn_1x_coco", "--scale", "320x224"], "two-stage"),
    (["mask-rcnn_r50_fpn_1x_coco", "--scale", "big"], "WxH"),
    (["mask-rcnn_r50_fpn_1x_coco", "--runtime", "tensorrt"], "unknown runtime"),
])
def test_cli_errors_are_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_profiles_comma_variants(image, tmp_path):
    out = tmp_path / "cli.csv"
    r = _cli("mask-rcnn_r50_fpn_1x_coco", "--image", str(image), "--scale", "320x224", "--dets", "20",
             "--rpn-pre-nms", "200", "--repeats", "1", "--warmup", "0", "--masks", "full,raw", "--device", "cpu",
             "--weights", "conditioned", "--out", str(out))  # conditioned: every image fills the mask head
    assert r.returncode == 0, r.stderr
    assert "stock/fp32/full" in r.stdout and "stock/fp32/raw" in r.stdout and "mask_postprocess" in r.stdout
    import pandas as pd
    df = pd.read_csv(out)
    assert set(df["variant"]) == {"stock/fp32/full", "stock/fp32/raw"} and (df["status"] == "ok").all()
