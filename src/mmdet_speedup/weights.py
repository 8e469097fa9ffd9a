"""The trained weights the repository keeps: one safetensors file (nothing to unpickle), checked before use.

Weights are stored in fp16, BatchNorm running statistics in fp32 (a running variance can overflow fp16). At
load the file's sha256 must match its record (``<file>.json`` beside it), its architecture the model's, every
key and shape the model's (strict: a partial load is an error), and every value must be finite; each failure
is one line naming the file. The Mask R-CNN's box parts also serve as a Faster R-CNN FPN.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .checks import InputError

#: Configs the trained weights serve, and the key prefixes each one takes from the file.
SERVES = {"mask-rcnn_r50_fpn_1x_coco": None, "faster-rcnn_r50_fpn_1x_coco": ("roi_head.mask_head.",)}
ARCHITECTURE = "mask-rcnn_r50_fpn_1x_coco"
FILE_NAME = "mask-rcnn_r50_fpn_shapes.safetensors"


def default_path() -> Path:
    """``$MMDET_SPEEDUP_WEIGHTS`` or the project's ``data/weights/`` file (found from the package's checkout)."""
    env = os.environ.get("MMDET_SPEEDUP_WEIGHTS")
    if env:
        return Path(env)
    from .project import project_root

    here = project_root() / "data" / "weights" / FILE_NAME
    return here if here.is_file() else Path(__file__).resolve().parents[2] / "data" / "weights" / FILE_NAME


def record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _is_bn_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var"))


def save(model, path: str | os.PathLike, record: dict) -> dict:
    """Write the model's state as fp16 (BatchNorm statistics fp32, counters as they are) and its record."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and not _is_bn_stat(k):
            v = v.half()
        elif v.is_floating_point():
            v = v.float()
        state[k] = v.contiguous()
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise InputError(f"not saving {path}: {k} has non-finite values")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"architecture": ARCHITECTURE, "format": "mmdet-speedup weights v1"})
    rec = dict(record, file=path.name, sha256=sha256(path), architecture=ARCHITECTURE, tensors=len(state),
               bytes=path.stat().st_size)
    record_path(path).write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def read_record(path: Path) -> dict:
    rec = record_path(path)
    if not rec.is_file():
        raise InputError(f"weights record {rec} is missing (it holds the sha256 that {path.name} is checked against)")
    return json.loads(rec.read_text())


def load_state(path: str | os.PathLike | None = None, config: str = ARCHITECTURE) -> dict[str, torch.Tensor]:
    """The checked state dict (fp32) for ``config`` from ``path`` (default: the repository's file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_path()
    if config not in SERVES:
        raise InputError(f"the trained weights serve {', '.join(SERVES)}, not {config}")
    if not path.is_file():
        raise InputError(f"trained weights not found: {path} (run `make weights`, or pass weights='conditioned')")
    rec = read_record(path)
    got = sha256(path)
    if got != rec.get("sha256"):
        raise InputError(f"{path} is corrupt or not the recorded file: sha256 {got[:16]}..., "
                         f"expected {str(rec.get('sha256'))[:16]}...")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        arch = (f.metadata() or {}).get("architecture")
    if arch != ARCHITECTURE:
        raise InputError(f"{path} holds weights for {arch!r}, not {ARCHITECTURE}")
    drop = SERVES[config] or ()
    out = {}
    for k, v in state.items():
        if k.startswith(drop):
            continue
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise InputError(f"{path}: {k} has non-finite values")
        out[k] = v.float() if v.is_floating_point() else v
    return out


def load_into(model, path: str | os.PathLike | None = None, config: str = ARCHITECTURE) -> dict:
    """Load the trained weights into ``model`` strictly: every key and shape must match; returns the record."""
    path = Path(path) if path is not None else default_path()
    fit(model, load_state(path, config), path, config)
    return read_record(path)


def fit(model, state: dict[str, torch.Tensor], path: Path, config: str) -> None:
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise InputError(f"{path} does not fit {type(model).__name__} ({config}): {len(missing)} keys missing "
                         f"(first {missing[:1]}), {len(extra)} unexpected (first {extra[:1]})")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise InputError(f"{path} does not fit {config}: {bad[0]} is {tuple(state[bad[0]].shape)} in the file, "
                         f"{tuple(own[bad[0]].shape)} in the model")
    model.load_state_dict(state, strict=True)
