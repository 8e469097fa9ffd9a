"""Runtime backends: backbone, neck, RPN head convolutions and the RoI heads' box and mask heads in OpenVINO or
ONNX Runtime (int8: OpenVINO with NNCF), the rest unchanged."""
from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from mmdet_speedup import STOCK, Choices, StagedPipeline, compare, optimize
from mmdet_speedup import runtimes as R
from mmdet_speedup import stages as S
from mmdet_speedup.checks import InputError
from mmdet_speedup.environment import cpu_has_bf16
from mmdet_speedup.equivalence import relative_error
from mmdet_speedup.timing import StageTimer

from .conftest import TickClock

CONVERTED = ("openvino", "onnxruntime")
TINY = (1, 3, 64, 96)  # a padded input far below CI size: conversions take about a second


@pytest.fixture(scope="module")
def tiny_input():
    return torch.randn(TINY, generator=torch.Generator().manual_seed(0))


def torch_convs(model, x):
    with torch.no_grad():
        feats = model.backbone(x)
        maps = model.neck(feats)
        return feats, maps, model.rpn_head(maps)


def runtime_convs(model, runtime, precision, x):
    parts = [R.RuntimeModule(getattr(model, k), runtime, precision, k) for k in ("backbone", "neck", "rpn_head")]
    with torch.no_grad():
        feats = parts[0](x)
        maps = parts[1](feats)
        return (feats, maps, parts[2](maps)), parts


def flat(t):
    return torch.utils._pytree.tree_flatten(t)[0]


# -- conversion: once per shape, cached, structure kept ----------------------------------------------------
@pytest.mark.parametrize("runtime", CONVERTED)
def test_converts_once_per_shape_and_caches(mask_rcnn, runtime, tiny_input):
    R.clear_cache()
    maps = torch_convs(mask_rcnn, tiny_input)[1]  # the RPN head (cheapest to convert) on the tiny input's FPN maps
    taller = torch_convs(mask_rcnn, torch.randn(1, 3, 96, 64))[1]
    m = R.RuntimeModule(mask_rcnn.rpn_head, runtime, "fp32", "rpn_head")
    with torch.no_grad():
        out = m(maps)
        assert len(m.conversions) == 1 and m.is_converted(maps)
        m(tuple(t.clone() for t in maps))
        assert len(m.conversions) == 1  # same shapes: the cached model
        assert not m.is_converted(taller)
        m(taller)
        assert len(m.conversions) == 2 and m.conversions[1]["shape"].startswith("1x256x24x16, ")
        other = R.RuntimeModule(mask_rcnn.rpn_head, runtime, "fp32", "rpn_head")
        other(maps)
        assert other.conversions == []  # same weights, runtime, precision and shapes: shared
        changed = copy.deepcopy(mask_rcnn.rpn_head)
        changed.rpn_conv.weight.data.mul_(2)
        again = R.RuntimeModule(changed, runtime, "fp32", "rpn_head")
        again(maps)
        assert len(again.conversions) == 1  # other weights: converted again
    assert isinstance(out, tuple) and len(out) == 2 and all(isinstance(o, list) and len(o) == 5 for o in out)
    c = m.conversions[0]
    assert c["part"] == "rpn_head" and c["runtime"] == runtime and c["seconds"] >= c["export_s"] > 0
    assert c["shape"] == "1x256x16x24, 1x256x8x12, 1x256x4x6, 1x256x2x3, 1x256x1x2"
    assert {"compile_s", "rss_growth_mb", "peak_rss_growth_mb", "threads"} <= set(c)


def test_openvino_traces_a_part_once_and_reshapes_it_for_every_shape_and_precision(mask_rcnn, tiny_input):
    """A second shape (and the other precision) reuses the trace: no export, the torch outputs all the same."""
    R.clear_cache()
    small, wide = tiny_input, torch.randn(1, 3, 64, 160, generator=torch.Generator().manual_seed(1))
    m = R.RuntimeModule(mask_rcnn.backbone, "openvino", "fp32", "backbone")
    with torch.no_grad():
        m(small)
        out = m(wide)
        bf16 = R.RuntimeModule(mask_rcnn.backbone, "openvino", "bf16", "backbone")
        bf16(wide)
        ref = mask_rcnn.backbone(wide)
    first, second = m.conversions
    assert not first["trace_reused"] and first["export_s"] > 0
    assert second["trace_reused"] and second["export_s"] < 0.01 and second["shape"] == "1x3x64x160"
    assert bf16.conversions[0]["trace_reused"] and bf16.conversions[0]["inference_precision"] in ("bf16", "f32")
    assert all(relative_error(r, o) < 1e-4 for r, o in zip(ref, out))
    R.clear_cache("openvino")
    again = R.RuntimeModule(mask_rcnn.backbone, "openvino", "fp32", "backbone")
    with torch.no_grad():
        again(wide)
    assert not again.conversions[0]["trace_reused"]  # the cache forgets traces too


def test_the_trace_example_crops_a_pyramid_keeping_its_strides():
    pyramid = [torch.zeros(1, 8, 200 // 2 ** i, 336 // 2 ** i) for i in range(4)] + [torch.zeros(1, 8, 13, 21)]
    crops = R.trace_example(pyramid, side=64)
    assert [tuple(t.shape[2:]) for t in crops] == [(64, 64), (32, 32), (16, 16), (8, 8), (5, 4)]
    assert [tuple(t.shape) for t in R.trace_example([torch.zeros(1, 3, 48, 640)], side=64)] == [(1, 3, 48, 64)]


def test_a_part_traced_on_a_crop_serves_the_whole_input(mask_rcnn, monkeypatch):
    """Backbone, neck (top-down sums at the pyramid's sizes) and RPN head traced on a 32-pixel crop match torch at
    the full size."""
    monkeypatch.setattr(R, "TRACE_SIDE", 32)
    R.clear_cache()
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(2))
    outs, parts = runtime_convs(mask_rcnn, "openvino", "fp32", x)
    assert [p.conversions[0]["traced_at"] for p in parts] == ["1x3x32x32", "1x256x24x32", "1x256x24x32"]
    for ref, out in zip(torch_convs(mask_rcnn, x), outs):
        assert all(relative_error(r, o) < 1e-4 for r, o in zip(flat(ref), flat(out)))
    R.clear_cache()


@pytest.mark.parametrize("runtime", CONVERTED)
def test_fp32_agrees_with_torch(mask_rcnn, runtime, tiny_input):
    ref = torch_convs(mask_rcnn, tiny_input)
    got, parts = runtime_convs(mask_rcnn, runtime, "fp32", tiny_input)
    cls, reg = got[2]
    assert isinstance(cls, list) and isinstance(reg, list) and len(cls) == len(reg) == 5  # (cls_scores, bbox_preds)
    for r, g in zip(ref, got):
        assert relative_error(tuple(flat(r)), tuple(flat(g))) < 1e-4
    if runtime == "openvino":  # fp32 asked for explicitly: the plugin would pick bf16 on a bf16 CPU
        assert all(c["inference_precision"] == "f32" for p in parts for c in p.conversions)


@pytest.mark.parametrize("runtime", CONVERTED)
def test_roi_heads_convert_once_for_every_number_of_rois(mask_rcnn, runtime):
    """Box head (N x 256 x 7 x 7 -> cls_score, bbox_pred) and mask head (N x 256 x 14 x 14 -> N x C x 28 x 28):
    one conversion with a dynamic N, fp32 within 1e-4 of torch; N == 0 never reaches the runtime."""
    rh = mask_rcnn.roi_head
    R.clear_cache(runtime)
    g = torch.Generator().manual_seed(1)
    for head, name, size in ((rh.bbox_head, "bbox_head", 7), (rh.mask_head, "mask_head", 14)):
        m = R.RuntimeModule(head, runtime, "fp32", name, dynamic_batch=True)
        for n in (3, 1, 7):
            x = torch.randn(n, 256, size, size, generator=g)
            with torch.no_grad():
                ref, got = head(x), m(x)
            assert type(got) is type(ref) and [t.shape for t in flat(got)] == [t.shape for t in flat(ref)]
            assert relative_error(tuple(flat(ref)), tuple(flat(got))) < 1e-4
        assert len(m.conversions) == 1 and m.conversions[0]["shape"] == f"Nx256x{size}x{size}"
        assert m.is_converted(torch.zeros(40, 256, size, size))  # the key holds N as dynamic
        with torch.no_grad():
            empty = m(torch.zeros(0, 256, size, size))
        expect = [(0, 81), (0, 320)] if name == "bbox_head" else [(0, 80, 28, 28)]
        assert [tuple(t.shape) for t in flat(empty)] == expect and len(m.conversions) == 1
        other = R.RuntimeModule(head, runtime, "fp32", name, dynamic_batch=True)
        with torch.no_grad():
            other(torch.randn(5, 256, size, size))
        assert other.conversions == []  # shared through the cache


# -- int8: OpenVINO + NNCF post-training quantization -----------------------------------------------------------
def _int8_checks(m, entry, samples: int, given: bool):
    c = m.conversions[-1]
    assert c["precision"] == "int8" and c["calibration_samples"] == samples
    assert c["calibration"] == ("given" if given else "first call")
    assert c["quantized_ops"] > 0 and c["int8_ops"] > 0  # FakeQuantize in the ov.Model, u8/i8 in the compiled one
    assert R.int8_ops(entry.native) == c["int8_ops"]
    assert c["inference_precision"] == ("bf16" if cpu_has_bf16() else "f32")  # for the ops left unquantized


def test_int8_roi_head_quantizes_with_its_calibration(mask_rcnn):
    head = mask_rcnn.roi_head.mask_head
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 256, 14, 14, generator=g)
    m = R.RuntimeModule(head, "openvino", "int8", "mask_head", dynamic_batch=True)
    assert m.set_calibration([torch.randn(n, 256, 14, 14, generator=g) for n in (4, 9, 2)]) == 3
    with torch.no_grad():
        out, ref = m(x), head(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    _int8_checks(m, m.compiled(x), samples=3, given=True)
    with torch.no_grad():
        m(torch.randn(11, 256, 14, 14, generator=g))
    assert len(m.conversions) == 1  # any N: the same int8 model
    key = m.key((x,))
    m.set_calibration(m.calibration[:2])  # another calibration set: another model
    assert m.key((x,)) != key and not m.is_converted(x)
    first = R.RuntimeModule(head, "openvino", "int8", "mask_head", dynamic_batch=True)  # no calibration given
    with torch.no_grad():
        first(x)
    _int8_checks(first, first.compiled(x), samples=1, given=False)


def test_int8_static_part_calibrates_across_padded_shapes(mask_rcnn, tiny_input):
    """Quantized once on a model with dynamic spatial dimensions (samples of every shape), then reshaped and
    compiled per input shape."""
    wide = torch_convs(mask_rcnn, tiny_input)[1]
    tall = torch_convs(mask_rcnn, torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(3)))[1]
    m = R.RuntimeModule(mask_rcnn.rpn_head, "openvino", "int8", "rpn_head")
    m.set_calibration([wide, tall])
    with torch.no_grad():
        a = m(wide)
        b = m(tall)
    assert all(torch.isfinite(t).all() for t in flat(a) + flat(b))
    assert [c["shape"].split(",")[0] for c in m.conversions] == ["1x256x16x24", "1x256x24x16"]
    first, second = m.conversions
    assert first["calibration_samples"] == second["calibration_samples"] == 2
    assert first["quantize_s"] > 0 and not first["quantized_reused"]
    assert second["quantized_reused"] and second["quantize_s"] == 0 and second["export_s"] == 0
    _int8_checks(m, m.compiled(tall), samples=2, given=True)


@pytest.mark.slow
def test_int8_pipeline_calibrates_on_images_and_detects(mask_rcnn, images):
    pipe = StagedPipeline(mask_rcnn, Choices(runtime="openvino", precision="int8"), "cpu")
    assert pipe.choices.label() == "stock/int8/ov/full" and pipe.precision.name == "fp32"  # torch parts: fp32
    counts = pipe.calibrate(images[:2])
    assert counts == {k: 2 for k in ("backbone", "neck", "rpn_head", "bbox_head", "mask_head")}
    assert pipe.conversion_costs() == []  # calibration runs torch
    dets = pipe(images[0])
    assert len(dets) > 0 and torch.isfinite(dets.scores).all() and torch.isfinite(dets.bboxes).all()
    costs = pipe.conversion_costs()
    assert [c["part"] for c in costs] == ["backbone", "neck", "rpn_head", "bbox_head", "mask_head"]
    assert all(c["calibration_samples"] == 2 and c["int8_ops"] > 0 for c in costs)


def test_int8_needs_openvino_and_nncf(monkeypatch, mask_rcnn):
    c = Choices(precision="int8", runtime="openvino")  # validates
    r = c.resolve("cpu", mask_rcnn)
    assert (r.precision, r.runtime, r.channels_last) == ("int8", "openvino", False) and r.label() == "stock/int8/ov/full"
    assert Choices.auto(precision="int8").resolve("cpu", mask_rcnn).runtime == "openvino"  # nothing to measure
    assert Choices.auto().resolve("cpu", mask_rcnn).precision != "int8"  # auto never quantizes
    with pytest.raises(InputError, match=r"precision 'int8' is post-training quantization in a runtime, not a torch "
                                         r"precision: use runtime='openvino'"):
        Choices(precision="int8").resolve("cpu", mask_rcnn)
    with pytest.raises(InputError, match="runtime 'onnxruntime' runs precision fp32, not 'int8'"):
        Choices(precision="int8", runtime="onnxruntime").resolve("cpu", mask_rcnn)
    with pytest.raises(InputError, match="runtime 'onnxruntime' runs precision fp32, not 'int8'"):
        R.RuntimeModule(mask_rcnn.rpn_head, "onnxruntime", "int8")
    with pytest.raises(InputError, match="runs on the CPU only"):
        Choices(precision="int8", runtime="openvino").resolve("cuda", mask_rcnn)
    with pytest.raises(InputError, match="unknown precision 'int4'; choose from .*bf16-weights, int8"):
        Choices(precision="int4")
    assert StagedPipeline(mask_rcnn, STOCK, "cpu").calibrate(["unused"]) == {}  # nothing quantized: nothing to do
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(R.RuntimeMissingError, match="precision 'int8' needs nncf to quantize: pip install nncf"):
        Choices(precision="int8", runtime="openvino").resolve("cpu", mask_rcnn)
    with pytest.raises(R.RuntimeMissingError, match="pip install nncf"):
        R.RuntimeModule(mask_rcnn.rpn_head, "openvino", "int8")


@pytest.mark.skipif(not cpu_has_bf16(), reason="the CPU has no bf16 instructions (OpenVINO would run f32)")
def test_openvino_bf16_agrees_softly(mask_rcnn, tiny_input):
    """As close to fp32 as torch's own bf16 autocast. Weights v2 (calibrated BatchNorms) amplify bf16 rounding: both
    are ~0.05-0.09 relative here (on an untrained-like network; ~0.01 at the features of a trained one)."""
    ref = torch_convs(mask_rcnn, tiny_input)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = torch_convs(mask_rcnn, tiny_input)
    got, parts = runtime_convs(mask_rcnn, "openvino", "bf16", tiny_input)
    assert parts[0].conversions[0]["inference_precision"] == "bf16"
    for r, a, g in zip(ref, autocast, got):
        err = relative_error(tuple(flat(r)), tuple(flat(g)))
        assert 0 < err < 0.2 and err < 1.5 * relative_error(tuple(flat(r)), tuple(flat(a))), err


# -- the pipeline -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", CONVERTED)
def test_pipeline_detections_agree_with_stock(mask_rcnn, image, stock_dets, runtime):
    R.clear_cache(runtime)
    pipe = StagedPipeline(mask_rcnn, Choices(runtime=runtime), "cpu")
    assert pipe.choices.label() == f"stock/fp32/{R.SHORT[runtime]}/full"
    m, rh = pipe.model, pipe.model.roi_head
    assert all(isinstance(p, R.RuntimeModule) for p in (m.backbone, m.rpn_head, rh.bbox_head, rh.mask_head))
    assert rh.mask_head.dynamic_batch and not m.backbone.dynamic_batch
    assert not isinstance(mask_rcnn.backbone, R.RuntimeModule)  # the stock model is not touched
    assert not isinstance(mask_rcnn.roi_head.mask_head, R.RuntimeModule)
    timer = StageTimer("cpu", clock=TickClock(), record_function=False)
    dets = pipe(image, timer)
    assert {S.BACKBONE, S.NECK, S.RPN, S.ROI_BBOX, S.ROI_MASK} <= set(timer.times)  # stage ranges as before
    a = compare(stock_dets, dets)
    assert a.passes(box_iou=0.99) and a.score_diff_max < 1e-3, a
    assert a.matched_ref == a.matched_test == 1.0 and len(dets) == len(stock_dets) > 0, a
    assert pipe.last_runtime == runtime
    costs = pipe.conversion_costs()
    assert [c["part"] for c in costs] == ["backbone", "neck", "rpn_head", "bbox_head", "mask_head"]
    assert [c["shape"] for c in costs[3:]] == ["Nx256x7x7", "Nx256x14x14"]
    pipe(image)
    assert len(pipe.conversion_costs()) == 5  # the same padded shape, any number of RoIs: nothing converted again
    assert StagedPipeline(mask_rcnn, STOCK, "cpu").conversion_costs() == []


def test_optimize_uses_the_runtime(mask_rcnn, image, stock_dets):
    p = optimize(mask_rcnn, preprocess="stock", precision="fp32", masks="full", runtime="onnxruntime", device="cpu")
    assert p.choices.runtime == "onnxruntime" and not p.choices.channels_last and not p.choices.compile
    assert isinstance(p.pipeline.model.neck, R.RuntimeModule)
    assert compare(stock_dets, p(image)).passes(box_iou=0.99)


def test_optimize_auto_measures_and_picks(monkeypatch, mask_rcnn, image, stock_dets):
    monkeypatch.setattr(R, "AUTO_TRIALS", 1)
    p = optimize(mask_rcnn, preprocess="stock", precision="fp32", masks="full", device="cpu")
    assert p.choices.runtime == "auto" and "rt:auto" in p.choices.label()
    assert set(p.pipeline.parts) == set(R.candidates("cpu", "fp32")) and "torch" in p.pipeline.parts
    dets = p(image)
    assert p.pipeline.last_runtime in p.pipeline.parts
    (shape, measured), = p.pipeline.runtime_measurements.items()
    assert measured["chosen"] == p.pipeline.last_runtime and set(measured) == {"chosen", *p.pipeline.parts}
    assert compare(stock_dets, dets).passes(box_iou=0.99)


def test_auto_runs_the_roi_heads_in_the_runtime_that_won(monkeypatch, mask_rcnn, image, stock_dets):
    monkeypatch.setattr(R, "pick", lambda key, runs, trials=None: ("onnxruntime", {}))
    R.clear_cache("onnxruntime")
    pipe = StagedPipeline(mask_rcnn, Choices(runtime="auto", precision="fp32"), "cpu")
    rh = pipe.model.roi_head
    torch_heads = (rh.bbox_head, rh.mask_head)
    assert not any(isinstance(h, R.RuntimeModule) for h in torch_heads)
    dets = pipe(image)
    assert pipe.last_runtime == "onnxruntime" and (rh.bbox_head, rh.mask_head) == torch_heads  # swapped back
    assert [c["part"] for c in pipe.conversion_costs()] == ["backbone", "neck", "rpn_head", "bbox_head", "mask_head"]
    assert {c["runtime"] for c in pipe.conversion_costs()} == {"onnxruntime"}
    assert compare(stock_dets, dets).matched_ref == 1.0


class _FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t


@pytest.mark.parametrize("ov_cost, expect", [(0.5, "openvino"), (0.95, "torch"), (1.5, "torch")])
def test_auto_keeps_torch_unless_another_runtime_wins_by_the_margin(monkeypatch, ov_cost, expect):
    fake = _FakeTime()
    monkeypatch.setattr(R, "time", fake)
    calls = {"torch": 0, "openvino": 0}

    def run(name, cost):
        def fn():
            calls[name] += 1
            fake.t += cost
        return fn

    key = ("test", ov_cost)
    winner, med = R.pick(key, {"torch": run("torch", 1.0), "openvino": run("openvino", ov_cost)})
    assert winner == expect and med == pytest.approx({"torch": 1.0, "openvino": ov_cost})
    assert calls == {"torch": 1 + R.AUTO_TRIALS, "openvino": 1 + R.AUTO_TRIALS}  # warm-up, then interleaved trials
    assert R.pick(key, {})[0] == expect and calls["torch"] == 1 + R.AUTO_TRIALS  # measured once per key


# -- clear errors -----------------------------------------------------------------------------------------
def test_unknown_runtime_is_a_clear_error():
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'; choose from torch, openvino, onnxruntime"):
        Choices(runtime="tensorrt")
    with pytest.raises(InputError, match="unknown runtime"):
        optimize(None, runtime="tvm")


def test_missing_runtime_names_the_pip_package(monkeypatch, mask_rcnn):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.raises(R.RuntimeMissingError, match="runtime 'openvino' is not installed: pip install openvino"):
        Choices(runtime="openvino").resolve("cpu", mask_rcnn)
    with pytest.raises(InputError, match="pip install openvino"):
        R.RuntimeModule(mask_rcnn.backbone, "openvino")
    assert "openvino" not in R.candidates("cpu", "fp32") and not R.available("openvino")
    monkeypatch.setitem(sys.modules, "onnx", None)  # ONNX Runtime runs, but torch's exporter needs onnx
    with pytest.raises(R.RuntimeMissingError, match="runtime 'onnxruntime' needs the onnx package to export: "
                                                    "pip install onnx"):
        optimize(mask_rcnn, runtime="onnxruntime", precision="fp32", device="cpu")
    assert R.candidates("cpu", "fp32") == ("torch",)


def test_runtime_and_precision_device_and_torch_levers(mask_rcnn):
    with pytest.raises(InputError, match="runtime 'onnxruntime' runs precision fp32, not 'bf16'"):
        Choices(runtime="onnxruntime", precision="bf16").resolve("cpu", mask_rcnn)
    with pytest.raises(InputError, match="runs on the CPU only"):
        Choices(runtime="openvino").resolve("cuda", mask_rcnn)
    with pytest.raises(InputError, match="not 'bf16-weights'"):
        Choices(runtime="openvino", precision="bf16-weights").resolve("cpu", mask_rcnn)
    for lever in ("channels_last", "compile"):
        with pytest.raises(InputError, match=f"{lever} is a torch lever"):
            Choices(runtime="openvino", **{lever: True}).resolve("cpu", mask_rcnn)
    c = Choices.auto(runtime="openvino", precision="bf16").resolve("cpu", mask_rcnn)
    assert (c.channels_last, c.compile, c.runtime) == (False, False, "openvino")
    # a torch lever asked for: auto keeps torch
    assert Choices.auto(compile=True).resolve("cpu", mask_rcnn).runtime == "torch"
    assert Choices.auto(precision="bf16-weights").resolve("cpu", mask_rcnn).runtime == "torch"
    assert Choices.auto().resolve("cuda", mask_rcnn).runtime == "torch"
    assert R.candidates("cpu", "bf16") == ("torch", "openvino")  # ONNX Runtime runs fp32 only


@pytest.mark.parametrize("runtime, target", [("openvino", "openvino.convert_model"),
                                             ("onnxruntime", "torch.onnx.export")])
def test_a_part_that_cannot_be_converted_is_a_clear_error(monkeypatch, mask_rcnn, runtime, target, tiny_input):
    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nsecond line of converter noise")

    monkeypatch.setattr(target, refuse)
    changed = copy.deepcopy(mask_rcnn.backbone)  # weights no cached conversion holds
    changed.conv1.weight.data.add_(1)
    m = R.RuntimeModule(changed, runtime, "fp32", "backbone")
    with pytest.raises(R.ConversionError, match=rf"could not convert backbone \(ResNet\) to {runtime} at input shape "
                                                r"1x3x64x96: RuntimeError: unsupported operator aten::frobnicate$"):
        m(tiny_input)
