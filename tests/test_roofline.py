"""The roofline: FLOPs counted on layers with known FLOPs, the floor/percent arithmetic on hand numbers, the peaks'
shape, and the per-stage counts of a real (small) Mask R-CNN against ResNet-50's analytic figure."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mmdet_speedup import roofline as R
from mmdet_speedup import stages as S
from mmdet_speedup.checks import InputError

# ResNet-50 at 224x224: 4.09 GMAC (torchvision; 2 FLOPs per MAC), of which the fc layer (absent from a
# detector's backbone) is 2048 x 1000 MAC. Convolutions scale with the input area.
RESNET50_FLOPS_224 = 2 * (4.09e9 - 2048 * 1000)


def test_conv_flops_are_two_per_multiply_add():
    conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
    x = torch.randn(1, 16, 33, 47)
    hout, wout = (33 + 2 - 3) // 2 + 1, (47 + 2 - 3) // 2 + 1
    assert conv(x).shape[-2:] == (hout, wout)
    flops = R.count_flops(lambda: conv(x))
    assert flops == 2 * 32 * 16 * 3 * 3 * hout * wout  # the bias is not counted


def test_linear_flops_and_the_arithmetic_on_them():
    lin = torch.nn.Linear(256, 128)
    flops = R.count_flops(lambda: lin(torch.randn(64, 256)))
    assert flops == 2 * 64 * 256 * 128 == 4_194_304
    # at a 100 GFLOP/s peak this product cannot take less than 0.0419 ms; in 0.1 ms it ran at 41.9 % of peak
    assert R.compute_floor_ms(flops, 100.0) == pytest.approx(0.04194304)
    assert R.percent_of_peak(0.1, flops, 100.0) == pytest.approx(41.94304)


def test_floors_and_percent_on_hand_numbers():
    assert R.compute_floor_ms(10e9, 200.0) == pytest.approx(50.0)     # 10 GFLOP at 200 GFLOP/s
    assert R.memory_floor_ms(1e9, 10.0) == pytest.approx(100.0)       # 1 GB at 10 GB/s
    assert R.percent_of_peak(100.0, 10e9, 200.0) == pytest.approx(50.0)
    assert R.percent_of_peak(50.0, 10e9, 200.0) == pytest.approx(100.0)
    assert math.isnan(R.percent_of_peak(0.0, 1e9, 100.0))
    assert math.isnan(R.compute_floor_ms(1e9, 0.0))


def test_roofline_table_on_hand_numbers():
    peaks = {"matmul_gflops": {"float32": 200.0, "bfloat16": 400.0}, "copy_gbps": 10.0}
    ms = {S.BACKBONE: 100.0, S.NECK: 50.0, S.PREPROCESS: 10.0}
    flops = {S.BACKBONE: 10e9, S.NECK: 1e9}
    t = R.roofline_table(ms, flops, peaks, "fp32").set_index("stage")
    assert list(t.index) == [S.BACKBONE, S.NECK]                       # no FLOPs, no bytes: no row
    assert t.loc[S.BACKBONE, "gflop"] == pytest.approx(10.0)
    assert t.loc[S.BACKBONE, "achieved_gflops"] == pytest.approx(100.0)
    assert t.loc[S.BACKBONE, "floor_ms"] == pytest.approx(50.0)
    assert t.loc[S.BACKBONE, "pct_of_peak"] == pytest.approx(50.0)
    assert t.loc[S.NECK, "pct_of_peak"] == pytest.approx(10.0)
    bf16 = R.roofline_table(ms, flops, peaks, "bf16").set_index("stage")
    assert bf16.loc[S.BACKBONE, "floor_ms"] == pytest.approx(25.0)
    # a memory-bound stage: 50 MB at 10 GB/s is a 5 ms floor, half of its 10 ms
    t = R.roofline_table(ms, flops, peaks, "float32", nbytes={S.PREPROCESS: 50e6}).set_index("stage")
    assert t.loc[S.PREPROCESS, "bound"] == "memory"
    assert t.loc[S.PREPROCESS, "floor_ms"] == pytest.approx(5.0)
    assert t.loc[S.PREPROCESS, "pct_of_peak"] == pytest.approx(50.0)
    assert t.loc[S.BACKBONE, "bound"] == "compute"
    with pytest.raises(InputError, match="int8"):
        R.roofline_table(ms, flops, peaks, "int8")


def test_measure_peaks_tiny():
    kw = dict(size=64, repeats=2, copy_mib=1)
    p = R.measure_peaks("cpu", **kw)
    assert p["threads"] == torch.get_num_threads() and p["matmul_size"] == 64
    from mmdet_speedup.environment import cpu_has_bf16, cpu_has_int8

    assert p["matmul_gflops"]["float32"] > 0
    # a dtype the CPU only emulates has no peak, and a note says why
    assert ("bfloat16" in p["matmul_gflops"]) == cpu_has_bf16() != ("bfloat16" in p["notes"])
    assert "float16" in p["notes"]                                     # fp16 is measured on CUDA only
    assert ("int8" in p["matmul_gflops"]) == (hasattr(torch, "_int_mm") and cpu_has_int8()) != ("int8" in p["notes"])
    assert p["copy_gbps"] > 0 and p["copy_bytes"] == 2 * 2 ** 20
    p["matmul_gflops"]["float32"] = -1.0                               # a copy: the cache is not touched
    assert R.measure_peaks("cpu", **kw)["matmul_gflops"]["float32"] > 0
    rec = R.peaks_record("cpu", **kw)
    assert json.loads(json.dumps(rec))["roofline_peaks"]["matmul_size"] == 64


def test_percent_of_a_dtype_without_a_peak_is_nan():
    import pandas as pd

    stages = pd.DataFrame({"backbone": [10.0, 5.0]}, index=["fp32", "bf16"])
    t = R.percent_table(stages, {"backbone": 1e9}, {"matmul_gflops": {"float32": 200.0}}, {"fp32": "fp32", "bf16": "bf16"})
    assert t.loc["fp32", "backbone % of peak"] == pytest.approx(50.0) and math.isnan(t.loc["bf16", "backbone % of peak"])


@pytest.fixture(scope="module")
def small_pipeline():
    from mmdet_speedup import StagedPipeline, Workload, build_detector

    # FLOPs of backbone, neck and RPN head do not depend on the weights: skip the conditioning (13 s here)
    model = build_detector("mask-rcnn_r50_fpn_1x_coco", weights="conditioned", device="cpu", conditioning=None,
                           workload=Workload(scale=(320, 224), dets_per_image=20, rpn_proposals=100))
    return StagedPipeline(model)


def test_stage_flops_on_mask_rcnn(small_pipeline, image):
    flops = R.stage_flops(small_pipeline, image)
    assert set(flops) == {S.BACKBONE, S.NECK, S.RPN}
    inputs, _ = small_pipeline.prepare(image)
    h, w = inputs.shape[-2:]                                           # padded to a multiple of 32
    expected = RESNET50_FLOPS_224 * (h * w) / (224 * 224)
    assert flops[S.BACKBONE] == pytest.approx(expected, rel=0.10)
    assert 0 < flops[S.NECK] < flops[S.BACKBONE]
    assert 0 < flops[S.RPN] < flops[S.BACKBONE]
    with pytest.raises(InputError, match="top-level"):
        R.stage_flops(small_pipeline, image, stages=(S.RPN_NMS,))


def test_stage_bytes_count_the_tensors_each_stage_reads_and_writes(mask_rcnn, image):
    from mmdet_speedup import Choices, StagedPipeline

    fp32 = R.stage_bytes(StagedPipeline(mask_rcnn), str(image))
    img = __import__("cv2").imread(str(image))
    assert fp32[S.LOAD] == img.nbytes
    assert fp32[S.PREPROCESS] > img.nbytes and fp32[S.DATA_PREPROCESSOR] > 0
    weights = sum(p.numel() * 4 for p in mask_rcnn.backbone.parameters())
    assert fp32[S.BACKBONE] > weights  # weights, input and the four maps
    assert all(v >= 0 for v in fp32.values()) and fp32[S.MASK_POSTPROCESS] > 0
    # bf16 channels_last maps are converted for RoIAlign: roi_bbox moves those bytes too
    bf16 = R.stage_bytes(StagedPipeline(mask_rcnn, Choices(precision="bf16", channels_last=True)), str(image))
    assert bf16[S.ROI_BBOX] > fp32[S.ROI_BBOX]
    assert bf16[S.BACKBONE] < fp32[S.BACKBONE]  # half-size weights and maps
    # raw masks hold 28x28 probabilities, not image-size masks
    raw = R.stage_bytes(StagedPipeline(mask_rcnn, Choices(masks="raw")), str(image))
    assert raw[S.MASK_POSTPROCESS] < fp32[S.MASK_POSTPROCESS]


def _rows(notebook, run, variant, stage_ms, scale="1333x800", reps=3):
    import pandas as pd

    return pd.DataFrame([dict(run_id=run, notebook=notebook, variant=variant, stage=st, ms=ms * (1 + 0.01 * r),
                              repeat=r, image="a", status="ok", config="m", device="cpu", input_size=scale,
                              scale=scale, rpn_pre_nms=1000, dets_per_image=100)
                         for r in range(reps) for st, ms in stage_ms.items()])


def test_the_bounds_table_in_pipeline_order_with_its_percent_of_roof():
    import pandas as pd

    table = pd.DataFrame({S.LOAD: [10.0, 10.0], S.BACKBONE: [100.0, 40.0], S.RPN: [20.0, 25.0]},
                         index=["stock", "path"])
    best = R.best_measured(table, ["stock", "path"])
    assert best["row"].to_dict() == {S.LOAD: "stock", S.BACKBONE: "path", S.RPN: "stock"}
    t = R.bounds_table(table.loc["stock"].to_dict(), {S.LOAD: 10.0, S.BACKBONE: 40.0, S.RPN: 25.0}, best,
                       {S.BACKBONE: 10.0, S.RPN: 15.0})
    assert list(t.index) == [S.LOAD, S.BACKBONE, S.RPN]  # pipeline order
    assert t.loc[S.BACKBONE, "% of roof"] == pytest.approx(25.0) and not t["beaten"].any()
    b = R.bound_speedups(t)
    assert b["reached"] == pytest.approx(130 / 75)
    assert b["best measured bound"] == pytest.approx(130 / (10 + 40 + 20))
    assert b["roofline bound"] == pytest.approx(130 / (10 + 10 + 15))  # load at the path's own ms
    assert math.isnan(t.loc[S.LOAD, "roofline floor ms"])
