"""The deployed peer row: mmdeploy's end-to-end ONNX in ONNX Runtime and OpenVINO, against the stock pipeline."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mmdet_speedup.checks import InputError
from mmdet_speedup.deploy import DEPLOY_CONFIGS, DeployedModel, deploy_config, paste_masks

from .conftest import IMAGES

# -- without mmdeploy: the clear errors ----------------------------------------------------------------------


def test_bad_deploy_config_name():
    with pytest.raises(InputError, match="unknown deploy config 'instance-seg_tensorrt_static'.*choose from"):
        deploy_config("instance-seg_tensorrt_static")


def test_known_deploy_configs():
    for name in DEPLOY_CONFIGS:
        cfg = deploy_config(name)
        assert cfg.onnx_config.output_names == ["dets", "labels", "masks"]
        assert cfg.codebase_config.post_processing.export_postprocess_mask is False
    assert "dynamic_axes" in deploy_config("instance-seg_onnxruntime_dynamic").onnx_config
    assert "dynamic_axes" not in deploy_config("instance-seg_onnxruntime_static").onnx_config


def test_deployed_model_refuses_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'"):
        DeployedModel(tmp_path / "m.onnx", runtime="tensorrt")
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        DeployedModel(tmp_path / "m.onnx", precision="fp16")
    with pytest.raises(InputError, match="ONNX file not found"):
        DeployedModel(tmp_path / "m.onnx")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="export it with export_end2end"):
        DeployedModel(tmp_path / "m.onnx")


def test_paste_masks_is_mmdeploys():
    pytest.importorskip("mmdeploy")
    from mmdeploy.codebase.mmdet.deploy.object_detection_model import End2EndModel

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 1 + torch.rand(6, 2, generator=g) * 40], 1)
    boxes[0, 2] = boxes[0, 0]  # a zero-width box, as mmdeploy's graph can return
    probs = torch.rand(6, 28, 28, generator=g)
    assert torch.equal(paste_masks(boxes, probs, 70, 60), End2EndModel.postprocessing_masks(boxes, probs, 70, 60))
    assert paste_masks(boxes[:0], probs[:0], 70, 60).shape == (0, 60, 70)


# -- export and run (need mmdeploy, onnxruntime, openvino) --------------------------------------------------

_MISSING = [m for m in ("mmdeploy", "onnx", "onnxruntime", "openvino") if importlib.util.find_spec(m) is None]
# checked before the fixtures build a model; scripts/setup_mmdeploy.sh installs mmdeploy
needs_runtimes = pytest.mark.skipif(bool(_MISSING), reason=f"not installed: {', '.join(_MISSING)}")


@pytest.fixture(scope="module")
def static_export(mask_rcnn, image, tmp_path_factory):
    """The conftest model exported static on the conftest image, once for this module (a 170 MB graph)."""
    from mmdet_speedup.deploy import export_end2end

    return export_end2end(mask_rcnn, image, tmp_path_factory.mktemp("deploy") / "end2end.onnx")


@pytest.fixture(scope="module")
def static_onnx(static_export):
    return static_export.path


@pytest.mark.slow
@needs_runtimes
def test_static_export_matches_stock(mask_rcnn, image, stock_dets, static_export):
    """Static graph on the conftest image: ORT and OpenVINO fp32 agree with mmdet's own test_step.

    Not exact by design (see ``deploy``'s docstring): on this image at 480x320, 3 of mmdeploy's 60 detections
    are zero-width boxes at the image edge that mmdet's RPN filter drops; everything matched agrees to ~1e-4.
    """
    import torch.onnx
    import torch.onnx.symbolic_opset9 as opset9

    from mmdet_speedup import compare, identical, stock_test_step
    from mmdet_speedup import stages as S
    from mmdet_speedup.deploy import GRAPH
    from mmdet_speedup.masks import FullMasks
    from mmdet_speedup.timing import StageTimer

    path, seconds = static_export
    assert path.is_file() and seconds > 0
    assert (path.parent / "end2end.json").is_file() and (path.parent / "end2end.model_cfg.py").is_file()
    # the export left neither the model nor torch changed (mmdeploy patches torch while it exports)
    assert identical(stock_dets, stock_test_step(mask_rcnn, image))
    assert torch.onnx.export.__module__ == "torch.onnx" and not hasattr(opset9, "_cast_Long")

    runs = {}
    for runtime in ("onnxruntime", "openvino"):
        model = DeployedModel(path, runtime=runtime, precision="fp32", threads=2)
        assert model.inference_precision == "f32"  # OpenVINO would pick bf16 on an AVX512_BF16 CPU unless told
        timer = StageTimer(record_function=False)
        runs[runtime] = dets = model(image, timer)
        assert set(timer.ms()) == {S.LOAD, S.PREPROCESS, S.DATA_PREPROCESSOR, GRAPH, S.MASK_POSTPROCESS}
        assert isinstance(dets.masks, FullMasks) and dets.masks.masks.dtype == torch.bool
        assert dets.image_size == stock_dets.image_size == tuple(dets.masks.image_size)
        a = compare(stock_dets, dets)
        assert a.n_ref == a.n_test == len(stock_dets)
        assert a.matched_ref >= 0.9 and a.matched_test >= 0.9, a
        assert a.box_iou_mean >= 0.99 and a.score_diff_max < 1e-3 and a.mask_iou_mean >= 0.98, a
    a = compare(runs["onnxruntime"], runs["openvino"])
    assert a.matched_ref >= 0.95 and a.matched_test >= 0.95 and a.mask_iou_mean >= 0.98, a

    with pytest.raises(InputError, match="ONNX Runtime's CPU provider runs this graph in fp32 only"):
        DeployedModel(path, runtime="onnxruntime", precision="bf16")
    other = next(p for p in IMAGES if p != image)
    with pytest.raises(InputError, match="exported static for input"):
        DeployedModel(path, runtime="onnxruntime")(other)


@pytest.mark.slow
@needs_runtimes
def test_dynamic_export_runs_any_shape(mask_rcnn, tmp_path):
    """Dynamic graph, exported from a noise image of a given size: two other image shapes, against stock."""
    from mmdet_speedup import compare, stock_test_step
    from mmdet_speedup.deploy import export_end2end

    path, _ = export_end2end(mask_rcnn, (400, 600), tmp_path / "dyn.onnx",
                             deploy_cfg="instance-seg_onnxruntime_dynamic")
    model = DeployedModel(path, runtime="onnxruntime")
    by_name = {p.stem: p for p in IMAGES}
    for name in ("coffee", "chelsea"):  # 400x600 and 300x451: neither is the export's shape
        ref, dets = stock_test_step(mask_rcnn, by_name[name]), model(by_name[name])
        a = compare(ref, dets)
        assert a.matched_ref >= 0.9 and a.matched_test >= 0.9 and a.box_iou_mean >= 0.99, (name, a)
        assert np.isfinite(a.mask_iou_mean) and a.mask_iou_mean >= 0.9, (name, a)


# -- throughput mode: OpenVINO's THROUGHPUT hint, several infer requests in flight ----------------------------


def test_throughput_mode_refuses_onnxruntime_and_bad_hints(tmp_path):
    with pytest.raises(InputError, match="unknown hint 'FAST'"):
        DeployedModel(tmp_path / "m.onnx", runtime="openvino", hint="FAST")
    with pytest.raises(InputError, match="ONNX Runtime has no throughput mode"):
        DeployedModel(tmp_path / "m.onnx", runtime="onnxruntime", hint="THROUGHPUT")
    with pytest.raises(InputError, match="ONNX Runtime has no throughput mode"):
        DeployedModel(tmp_path / "m.onnx", runtime="onnxruntime", requests=2)
    with pytest.raises(InputError, match="requests must be positive"):
        DeployedModel(tmp_path / "m.onnx", runtime="openvino", hint="THROUGHPUT", requests=0)


def _same_shape_images(image):
    """Three different images of the conftest image's shape (a static graph takes one padded shape)."""
    import cv2

    from mmdet_speedup.pipeline import load_image

    img = load_image(image)
    other = cv2.resize(load_image(next(p for p in IMAGES if p != image)), img.shape[1::-1])
    return [image, np.ascontiguousarray(img[:, ::-1]), other]


@pytest.mark.slow
@needs_runtimes
@pytest.mark.parametrize("requests", [None, 3])
def test_throughput_matches_latency_path(static_onnx, image, requests):
    """THROUGHPUT-hint OpenVINO over an image list (repeated, so requests finish out of order): the detections
    come back in input order and agree with the LATENCY path's, image by image."""
    from mmdet_speedup import compare
    from mmdet_speedup.deploy import throughput

    images = _same_shape_images(image) * 2
    latency = DeployedModel(static_onnx, runtime="openvino", precision="fp32", threads=2)
    assert latency.hint == "LATENCY" and latency.requests == latency.optimal_requests >= 1
    ref = [latency(im) for im in images[:3]] * 2

    tp = DeployedModel(static_onnx, runtime="openvino", precision="fp32", threads=2, hint="THROUGHPUT",
                       requests=requests)
    assert tp.inference_precision == "f32" and tp.optimal_requests >= 1
    assert tp.requests == (tp.optimal_requests if requests is None else requests)
    out = throughput(tp, images, passes=1, warmup=False)
    assert out["requests"] == tp.requests >= 1 and out["hint"] == "THROUGHPUT"
    assert out["images"] == len(images) and out["images_per_s"] > 0
    assert len(out["detections"]) == len(images)
    for i, (r, d) in enumerate(zip(ref, out["detections"])):
        a = compare(r, d)
        assert len(r) > 0 and a.n_ref == a.n_test, (i, a)
        assert a.matched_ref == a.matched_test == 1.0, (i, a)
        assert a.box_iou_min >= 0.999 and a.score_diff_max < 1e-4 and a.mask_iou_min >= 0.99, (i, a)
    # the three images differ, so order is checked: image 0's detections are not image 1's
    assert compare(out["detections"][0], out["detections"][1]).matched_ref < 1.0

    # the latency-hint model runs the same path (its optimal count of requests), and errors surface
    assert throughput(latency, images[:1], warmup=False)["requests"] == latency.requests
    other = next(p for p in IMAGES if p != image)
    with pytest.raises(InputError, match="exported static for input"):
        tp.run_many([image, other])
    with pytest.raises(InputError, match="at least one image"):
        throughput(tp, [])


@pytest.mark.slow
@needs_runtimes
def test_throughput_refuses_onnxruntime(static_onnx):
    from mmdet_speedup.deploy import throughput

    with pytest.raises(InputError, match="need runtime='openvino'"):
        throughput(DeployedModel(static_onnx, runtime="onnxruntime", threads=2), [np.zeros((8, 8, 3), np.uint8)])
