"""Swapping the RoI extractors' RoIAlign: mmcv's CPU kernel, torchvision's, or torchvision's split over threads.

Once the convolutions run on AMX, RoIAlign over 1000 proposals is the largest stage left on this CPU.
torchvision's kernel computes the same thing (bit-identical outputs for ``aligned=True``, adaptive sampling)
in less time here, but on one core: its CPU loop over RoIs is serial. ``threaded`` hands interleaved slices
of the RoIs to ``torch.get_num_threads()`` threads (the op releases the GIL); each RoI's output is computed by
the same code, so the result is still bit-identical. On CUDA, ``auto`` is ``torchvision``: a choice other than
``mmcv`` there also sends NMS to torchvision, so the optimized rows need no mmcv CUDA build; ``stock`` keeps
mmcv's kernels where they exist and falls back to torchvision's for both where they do not (``cuda_ops``).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

ROI_ALIGN_IMPLS = ("mmcv", "torchvision", "threaded")
MIN_ROIS_PER_THREAD = 16  # below this, thread hand-off costs more than the slice
_POOL: ThreadPoolExecutor | None = None


def check(impl: str) -> str:
    from .checks import choice

    return choice(impl, ROI_ALIGN_IMPLS, "roi_align")


def swap_roi_align(roi_head, impl: str) -> None:
    """Replace the RoI extractors' layers (bbox and mask) with ``impl``; ``mmcv`` leaves them as they are."""
    if check(impl) == "mmcv":
        return
    extractors = []
    for name in ("bbox_roi_extractor", "mask_roi_extractor"):
        ext = getattr(roi_head, name, None)
        extractors += list(ext) if isinstance(ext, nn.ModuleList) else [ext]  # a cascade has one per stage
    for ext in extractors:
        if ext is None or not hasattr(ext, "roi_layers"):
            continue
        layers = []
        for layer in ext.roi_layers:
            if getattr(layer, "pool_mode", "avg") != "avg" or not hasattr(layer, "spatial_scale"):
                raise ValueError(f"{type(layer).__name__} cannot be swapped (only avg RoIAlign)")
            args = (layer.output_size, layer.spatial_scale, layer.sampling_ratio, layer.aligned)
            layers.append(TorchvisionRoIAlign(*args, threaded=impl == "threaded"))
        ext.roi_layers = nn.ModuleList(layers)


class TorchvisionRoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True,
                 threaded: bool = False) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, float(spatial_scale)
        self.sampling_ratio, self.aligned, self.threaded = int(sampling_ratio), aligned, threaded

    def _one(self, feats: Tensor, rois: Tensor) -> Tensor:
        from torchvision.ops import roi_align

        return roi_align(feats, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def forward(self, feats: Tensor, rois: Tensor) -> Tensor:
        rois = rois.to(feats.dtype)
        k = min(torch.get_num_threads(), len(rois) // MIN_ROIS_PER_THREAD)
        if not self.threaded or feats.device.type != "cpu" or k < 2:
            return self._one(feats, rois)
        # Interleaved slices, not contiguous chunks: proposals arrive sorted by score, and neighbouring RoIs
        # tend to have similar sizes, i.e. similar sampling cost.
        parts = list(_pool().map(lambda i: self._one(feats, rois[i::k]), range(k)))
        out = feats.new_empty((len(rois),) + parts[0].shape[1:])
        for i, p in enumerate(parts):
            out[i::k] = p
        return out


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < torch.get_num_threads():
        _POOL = ThreadPoolExecutor(torch.get_num_threads(), thread_name_prefix="roi_align")
    return _POOL
