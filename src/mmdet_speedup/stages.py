"""The stage names, defined once: timer, profiler ranges, CSV columns and charts all use these."""
from __future__ import annotations

LOAD = "load"
PREPROCESS = "preprocess"
DATA_PREPROCESSOR = "data_preprocessor"
BACKBONE = "backbone"
NECK = "neck"
RPN = "rpn"
ROI_BBOX = "roi_bbox"
ROI_MASK = "roi_mask"
MASK_POSTPROCESS = "mask_postprocess"
TOTAL = "total"
RPN_NMS = "rpn.nms"
ROI_BBOX_NMS = "roi_bbox.nms"
# A consumer stage outside the model: RLE-encoding every instance (so `raw` masks cannot hide cost).
CONSUMER_RLE = "consumer.rle"

#: Top-level stages in pipeline order; they add up to (roughly) `total`.
STAGES: tuple[str, ...] = (
    LOAD, PREPROCESS, DATA_PREPROCESSOR, BACKBONE, NECK, RPN, ROI_BBOX, ROI_MASK, MASK_POSTPROCESS,
)
#: Recorded inside a parent stage; never added into the sum.
NESTED: dict[str, str] = {RPN_NMS: RPN, ROI_BBOX_NMS: ROI_BBOX}
ALL: tuple[str, ...] = STAGES + (TOTAL,) + tuple(NESTED) + (CONSUMER_RLE,)


def parent(stage: str) -> str:
    return stage.split(".", 1)[0]
