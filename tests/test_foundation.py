"""The foundation: a stock Mask R-CNN from mmdet's packaged config, random weights, one image, CPU."""
import torch


def test_mask_rcnn_runs_on_cpu(mask_rcnn, stock_dets):
    assert next(mask_rcnn.parameters()).device.type == "cpu"
    assert len(stock_dets) > 0
    assert stock_dets.bboxes.dtype == torch.float32 and stock_dets.bboxes.shape[1] == 4
    masks = stock_dets.masks.to_full()
    assert masks.dtype == torch.bool and len(stock_dets.masks) == len(stock_dets)
    assert masks.shape[1:] == stock_dets.image_size == stock_dets.masks.image_size


def test_conditioning_gives_trained_like_workload(stock_dets):
    # random weights alone give no detection above 0.05; conditioned ones fill max_per_img
    assert len(stock_dets) >= 50
    assert 0.05 <= float(stock_dets.scores.min()) and float(stock_dets.scores.max()) <= 1
    # mask probabilities leave 0.5: masks are neither empty nor whole boxes everywhere
    fill = stock_dets.masks.to_full().flatten(1).float().mean(1)
    assert (fill > 0).float().mean() > 0.5


def test_conditioning_is_seeded(image):
    from mmdet_speedup import Workload, build_detector

    from .conftest import SMALL
    a = build_detector("faster-rcnn_r50_fpn_1x_coco", weights="conditioned", device="cpu", workload=Workload(**SMALL))
    b = build_detector("faster-rcnn_r50_fpn_1x_coco", weights="conditioned", device="cpu", workload=Workload(**SMALL))
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
