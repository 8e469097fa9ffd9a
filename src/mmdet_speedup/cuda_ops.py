"""Routing mmcv's compiled ops to torchvision's kernels on CUDA.

mmdet's R-CNN inference (Mask R-CNN FPN and C4, cascade) calls two ops of mmcv's extension (``mmcv._ext``), and
only two: ``nms``, through ``mmcv.ops.batched_nms`` (the RPN's per-level NMS, the box head's per-class NMS), and
``roi_align_forward``, through ``mmcv.ops.RoIAlign`` (the RoI extractors, box and mask, every cascade stage).
An mmcv built with CPU ops only (the cached wheel) raises on CUDA tensors for both; torchvision ships both
kernels for CUDA. Once ``install``ed, the two names are routers that send a call to torchvision when

* its tensor is on CUDA and mmcv has no CUDA ops (the fallback: nothing else could run it), or
* its tensor is on CUDA and the caller asked for torchvision (``routing("torchvision")``: a pipeline's choice), or
* ``force_torchvision()`` is open (a testing hook: CPU tensors too, to hold the routed path to mmcv's here),

and to mmcv otherwise: the CPU path stays mmdet's own. Both replacements return mmcv's outputs bit for bit on the
CPU (``nms`` visits boxes in mmcv's order, ties included; RoIAlign is the same arithmetic).

Which plan a pipeline gets (``plan``): ``mmcv`` off CUDA and for stock where mmcv has CUDA ops (mmdet as
shipped); ``torchvision`` on CUDA when the RoIAlign choice is torchvision's (the RoI extractors are swapped by
``roi_align.swap_roi_align``, NMS is routed here); ``fallback`` on CUDA when mmcv has no CUDA ops.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import importlib
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

PLANS = ("mmcv", "torchvision", "fallback")
#: mmcv's compiled ops on the R-CNN inference path: the op name -> where a caller looks the Python function up.
#: ``batched_nms`` finds ``nms`` by ``eval`` in its own module and ``RoIAlign.forward`` calls its module's
#: ``roi_align``: the module globals are what count; the ``mmcv.ops`` names serve later ``from mmcv.ops import``.
BINDINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "nms": (("mmcv.ops.nms", "nms"), ("mmcv.ops", "nms")),
    "roi_align": (("mmcv.ops.roi_align", "roi_align"), ("mmcv.ops", "roi_align")),
}
#: calls that went to torchvision, per op (what a test or a run record can check)
calls: collections.Counter = collections.Counter()

# "fallback": CUDA tensors go to torchvision only when mmcv has no CUDA ops; "torchvision": CUDA tensors always;
# "all": every tensor (the testing hook). A narrower scope opened inside a wider one keeps the wider.
_SCOPES = ("fallback", "torchvision", "all")
_SCOPE: contextvars.ContextVar[str] = contextvars.ContextVar("mmdet_speedup_ops_scope", default="fallback")
_SAVED: dict[tuple[str, str], Any] = {}  # (module, name) -> mmcv's original, while installed
_MMCV: dict[str, Callable] = {}  # op -> mmcv's function, captured at the first install


class FallbackWarning(RuntimeWarning):
    """mmcv has no CUDA ops: mmdet's stock path runs NMS and RoIAlign on torchvision's CUDA kernels."""


# -- what is there ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _mmcv_cuda_version() -> str:
    try:
        from mmcv.ops import get_compiling_cuda_version
        return str(get_compiling_cuda_version())
    except (ImportError, AttributeError, RuntimeError):  # mmcv-lite, or an extension that failed to load
        return "not available"


def mmcv_has_cuda_ops() -> bool:
    """Whether mmcv's extension was compiled with CUDA (or ROCm) kernels."""
    return _mmcv_cuda_version() not in ("not available", "")


def torchvision_has_cuda_ops() -> bool:
    """Whether torchvision's NMS and RoIAlign have CUDA kernels (a CUDA build); checkable without a GPU."""
    import torchvision  # noqa: F401  (registers its ops)

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return all(has(f"torchvision::{op}", "CUDA") for op in ("nms", "roi_align"))


def route_needed(device: str | torch.device) -> bool:
    """Whether mmcv's ops cannot run on ``device``: a CUDA device with an mmcv built without CUDA ops."""
    return torch.device(device).type == "cuda" and not mmcv_has_cuda_ops()


def plan(device: str | torch.device, roi_align: str = "mmcv") -> str:
    """How mmcv's compiled ops run on ``device`` for a pipeline whose RoIAlign choice is ``roi_align``."""
    if torch.device(device).type != "cuda":
        return "mmcv"
    if roi_align != "mmcv":
        return "torchvision"  # one lever: torchvision's kernels for both ops, not RoIAlign alone
    return "fallback" if route_needed(device) else "mmcv"


def prepare(device: str | torch.device, roi_align: str = "mmcv") -> str:
    """``plan`` for ``device``, with the routers installed where it needs them; warns when it falls back."""
    p = plan(device, roi_align)
    if p == "mmcv":
        return p
    if not torchvision_has_cuda_ops():
        raise RuntimeError("torchvision has no CUDA kernels for nms/roi_align: install a CUDA build of torchvision "
                           "matching torch (mmcv's CPU-ops wheel relies on them on a GPU)")
    install()
    if p == "fallback":
        warnings.warn("mmcv has no CUDA ops: NMS and RoIAlign run on torchvision's CUDA kernels, also on the stock "
                      "path (same outputs as mmcv's kernels on the CPU)", FallbackWarning, stacklevel=2)
    return p


# -- the torchvision-backed ops, mmcv's signatures ------------------------------------------------------------
def nms(boxes: Tensor | np.ndarray, scores: Tensor | np.ndarray, iou_threshold: float, offset: int = 0,
        score_threshold: float = 0, max_num: int = -1) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray]:
    """``mmcv.ops.nms`` on torchvision's kernel: the same arguments, ``(dets, keep)`` in the same order."""
    is_numpy = isinstance(boxes, np.ndarray)
    boxes, scores = torch.as_tensor(boxes), torch.as_tensor(scores)
    if boxes.ndim != 2 or boxes.size(1) != 4 or boxes.size(0) != scores.size(0) or offset not in (0, 1):
        raise ValueError(f"nms wants boxes (N, 4), scores (N,) and offset 0 or 1; got {tuple(boxes.shape)}, "
                         f"{tuple(scores.shape)}, {offset}")
    keep = _keep(boxes, scores, float(iou_threshold), offset, score_threshold, max_num)
    dets = torch.cat((boxes[keep], scores[keep].reshape(-1, 1)), dim=1)
    return (dets.cpu().numpy(), keep.cpu().numpy()) if is_numpy else (dets, keep)


def _keep(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int, score_threshold: float,
          max_num: int) -> Tensor:
    from torchvision.ops import nms as tv_nms

    valid = None
    if score_threshold > 0:  # as mmcv's NMSop: filter first, map the kept indices back last
        valid = torch.nonzero(scores > score_threshold).squeeze(1)
        boxes, scores = boxes[valid], scores[valid]
    # mmcv's kernel visits boxes in the order of torch's (unstable) descending sort; torchvision's sorts stably,
    # so tied scores could be visited in another order. Handing torchvision the boxes in mmcv's order with strictly
    # decreasing stand-in scores makes it visit them in that order: the same kept set, in the same order.
    order = scores.sort(0, descending=True)[1]
    ranked = boxes[order]
    if ranked.dtype in (torch.float16, torch.bfloat16):
        ranked = ranked.float()  # the stand-in ranks must be exact, and mmcv's IoU is fp32
    if offset:  # mmcv's legacy "+1" widths: exact on integer corners, float rounding apart otherwise
        ranked = torch.cat((ranked[:, :2], ranked[:, 2:] + offset), dim=1)
    rank = torch.arange(len(order), 0, -1, dtype=ranked.dtype, device=ranked.device)
    keep = order[tv_nms(ranked, rank, iou_threshold)]
    if max_num > 0:
        keep = keep[:max_num]
    return keep if valid is None else valid[keep]


def roi_align(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0, sampling_ratio: int = 0,
              pool_mode: str = "avg", aligned: bool = True) -> Tensor:
    """``mmcv.ops.roi_align`` on torchvision's kernel (average pooling: the only mode torchvision has)."""
    from torch.nn.modules.utils import _pair
    from torchvision.ops import roi_align as tv_roi_align

    if pool_mode != "avg":
        raise NotImplementedError(f"RoIAlign pool_mode={pool_mode!r} has no torchvision kernel (only 'avg')")
    return tv_roi_align(input, rois.to(input.dtype), _pair(output_size), float(spatial_scale), int(sampling_ratio),
                        aligned)


# -- the routers ----------------------------------------------------------------------------------------------
def uses_torchvision(t: Any) -> bool:
    """Whether a call on ``t`` goes to torchvision under the open scope (numpy arrays live on the CPU)."""
    scope = _SCOPE.get()
    if scope == "all":
        return True
    device = getattr(t, "device", None)
    if device is None or torch.device(device).type != "cuda":
        return False
    return scope == "torchvision" or not mmcv_has_cuda_ops()


def _nms_router(boxes, scores, iou_threshold: float, offset: int = 0, score_threshold: float = 0,
                max_num: int = -1):
    if uses_torchvision(boxes):
        calls["nms"] += 1
        return nms(boxes, scores, iou_threshold, offset, score_threshold, max_num)
    return _MMCV["nms"](boxes, scores, iou_threshold, offset, score_threshold, max_num)


def _roi_align_router(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0,
                      sampling_ratio: int = 0, pool_mode: str = "avg", aligned: bool = True) -> Tensor:
    if pool_mode == "avg" and uses_torchvision(input):
        calls["roi_align"] += 1
        return roi_align(input, rois, output_size, spatial_scale, sampling_ratio, pool_mode, aligned)
    return _MMCV["roi_align"](input, rois, output_size, spatial_scale, sampling_ratio, pool_mode, aligned)


def _routers() -> dict[str, Callable]:
    from mmengine.utils import deprecated_api_warning

    # mmcv's nms takes the old ``iou_thr`` keyword too (old configs): keep that
    return {"nms": deprecated_api_warning({"iou_thr": "iou_threshold"})(_nms_router), "roi_align": _roi_align_router}


def is_installed() -> bool:
    return bool(_SAVED)


def install() -> None:
    """Put the routers in place of mmcv's ``nms`` and ``roi_align`` (idempotent; ``uninstall`` restores them)."""
    if _SAVED:
        return
    routers = _routers()
    for op, bindings in BINDINGS.items():
        for module_name, name in bindings:
            module = importlib.import_module(module_name)
            original = getattr(module, name)
            _MMCV.setdefault(op, original)
            _SAVED[(module_name, name)] = original
            setattr(module, name, routers[op])


def uninstall() -> None:
    """mmcv's own functions back where they were (idempotent)."""
    while _SAVED:
        (module_name, name), original = _SAVED.popitem()
        setattr(importlib.import_module(module_name), name, original)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """The routers in place while open; uninstalled at the end only if this context installed them."""
    mine = not is_installed()
    install()
    try:
        yield
    finally:
        if mine:
            uninstall()


@contextlib.contextmanager
def routing(plan_name: str) -> Iterator[None]:
    """The routing a pipeline's plan asks for while open: ``torchvision`` routes CUDA tensors, the other plans
    leave the scope as it is (``fallback`` needs nothing: the routers fall back by themselves)."""
    if plan_name not in PLANS:
        raise ValueError(f"unknown ops plan {plan_name!r}; known: {', '.join(PLANS)}")
    if plan_name != "torchvision" or _SCOPE.get() == "all":
        yield
        return
    token = _SCOPE.set("torchvision")
    try:
        yield
    finally:
        _SCOPE.reset(token)


@contextlib.contextmanager
def force_torchvision() -> Iterator[None]:
    """Testing hook: every call of the two ops goes to torchvision, CPU tensors too (routers installed)."""
    token = _SCOPE.set("all")
    try:
        with installed():
            yield
    finally:
        _SCOPE.reset(token)
