import numpy as np
import pytest
import torch

from mmdet_speedup import (STOCK, BoxMasks, Choices, LegacyMasks, RawMasks, StagedPipeline, compare, identical,
                           load_image, optimize)
from mmdet_speedup.masks import rle_encode
from mmdet_speedup.preprocess import make_preprocessor

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 is CUDA-only (TensorCores); no GPU here")


# -- pre-processing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["legacy", "device", "auto"])
def test_preprocess_variants_match_stock_inputs(mask_rcnn, images, variant):
    for path in images[:3]:
        img = load_image(path)
        ref, ref_s = make_preprocessor("stock", mask_rcnn, "cpu")(img)
        x, s = make_preprocessor(variant, mask_rcnn, "cpu")(img)
        assert x.shape == ref.shape and x.dtype == torch.float32
        for k in ("ori_shape", "img_shape", "scale_factor", "pad_shape", "batch_input_shape"):
            assert tuple(s[0].metainfo[k]) == tuple(ref_s[0].metainfo[k]), k
        diff = (x - ref).abs()
        # legacy is cv2's float normalize (rounding only); device is torch's uint8 bilinear resize, which rounds
        # differently from cv2's fixed-point one: at most a few grey levels (one level = 1/57 after normalize)
        tol_max, tol_mean = (1e-4, 1e-5) if variant == "legacy" else (6 / 57, 0.5 / 57)
        if variant == "auto":
            tol_max, tol_mean = 6 / 57, 0.5 / 57
        assert float(diff.max()) <= tol_max and float(diff.mean()) <= tol_mean, (variant, float(diff.max()))


def test_device_preprocess_is_exact_without_resize(mask_rcnn):
    img = np.random.default_rng(0).integers(0, 256, (800, 1200, 3), dtype=np.uint8)  # already at scale
    ref, _ = make_preprocessor("stock", mask_rcnn, "cpu")(img[:320, :480].copy())
    x, _ = make_preprocessor("device", mask_rcnn, "cpu")(img[:320, :480].copy())
    assert torch.allclose(x, ref, atol=1e-5)


@pytest.mark.parametrize("variant", ["legacy", "device"])
def test_preprocess_detections_match_stock(mask_rcnn, images, variant):
    for path in images[:2]:
        ref = StagedPipeline(mask_rcnn, STOCK, "cpu")(path)
        test = StagedPipeline(mask_rcnn, Choices(preprocess=variant), "cpu")(path)
        a = compare(ref, test)
        if variant == "legacy":  # same resize (cv2), float normalize: rounding only
            assert a.n_ref >= 50 and a.passes(), a
        else:
            # torch's uint8 bilinear rounds differently from cv2's by a few grey levels (held there by
            # test_preprocess_variants_match_stock_inputs). Weights v2 (calibrated BatchNorms) amplify that ~30x
            # by the features, so detections are held only to the same count and workload (issue 12's report).
            assert a.n_ref >= 50 and a.n_test == a.n_ref, a


def test_unknown_variants_rejected():
    with pytest.raises(ValueError, match="unknown preprocess"):
        Choices(preprocess="gpu")
    with pytest.raises(ValueError, match="unknown precision"):
        Choices(precision="int4")  # int8 exists (OpenVINO only: checked against the runtime by resolve)
    with pytest.raises(ValueError, match="unknown masks"):
        Choices(masks="png")


# -- masks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["legacy", "box", "raw"])
def test_mask_variants_paste_back_to_full(mask_rcnn, image, stock_dets, variant):
    dets = StagedPipeline(mask_rcnn, STOCK.replace(masks=variant), "cpu")(image)
    kind = {"legacy": LegacyMasks, "box": BoxMasks, "raw": RawMasks}[variant]
    assert isinstance(dets.masks, kind)
    assert torch.equal(dets.bboxes, stock_dets.bboxes) and torch.equal(dets.scores, stock_dets.scores)
    a = compare(stock_dets, dets)
    assert a.matched_ref == 1.0 and a.mask_iou_min >= 0.99
    assert identical(stock_dets, dets)  # on the CPU mmdet pastes box-local too: bit-identical
    full = stock_dets.masks
    assert dets.masks.to_rle() == full.to_rle() == [rle_encode(m.numpy()) for m in full.to_full()]
    assert [dets.masks.paste(i)[0].sum() for i in range(len(full))] == [full.paste(i)[0].sum() for i in range(len(full))]


def test_lazy_paste_single_instance(mask_rcnn, image, stock_dets):
    dets = StagedPipeline(mask_rcnn, STOCK.replace(masks="raw"), "cpu")(image)
    m, y0, x0 = dets.masks.paste(3)
    full = stock_dets.masks.to_full()[3]
    assert torch.equal(full[y0:y0 + m.shape[0], x0:x0 + m.shape[1]], m)
    assert int(full.sum()) == int(m.sum())  # nothing of the mask lies outside the pasted region
    assert dets.masks.nbytes() < stock_dets.masks.nbytes() / 10


def test_raw_masks_any_size_like_c4():
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 1, 14, 14, generator=g)
    boxes = torch.tensor([[10, 20, 60, 90], [0, 0, 30, 30], [50, 40, 99, 79], [5, 5, 6, 6], [20, 10, 80, 70]],
                         dtype=torch.float32)
    raw = RawMasks(probs, boxes, (80, 100), 0.5)
    full = raw.to_full()
    for i in range(5):
        ref, (ys, xs) = _do_paste_mask(probs[i:i + 1], boxes[i:i + 1], 80, 100, skip_empty=True)
        expect = torch.zeros(80, 100, dtype=torch.bool)
        expect[ys, xs] = ref[0] >= 0.5
        assert torch.equal(full[i], expect)


# -- precision ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision, device", [
    pytest.param("bf16", "cpu", id="bf16-cpu"),
    pytest.param("fp16", "cuda", id="fp16-cuda", marks=[pytest.mark.cuda, CUDA]),
])
def test_reduced_precision_dtype_contracts(mask_rcnn, image, monkeypatch, precision, device):
    """``precision.py``'s contracts: backbone, neck and the heads' layers run in the reduced dtype (autocast);
    NMS, box decoding, RoIAlign's inputs (fp32, NCHW), the mask head's post-processing and paste, and the
    outputs stay fp32."""
    import copy

    import mmdet.models.dense_heads.rpn_head as rpn_mod
    import mmdet.models.layers.bbox_nms as nms_mod
    import mmdet.models.roi_heads.mask_heads.fcn_mask_head as fcn_mod

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    pipe = StagedPipeline(copy.deepcopy(mask_rcnn).to(device), Choices(precision=precision, channels_last=True),
                          device)
    model, rh = pipe.model, pipe.model.roi_head
    seen: dict[str, set] = {}

    def note(name, *tensors):
        for t in tensors:
            for x in (t if isinstance(t, (tuple, list)) else (t,)):
                seen.setdefault(name, set()).add(x.dtype)

    def out_hook(name):
        return lambda mod, args, out: note(name, out)

    def roi_align_hook(name):
        def fn(mod, args):
            feats, rois = args[0], args[1]
            note(name + ".feats", feats)
            note(name + ".rois", rois)
            seen.setdefault(name + ".nchw", set()).add(feats.is_contiguous())
        return fn

    hooks = [model.backbone.register_forward_hook(out_hook("backbone")),
             model.neck.register_forward_hook(out_hook("neck")),
             rh.bbox_head.fc_cls.register_forward_hook(out_hook("fc_cls")),
             rh.mask_head.conv_logits.register_forward_hook(out_hook("conv_logits"))]
    for ext in ("bbox_roi_extractor", "mask_roi_extractor"):
        hooks += [layer.register_forward_pre_hook(roi_align_hook(ext)) for layer in getattr(rh, ext).roi_layers]

    def spy(name, fn, *keys):
        """Records the dtype of the named arguments (positional ones by index)."""
        def wrapped(*args, **kw):
            for k in keys:
                note(name, kw[k] if isinstance(k, str) else args[k])
            return fn(*args, **kw)
        return wrapped

    for mod, name in ((rpn_mod, "rpn.nms"), (nms_mod, "bbox.nms")):  # mmdet imports batched_nms by name
        monkeypatch.setattr(mod, "batched_nms", spy(name, mod.batched_nms, 0, 1))
    monkeypatch.setattr(model.rpn_head.bbox_coder, "decode", spy("rpn.decode", model.rpn_head.bbox_coder.decode, 0, 1))
    monkeypatch.setattr(rh.bbox_head.bbox_coder, "decode", spy("bbox.decode", rh.bbox_head.bbox_coder.decode, 0, 1))
    monkeypatch.setattr(rh.bbox_head, "predict_by_feat",
                        spy("bbox.predict_by_feat", rh.bbox_head.predict_by_feat, "rois", "cls_scores", "bbox_preds"))
    monkeypatch.setattr(rh.mask_head, "predict_by_feat",
                        spy("mask.predict_by_feat", rh.mask_head.predict_by_feat, "mask_preds"))
    monkeypatch.setattr(fcn_mod, "_do_paste_mask", spy("mask.paste", fcn_mod._do_paste_mask, 0, 1))
    try:
        dets = pipe(image)
    finally:
        for h in hooks:
            h.remove()
    f32 = {torch.float32}
    for name in ("backbone", "neck", "fc_cls", "conv_logits"):
        assert seen.get(name) == {low}, (name, seen.get(name))
    for name in ("rpn.nms", "bbox.nms", "rpn.decode", "bbox.decode", "bbox.predict_by_feat", "mask.predict_by_feat",
                 "mask.paste", "bbox_roi_extractor.feats", "bbox_roi_extractor.rois", "mask_roi_extractor.feats",
                 "mask_roi_extractor.rois"):
        assert seen.get(name) == f32, (name, seen.get(name))
    assert seen["bbox_roi_extractor.nchw"] == seen["mask_roi_extractor.nchw"] == {True}  # not channels_last
    assert len(dets) > 0 and dets.bboxes.device.type == "cpu"
    assert dets.bboxes.dtype == dets.scores.dtype == torch.float32 and dets.mask_array().dtype == torch.bool


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 256, 50, 84), (2, 8, 37, 5), (1, 3, 1, 1), (1, 1, 9, 7)])
def test_blocked_feature_conversion_is_bit_identical(dtype, shape):
    from mmdet_speedup.precision import to_nchw_float

    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    for rows in (1, 7, 4096):
        y = to_nchw_float(x, rows=rows)
        assert y.dtype == torch.float32 and y.is_contiguous()
        assert torch.equal(y, x.float())
    plain = torch.randn(shape).to(dtype)
    assert torch.equal(to_nchw_float(plain), plain.float()) and to_nchw_float(plain).is_contiguous()


def test_bf16_weights_and_fold_bn_run_and_agree_softly(mask_rcnn, image):
    p = optimize(mask_rcnn, runtime="torch", preprocess="stock", precision="bf16-weights", masks="full", fold_bn=True, device="cpu")
    assert next(p.pipeline.model.backbone.parameters()).dtype == torch.bfloat16
    assert next(mask_rcnn.backbone.parameters()).dtype == torch.float32  # the stock model is untouched
    from mmdet_speedup.equivalence import relative_error
    err = relative_error(*p.features(image))
    alone = optimize(mask_rcnn, runtime="torch", preprocess="stock", precision="bf16-weights", masks="full", fold_bn=False,
                     device="cpu")
    # weights v2 (calibrated BatchNorms) amplify bf16 rounding through the backbone: ~0.2 relative error at the
    # features with or without folding (v1's identity BatchNorms: ~0.01). Folding BN into the convs before the cast
    # must add no error of its own, and the features must stay the same features (unrelated ones: ~1.4).
    assert err <= 1.1 * relative_error(*alone.features(image)) and err < 0.5, err


@pytest.mark.parametrize("impl", ["torchvision", "threaded"])
def test_torchvision_roi_align_is_bit_identical(mask_rcnn, image, stock_dets, impl):
    dets = StagedPipeline(__import__("copy").deepcopy(mask_rcnn), Choices(roi_align=impl), "cpu")(image)
    assert identical(stock_dets, dets)
    with pytest.raises(ValueError, match="unknown roi_align"):
        Choices(roi_align="fast")


@pytest.mark.parametrize("roi_align", ["mmcv", "torchvision", "threaded"])
def test_channels_last_alone_is_equivalent(mask_rcnn, image, stock_dets, roi_align):
    """fp32 + channels_last must not change results (mmcv's RoIAlign misreads channels_last memory)."""
    p = optimize(mask_rcnn, runtime="torch", preprocess="stock", precision="fp32", masks="full", channels_last=True,
                 roi_align=roi_align, device="cpu")
    a = compare(stock_dets, p(image))
    assert a.passes(box_iou=0.99), a


def test_fold_bn_alone_is_equivalent(mask_rcnn, image, stock_dets):
    p = optimize(mask_rcnn, runtime="torch", preprocess="stock", precision="fp32", masks="full", fold_bn=True, device="cpu")
    a = compare(stock_dets, p(image))
    assert a.passes(box_iou=0.99), a


def test_fp16_on_cpu_is_a_clear_error(mask_rcnn):
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        StagedPipeline(mask_rcnn, Choices(precision="fp16"), "cpu")


def test_region_rle_equals_full_image_rle():
    """Lazy RLE never builds the image-sized mask, and must still match pycocotools on it exactly."""
    from mmdet_speedup.masks import region_rle

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(1, 40, 2)
        rh, rw = rng.integers(1, h + 1), rng.integers(1, w + 1)
        y0, x0 = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
        region = torch.from_numpy(rng.random((rh, rw)) < rng.choice([0.0, 0.3, 1.0]))
        full = np.zeros((h, w), np.uint8)
        full[y0:y0 + rh, x0:x0 + rw] = region.numpy()
        assert region_rle(region, int(y0), int(x0), (int(h), int(w))) == rle_encode(full)


def test_threaded_roi_align_equals_one_call_for_any_split():
    from mmdet_speedup.roi_align import TorchvisionRoIAlign

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 8, 40, 60, generator=g)
    xy = torch.rand(101, 2, generator=g) * torch.tensor([200.0, 130.0])
    rois = torch.cat([torch.zeros(101, 1), xy, xy + torch.rand(101, 2, generator=g) * 60 + 1], 1)
    one = TorchvisionRoIAlign(7, 1 / 4, 0, True)(feats, rois)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):  # 3: an odd split, interleaved slices of unequal length
            torch.set_num_threads(threads)
            assert torch.equal(TorchvisionRoIAlign(7, 1 / 4, 0, True, threaded=True)(feats, rois), one)
        assert torch.equal(TorchvisionRoIAlign(7, 1 / 4, 0, True, threaded=True)(feats, rois[:5]), one[:5])
    finally:
        torch.set_num_threads(before)


def test_compile_keeps_results_and_stock_model(mask_rcnn, image, stock_dets):
    """TorchInductor (freezing, fused conv+add+relu) on backbone and neck, fp32: same detections as stock."""
    from mmdet_speedup.compile import is_compiled
    from mmdet_speedup.equivalence import relative_error

    p = optimize(mask_rcnn, runtime="torch", preprocess="stock", precision="fp32", masks="full", roi_align="mmcv", compile=True,
                 device="cpu")
    assert is_compiled(p.pipeline.model.backbone) and is_compiled(p.pipeline.model.neck)
    assert not is_compiled(mask_rcnn.backbone)
    a = compare(stock_dets, p(image))
    assert a.passes(box_iou=0.99), a
    ref, test = p.features(image)
    assert relative_error(ref, test) < 1e-3
