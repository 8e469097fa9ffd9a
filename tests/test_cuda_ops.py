"""mmcv's compiled ops routed to torchvision (``cuda_ops``): equal outputs on the CPU, the branch chosen by device.

There is no GPU here: the CUDA branch is selected with stand-ins (a fake CUDA tensor, ``mmcv_has_cuda_ops`` and
``torch.cuda.is_available`` monkeypatched), and the routed kernels are held to mmcv's on CPU tensors through the
testing hook ``force_torchvision`` (the same code a CUDA tensor takes, on the CPU).
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision

import mmcv._ext
import mmcv.ops
from mmdet_speedup import STOCK, StagedPipeline, cuda_ops, identical, stock_test_step
from mmdet_speedup.roi_align import TorchvisionRoIAlign

NMS_MODULE = sys.modules["mmcv.ops.nms"]
ROI_MODULE = sys.modules["mmcv.ops.roi_align"]
FAKE_CUDA = SimpleNamespace(device=torch.device("cuda"))  # all a router reads of a tensor is its device


@pytest.fixture(autouse=True)
def _clean():
    """Every test starts and ends with mmcv's own functions in place and the counters at zero."""
    cuda_ops.uninstall()
    cuda_ops.calls.clear()
    yield
    cuda_ops.uninstall()
    cuda_ops.calls.clear()


def block_mmcv_kernels(monkeypatch) -> None:
    """mmcv's compiled NMS and RoIAlign raise: whatever still runs went through torchvision."""
    def boom(*a, **k):
        raise AssertionError("mmcv's compiled op was called")

    monkeypatch.setattr(mmcv._ext, "nms", boom)
    monkeypatch.setattr(mmcv._ext, "roi_align_forward", boom)


@pytest.fixture
def no_mmcv_kernels(monkeypatch):
    block_mmcv_kernels(monkeypatch)


def boxes_with_ties(seed: int, n: int = 800) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered boxes (many overlaps above any threshold) with scores on a 0.1 grid (many exact ties)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40 + 1], 1)
    half = n // 2
    boxes[half:] = boxes[: n - half] + torch.rand(n - half, 4, generator=g) * 3  # near-duplicates
    boxes[-20:] = boxes[:20]  # exact duplicates
    scores = (torch.rand(n, generator=g) * 10).round() / 10
    return boxes, scores


# -- NMS: the routed kernel equals mmcv's -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_equals_mmcv_with_ties_and_overlaps(seed, iou):
    boxes, scores = boxes_with_ties(seed)
    ref_dets, ref_keep = mmcv.ops.nms(boxes, scores, iou)
    dets, keep = cuda_ops.nms(boxes, scores, iou)
    assert len(ref_keep) > 0
    assert torch.equal(keep, ref_keep) and torch.equal(dets, ref_dets)


def test_plain_torchvision_nms_differs_on_ties():
    """Why ``cuda_ops.nms`` hands torchvision mmcv's order: its own (stable) sort keeps other boxes on ties."""
    differs = 0
    for seed in range(8):
        boxes, scores = boxes_with_ties(seed)
        differs += not torch.equal(torchvision.ops.nms(boxes, scores, 0.5), mmcv.ops.nms(boxes, scores, 0.5)[1])
    assert differs > 0


@pytest.mark.parametrize("kw", [dict(score_threshold=0.45), dict(max_num=37),
                                dict(score_threshold=0.3, max_num=11)])
def test_nms_score_threshold_and_max_num(kw):
    boxes, scores = boxes_with_ties(3)
    ref, got = mmcv.ops.nms(boxes, scores, 0.5, **kw), cuda_ops.nms(boxes, scores, 0.5, **kw)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])


def test_nms_offset_one_on_integer_boxes():
    boxes, scores = boxes_with_ties(5)
    boxes = boxes.round()
    ref, got = mmcv.ops.nms(boxes, scores, 0.5, offset=1), cuda_ops.nms(boxes, scores, 0.5, offset=1)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])
    assert not torch.equal(ref[1], mmcv.ops.nms(boxes, scores, 0.5, offset=0)[1])  # the offset mattered


def test_nms_empty_and_numpy():
    empty = torch.zeros(0, 4), torch.zeros(0)
    for (dets, keep), (rd, rk) in [(cuda_ops.nms(*empty, 0.5), mmcv.ops.nms(*empty, 0.5))]:
        assert dets.shape == rd.shape == (0, 5) and keep.shape == rk.shape == (0,) and keep.dtype == rk.dtype
    boxes, scores = boxes_with_ties(1)
    dets, keep = cuda_ops.nms(boxes.numpy(), scores.numpy(), 0.5)
    rd, rk = mmcv.ops.nms(boxes.numpy(), scores.numpy(), 0.5)
    assert isinstance(dets, np.ndarray) and np.array_equal(keep, rk) and np.array_equal(dets, rd)


def test_batched_nms_routed_equals_mmcv():
    """mmdet calls ``batched_nms``, which finds ``nms`` by name in its module: the router must be what it finds."""
    boxes, scores = boxes_with_ties(2, n=3000)
    idxs = torch.arange(len(scores)) % 7
    for cfg in (dict(type="nms", iou_threshold=0.7), dict(type="nms", iou_threshold=0.5, split_thr=500),
                dict(type="nms", iou_thr=0.6)):  # iou_thr: the old keyword mmcv still takes
        ref = mmcv.ops.batched_nms(boxes, scores, idxs, cfg)
        with cuda_ops.force_torchvision():
            got = mmcv.ops.batched_nms(boxes, scores, idxs, cfg)
        assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0]), cfg
    assert cuda_ops.calls["nms"] >= 3


# -- RoIAlign: the routed kernel equals mmcv's ------------------------------------------------------------------
def feats_and_rois(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 16, 50, 76, generator=g)
    xy = torch.rand(400, 2, generator=g) * 560
    rois = torch.cat([torch.randint(0, 2, (400, 1), generator=g).float(), xy,
                      xy + torch.rand(400, 2, generator=g) * 200 + 0.5], 1)
    rois[:5, 3:] = rois[:5, 1:3]  # zero-size RoIs
    return feats, rois


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_equals_mmcv(sampling_ratio, aligned):
    feats, rois = feats_and_rois()
    ref = mmcv.ops.RoIAlign((7, 7), 0.125, sampling_ratio, aligned=aligned)(feats, rois)
    assert torch.equal(cuda_ops.roi_align(feats, rois, 7, 0.125, sampling_ratio, "avg", aligned), ref)
    assert torch.equal(TorchvisionRoIAlign((7, 7), 0.125, sampling_ratio, aligned)(feats, rois), ref)  # module side
    with cuda_ops.force_torchvision():
        got = mmcv.ops.RoIAlign((7, 7), 0.125, sampling_ratio, aligned=aligned)(feats, rois)
    assert torch.equal(got, ref) and cuda_ops.calls["roi_align"] == 1


def test_roi_align_max_pooling_stays_mmcv():
    feats, rois = feats_and_rois(1)
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        cuda_ops.roi_align(feats, rois, 7, 0.125, 0, "max")
    ref = mmcv.ops.RoIAlign(7, 0.125, 0, pool_mode="max")(feats, rois)
    with cuda_ops.force_torchvision():  # torchvision has no max RoIAlign: the router leaves it to mmcv
        assert torch.equal(mmcv.ops.RoIAlign(7, 0.125, 0, pool_mode="max")(feats, rois), ref)
    assert cuda_ops.calls["roi_align"] == 0


# -- the branch, by device --------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, has", [("not available", False), ("12.1", True), ("", False)])
def test_mmcv_has_cuda_ops_reads_the_compiled_version(monkeypatch, version, has):
    monkeypatch.setattr(cuda_ops, "_mmcv_cuda_version", lambda: version)
    assert cuda_ops.mmcv_has_cuda_ops() is has


def test_this_mmcv_is_the_cpu_ops_wheel():
    assert cuda_ops.mmcv_has_cuda_ops() == (mmcv.ops.get_compiling_cuda_version() != "not available")


@pytest.mark.parametrize("has_cuda_ops", [False, True])
def test_plan_by_device(monkeypatch, has_cuda_ops):
    monkeypatch.setattr(cuda_ops, "mmcv_has_cuda_ops", lambda: has_cuda_ops)
    for roi in ("mmcv", "torchvision", "threaded"):
        assert cuda_ops.plan("cpu", roi) == "mmcv"  # the CPU path is mmdet's own, whatever the choice
        assert not cuda_ops.route_needed("cpu")
    assert cuda_ops.route_needed("cuda") is not has_cuda_ops
    assert cuda_ops.route_needed(torch.device("cuda", 1)) is not has_cuda_ops
    # stock keeps mmcv's ops where they exist, and falls back only where they do not
    assert cuda_ops.plan("cuda", "mmcv") == ("mmcv" if has_cuda_ops else "fallback")
    # torchvision's RoIAlign on CUDA is the choice of torchvision's kernels: NMS goes along
    assert cuda_ops.plan("cuda:0", "torchvision") == cuda_ops.plan("cuda", "threaded") == "torchvision"


def test_auto_device_selects_routing_when_torch_sees_a_gpu(monkeypatch):
    from mmdet_speedup.timing import resolve_device

    monkeypatch.setattr(cuda_ops, "mmcv_has_cuda_ops", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_ops.plan(resolve_device("auto")) == "fallback"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_ops.plan(resolve_device("auto")) == "mmcv"


@pytest.mark.parametrize("has_cuda_ops", [False, True])
def test_uses_torchvision_by_tensor_device_and_scope(monkeypatch, has_cuda_ops):
    monkeypatch.setattr(cuda_ops, "mmcv_has_cuda_ops", lambda: has_cuda_ops)
    cpu = torch.zeros(1, 4)
    assert cuda_ops.uses_torchvision(FAKE_CUDA) is not has_cuda_ops  # the fallback alone
    assert not cuda_ops.uses_torchvision(cpu) and not cuda_ops.uses_torchvision(cpu.numpy())
    with cuda_ops.routing("torchvision"):
        assert cuda_ops.uses_torchvision(FAKE_CUDA) and not cuda_ops.uses_torchvision(cpu)
    for plan in ("mmcv", "fallback"):
        with cuda_ops.routing(plan):
            assert cuda_ops.uses_torchvision(FAKE_CUDA) is not has_cuda_ops
    with cuda_ops.force_torchvision():
        assert cuda_ops.uses_torchvision(cpu)
        with cuda_ops.routing("torchvision"):  # a narrower scope inside keeps the wider one
            assert cuda_ops.uses_torchvision(cpu)
    assert not cuda_ops.uses_torchvision(cpu)
    with pytest.raises(ValueError, match="unknown ops plan"):
        with cuda_ops.routing("cudnn"):
            pass


@pytest.mark.parametrize("has_cuda_ops", [False, True])
def test_installed_router_sends_cuda_tensors_to_torchvision(monkeypatch, has_cuda_ops):
    """The names mmdet's calls resolve to: a CUDA tensor reaches the torchvision op, a CPU tensor mmcv's."""
    monkeypatch.setattr(cuda_ops, "mmcv_has_cuda_ops", lambda: has_cuda_ops)
    seen = []
    monkeypatch.setattr(cuda_ops, "nms", lambda *a: seen.append("nms") or ("dets", "keep"))
    monkeypatch.setattr(cuda_ops, "roi_align", lambda *a: seen.append("roi_align") or "pooled")
    cuda_ops.install()
    boxes, scores = boxes_with_ties(0, 50)
    ref = mmcv.ops.nms(boxes, scores, 0.5)  # mmcv.ops.nms is the router now: CPU tensors pass through
    assert mmcv.ops.nms is not cuda_ops._MMCV["nms"] and seen == [] and cuda_ops.calls["nms"] == 0
    assert torch.equal(ref[1], cuda_ops._MMCV["nms"](boxes, scores, 0.5)[1])
    monkeypatch.setitem(cuda_ops._MMCV, "nms", lambda *a: seen.append("mmcv:nms"))
    monkeypatch.setitem(cuda_ops._MMCV, "roi_align", lambda *a: seen.append("mmcv:roi_align"))
    NMS_MODULE.nms(FAKE_CUDA, FAKE_CUDA, 0.5)
    ROI_MODULE.roi_align(FAKE_CUDA, FAKE_CUDA, 7, 0.25, 0, "avg", True)
    assert seen == (["mmcv:nms", "mmcv:roi_align"] if has_cuda_ops else ["nms", "roi_align"])
    with cuda_ops.routing("torchvision"):
        NMS_MODULE.nms(FAKE_CUDA, FAKE_CUDA, 0.5)
        ROI_MODULE.roi_align(FAKE_CUDA, FAKE_CUDA, 7, 0.25, 0, "avg", True)
    assert seen[-2:] == ["nms", "roi_align"]


def test_prepare_installs_and_warns_only_for_the_fallback(monkeypatch):
    monkeypatch.setattr(cuda_ops, "mmcv_has_cuda_ops", lambda: True)
    assert cuda_ops.prepare("cuda") == "mmcv" and not cuda_ops.is_installed()  # stock: mmdet as shipped
    assert cuda_ops.prepare("cpu", "torchvision") == "mmcv" and not cuda_ops.is_installed()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda_ops.prepare("cuda", "torchvision") == "torchvision" and cuda_ops.is_installed()
    cuda_ops.uninstall()
    monkeypatch.setattr(cuda_ops, "mmcv_has_cuda_ops", lambda: False)
    with pytest.warns(cuda_ops.FallbackWarning, match="mmcv has no CUDA ops"):
        assert cuda_ops.prepare("cuda") == "fallback"
    assert cuda_ops.is_installed()
    cuda_ops.uninstall()
    monkeypatch.setattr(cuda_ops, "torchvision_has_cuda_ops", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA build of torchvision"):
        cuda_ops.prepare("cuda")


def test_torchvision_has_cuda_kernels_is_read_from_the_dispatcher():
    has = torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CUDA")
    assert cuda_ops.torchvision_has_cuda_ops() is has


# -- install / uninstall ----------------------------------------------------------------------------------------
def test_install_is_idempotent_and_uninstall_restores():
    originals = {(m, n): getattr(sys.modules[m], n) for b in cuda_ops.BINDINGS.values() for m, n in b}
    assert originals[("mmcv.ops.nms", "nms")] is originals[("mmcv.ops", "nms")]
    cuda_ops.install()
    routers = {k: getattr(sys.modules[k[0]], k[1]) for k in originals}
    assert all(routers[k] is not originals[k] for k in originals) and cuda_ops.is_installed()
    cuda_ops.install()  # a second install changes nothing: the routers never wrap each other
    assert all(getattr(sys.modules[m], n) is routers[(m, n)] for m, n in originals)
    assert cuda_ops._MMCV["nms"] is originals[("mmcv.ops.nms", "nms")]
    cuda_ops.uninstall()
    assert all(getattr(sys.modules[m], n) is f for (m, n), f in originals.items()) and not cuda_ops.is_installed()
    cuda_ops.uninstall()
    assert all(getattr(sys.modules[m], n) is f for (m, n), f in originals.items())


def test_installed_context_leaves_an_outer_install_alone():
    original = NMS_MODULE.nms
    with cuda_ops.installed():
        router = NMS_MODULE.nms
        with cuda_ops.installed():
            assert NMS_MODULE.nms is router
        assert NMS_MODULE.nms is router  # the inner context did not install, so it did not uninstall
    assert NMS_MODULE.nms is original
    cuda_ops.install()
    with cuda_ops.force_torchvision():
        pass
    assert cuda_ops.is_installed()


# -- whole detectors: routed (forced, on CPU tensors) vs mmcv's ---------------------------------------------------
def test_pipeline_on_the_cpu_keeps_mmcv(mask_rcnn, image, stock_dets):
    pipe = StagedPipeline(mask_rcnn, STOCK.replace(roi_align="torchvision"), "cpu")
    assert pipe.ops == "mmcv" and not cuda_ops.is_installed()
    assert StagedPipeline(mask_rcnn, STOCK, "cpu").ops == "mmcv"


def test_mask_rcnn_routed_equals_mmcv(mask_rcnn, image, stock_dets, no_mmcv_kernels):
    ref = StagedPipeline(mask_rcnn, STOCK, "cpu")
    with pytest.raises(AssertionError, match="compiled op was called"):  # the guard works
        ref(image)
    with cuda_ops.force_torchvision():
        staged, stock = ref(image), stock_test_step(mask_rcnn, image)
    assert len(stock_dets) >= 50 and stock_dets.masks is not None
    assert identical(stock_dets, stock) and identical(stock_dets, staged)
    # per image one RPN and one box NMS call; RoIAlign at least once for boxes and once for masks
    assert cuda_ops.calls["nms"] == 4 and cuda_ops.calls["roi_align"] >= 4


def test_pipeline_stages_open_the_plans_routing(mask_rcnn, image, stock_dets, monkeypatch):
    """With a pipeline's plan "torchvision" (what CUDA with torchvision's RoIAlign gets) the NMS stages route."""
    monkeypatch.setattr(cuda_ops, "mmcv_has_cuda_ops", lambda: True)
    pipe = StagedPipeline(mask_rcnn, STOCK.replace(roi_align="torchvision"), "cpu")
    pipe.ops = "torchvision"
    opened, routing = [], cuda_ops.routing

    @contextlib.contextmanager
    def spy(plan):
        with routing(plan):
            opened.append((plan, cuda_ops.uses_torchvision(FAKE_CUDA)))
            yield

    monkeypatch.setattr(cuda_ops, "routing", spy)
    with cuda_ops.installed():
        dets = pipe(image)
    assert opened == [("torchvision", True)] * 2  # proposals (RPN NMS) and boxes (box NMS)
    assert not cuda_ops.uses_torchvision(FAKE_CUDA)  # outside the stages mmcv's CUDA ops would run
    assert cuda_ops.calls["nms"] == 0  # CPU tensors: still mmcv's
    assert identical(stock_dets, dets)


@pytest.mark.slow
def test_cascade_routed_equals_mmcv(image, monkeypatch):
    import mmdet_speedup as ms

    model = ms.build_detector("cascade-mask-rcnn_r50_fpn_1x_coco", device="cpu",
                              workload=ms.Workload(scale=(320, 224), dets_per_image=20, rpn_proposals=100))
    ref = stock_test_step(model, image)
    block_mmcv_kernels(monkeypatch)
    with cuda_ops.force_torchvision():
        staged, stock = ms.StagedPipeline(model, ms.STOCK, "cpu")(image), stock_test_step(model, image)
    assert len(ref) > 0 and identical(ref, stock) and identical(ref, staged)
    assert cuda_ops.calls["nms"] == 4 and cuda_ops.calls["roi_align"] >= 12  # 3 box + 3 mask stages, twice
