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
# A deployed whole-model graph (mmdeploy's export in ONNX Runtime or OpenVINO): backbone to mask logits in one run.
GRAPH = "graph"

#: Top-level stages in pipeline order; they add up to (roughly) `total`.
STAGES: tuple[str, ...] = (
    LOAD, PREPROCESS, DATA_PREPROCESSOR, BACKBONE, NECK, RPN, ROI_BBOX, ROI_MASK, MASK_POSTPROCESS,
)
#: Cascade R-CNN's RoI stages that get their own range (mmdet's cascade configs have three).
CASCADE_DEPTH = 3


def cascade_stage(parent: str, index: int) -> str:
    """The range of one cascade stage's head inside ``roi_bbox`` or ``roi_mask``: ``roi_bbox.stage1`` ..."""
    return f"{parent}.stage{index + 1}"


#: Recorded inside a parent stage; never added into the sum.
NESTED: dict[str, str] = {RPN_NMS: RPN, ROI_BBOX_NMS: ROI_BBOX,
                          **{cascade_stage(p, i): p for p in (ROI_BBOX, ROI_MASK) for i in range(CASCADE_DEPTH)}}
ALL: tuple[str, ...] = STAGES + (TOTAL,) + tuple(NESTED) + (CONSUMER_RLE, GRAPH)
#: What a chart of staged and deployed rows side by side shows, in order: ``graph`` stands where the model's stages do.
WITH_GRAPH: tuple[str, ...] = STAGES[:3] + (GRAPH,) + STAGES[3:]


def parent(stage: str) -> str:
    return stage.split(".", 1)[0]
