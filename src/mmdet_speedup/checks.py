"""Checks on what a user gives (sizes, counts, files, a chapter's parameters): one clear line, before any work."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

#: Set (to 1) to run bf16 on a CPU that only emulates it (``precision.check``): the tests do, on tiny inputs; a
#: chapter does not, where an emulated row would take hours (its bf16 rows become error rows that say why).
EMULATED_ENV = "MMDET_SPEEDUP_EMULATED"


class InputError(ValueError):
    """Something the user gave is wrong; the message says what, in one line, for the user."""


def size(text: Any) -> tuple[int, int]:
    """``"WxH"`` (or a pair) as two positive integers."""
    try:
        if isinstance(text, (tuple, list)) and len(text) == 2:
            w, h = text
        else:
            w, h = str(text).lower().split("x")
        if isinstance(w, (bool, float)) or isinstance(h, (bool, float)):
            raise ValueError
        w, h = int(w), int(h)
    except (TypeError, ValueError):
        raise InputError(f"size must look like WxH (e.g. 1333x800), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise InputError(f"size must be positive WxH (e.g. 1333x800), got {text!r}")
    return w, h


def count(text: Any, name: str = "value", minimum: int = 1) -> int:
    """An integer >= ``minimum`` (a count of threads, repeats, detections, ...)."""
    try:
        if isinstance(text, (bool, float)):
            raise ValueError
        n = int(str(text).strip()) if isinstance(text, str) else int(text)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {text!r}") from None
    if n < minimum:
        raise InputError(f"{name} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {n}")
    return n


def choice(text: Any, options: tuple[str, ...], name: str = "value") -> str:
    if text not in options:
        raise InputError(f"unknown {name} {text!r}; choose from {', '.join(options)}")
    return text


def image_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a directory; give image files")
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    return p


def checkpoint_file(path: str | os.PathLike) -> Path:
    """A file ``torch.save`` wrote: a zip archive (torch >= 1.6) or a legacy pickle. Checked without loading it."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"checkpoint {p} is a directory, not a checkpoint file")
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    with open(p, "rb") as f:
        head = f.read(2)
    if not (zipfile.is_zipfile(p) or head[:1] == b"\x80"):
        raise InputError(f"{p} is not a PyTorch checkpoint (expected a file written by torch.save)")
    return p


# -- a chapter's papermill parameters: a wrong type or value stops the chapter before any work ----------------
def _sizes(v: Any, name: str) -> Any:
    if not isinstance(v, list) or not v:
        raise InputError(f"{name} must be a non-empty list of WxH sizes, got {v!r}")
    return [size(s) for s in v]


def _counts(v: Any, name: str) -> Any:
    if not isinstance(v, list) or not v:
        raise InputError(f"{name} must be a non-empty list of positive integers, got {v!r}")
    return [count(n, name) for n in v]


def _case(v: Any, name: str) -> Any:
    """A ladder case ``"INPUTxSIZE>SCALE"`` or a loading case ``{scale, rpn_proposals, dets}``."""
    if isinstance(v, dict):
        size(v.get("scale"))
        for k in ("rpn_proposals", "dets"):
            count(v.get(k), f"{name}.{k}")
    elif isinstance(v, str) and ">" in v:
        a, b = v.split(">", 1)
        size(a), size(b)
    else:
        raise InputError(f"{name} entries look like '3840x2304>1333x800' or a dict with scale, got {v!r}")
    return v


def _cases(v: Any, name: str) -> Any:
    if not isinstance(v, list) or not v:
        raise InputError(f"{name} must be a non-empty list, got {v!r}")
    return [_case(c, name) for c in v]


def _fractions(v: Any, name: str) -> Any:
    if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and 0 < x <= 1 for x in v):
        raise InputError(f"{name} must be a non-empty list of numbers in (0, 1], got {v!r}")
    return v


def _score(v: Any, name: str) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
        raise InputError(f"{name} must be a score in [0, 1) or None (the config's), got {v!r}")
    return v


def _fail(message: str):
    raise InputError(message)


def _optional_checkpoint(v: Any, name: str) -> Any:
    return v if v is None else checkpoint_file(v)


#: Where a COCO folder keeps the val2017 annotations and images (as cocodataset.org's archives unpack).
COCO_ANNOTATIONS = "annotations/instances_val2017.json"
COCO_IMAGES = "val2017"


def coco_folder(path: str | os.PathLike) -> tuple[Path, Path]:
    """A COCO folder's val2017 annotation file and image folder, both present."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"COCO folder not found: {root}")
    ann, img = root / COCO_ANNOTATIONS, root / COCO_IMAGES
    if not ann.is_file():
        raise InputError(f"COCO folder {root} has no {COCO_ANNOTATIONS}")
    if not img.is_dir():
        raise InputError(f"COCO folder {root} has no {COCO_IMAGES}/ image folder")
    return ann, img


PARAMETER_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "device": lambda v, n: choice(v, ("auto", "cpu", "cuda"), n),
    "checkpoint": _optional_checkpoint,
    "coco": lambda v, n: v if v is None else coco_folder(v),
    "weights": lambda v, n: choice(v, ("auto", "trained", "conditioned"), n),
    "config": lambda v, n: v if isinstance(v, str) and v else _fail(f"must be a config name or path, got {v!r}"),
    **{k: lambda v, n: size(v) for k in ("scale", "input_size", "input_for_dets")},
    "seed_case": lambda v, n: v if v in ("", None) else size(v),
    "input_sizes": _sizes,
    **{k: lambda v, n: count(v, n) for k in ("threads", "repeats", "n_images", "dets", "rpn_proposals",
                                             "fewer_proposals", "dets_for_sizes", "nms_repeats", "n_stream",
                                             "passes", "depth", "val_images", "figure_images")},
    **{k: lambda v, n: count(v, n, minimum=0) for k in ("train_images", "val_large_images")},
    "warmup": lambda v, n: count(v, n, minimum=0),
    **{k: _counts for k in ("dets_list", "ns", "c4_pre_nms", "fpn_pre_nms")},
    **{k: _cases for k in ("cases", "equivalence_cases")},
    "iou_thresholds": _fractions,
    "score_thr": _score,
}


def check_parameters(params: Mapping[str, Any]) -> None:
    """Each known parameter's value, checked by name; the first wrong one raises :class:`InputError`."""
    for name, value in params.items():
        check = PARAMETER_CHECKS.get(name)
        if check is not None:
            try:
                check(value, name)
            except InputError as e:
                raise InputError(f"parameter {name}: {e}") from None
