"""Swapping the RoI extractors' RoIAlign: mmcv's CPU kernel versus torchvision's.

Once the convolutions run on AMX, RoIAlign over 1000 proposals is the largest stage left on this CPU.
torchvision's kernel computes the same thing (bit-identical outputs for ``aligned=True``, adaptive sampling)
in less time here; on CUDA both are fast and ``mmcv`` stays the default.
"""
from __future__ import annotations

from torch import Tensor, nn

ROI_ALIGN_IMPLS = ("mmcv", "torchvision")


def swap_roi_align(roi_head, impl: str) -> None:
    """Replace the RoI extractors' layers (bbox and mask) with ``impl``; ``mmcv`` leaves them as they are."""
    if impl not in ROI_ALIGN_IMPLS:
        raise ValueError(f"unknown roi_align {impl!r}; choose from {', '.join(ROI_ALIGN_IMPLS)}")
    if impl == "mmcv":
        return
    for name in ("bbox_roi_extractor", "mask_roi_extractor"):
        ext = getattr(roi_head, name, None)
        if ext is None or not hasattr(ext, "roi_layers"):
            continue
        layers = []
        for layer in ext.roi_layers:
            if getattr(layer, "pool_mode", "avg") != "avg" or not hasattr(layer, "spatial_scale"):
                raise ValueError(f"{type(layer).__name__} cannot be swapped (only avg RoIAlign)")
            args = (layer.output_size, layer.spatial_scale, layer.sampling_ratio, layer.aligned)
            layers.append(TorchvisionRoIAlign(*args))
        ext.roi_layers = nn.ModuleList(layers)


class TorchvisionRoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, float(spatial_scale)
        self.sampling_ratio, self.aligned = int(sampling_ratio), aligned

    def forward(self, feats: Tensor, rois: Tensor) -> Tensor:
        from torchvision.ops import roi_align

        return roi_align(feats, rois.to(feats.dtype), self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned)
