"""Reduced precision for the convolutional stages; NMS, box decoding, RoIAlign and paste stay in fp32.

``fp16`` is CUDA autocast (TensorCores); ``bf16`` is autocast on the CPU (AMX on Sapphire Rapids) or CUDA.
``*-weights`` keeps backbone and neck entirely in the reduced dtype (weights cast once) instead of letting
autocast cast around every BatchNorm. ``channels_last`` and BatchNorm folding are separate levers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("fp32", "fp16", "bf16", "fp16-weights", "bf16-weights")
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def check(name: str, device: torch.device | None = None) -> str:
    """A known precision, and one the device runs in hardware (fp16 autocast needs CUDA; bf16 on the CPU needs
    AVX-512 BF16 or AMX unless ``EMULATED_ENV`` is set)."""
    import os

    from .checks import EMULATED_ENV, InputError, choice
    from .environment import cpu_has_bf16

    choice(name, PRECISIONS, "precision")
    if device is None:
        return name
    if name.startswith("fp16") and torch.device(device).type != "cuda":
        raise InputError("fp16 needs CUDA (TensorCores); on the CPU use bf16 (AMX where the CPU has it)")
    if name.startswith("bf16") and torch.device(device).type == "cpu" and not cpu_has_bf16() \
            and os.environ.get(EMULATED_ENV, "") in ("", "0"):
        raise InputError(f"{name} on a CPU without bf16 instructions (AVX-512 BF16 or AMX) is emulated, far slower "
                         f"than fp32: not run ({EMULATED_ENV}=1 runs it anyway)")
    return name


def studied(device: torch.device) -> str:
    """The reduced precision a study compares with fp32 on this device, whether or not the hardware speeds it up."""
    return "fp16" if torch.device(device).type == "cuda" else "bf16"


@dataclass(frozen=True)
class Precision:
    name: str
    device: torch.device

    def __post_init__(self) -> None:
        check(self.name, self.device)

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name.split("-")[0]]

    @property
    def cast_weights(self) -> bool:
        return self.name.endswith("-weights")

    @property
    def reduced(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def input(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype) if self.cast_weights else x


def to_nchw_float(t: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """An fp32, NCHW-contiguous copy of a feature map, in one pass.

    On the CPU torch's strided copy transposes a whole channels_last map at about 1 GB/s; copying it in
    blocks of ``rows`` pixels (a few MB, cache-sized) gives the same bits about 2.5x faster, which is
    half a second per image for the FPN maps at 3840x2304.
    """
    if t.device.type != "cpu" or t.dim() != 4 or t.is_contiguous() \
            or not t.is_contiguous(memory_format=torch.channels_last):
        return t.to(torch.float32, memory_format=torch.contiguous_format)
    n, c, h, w = t.shape
    src = t.permute(0, 2, 3, 1).reshape(n, h * w, c)
    out = torch.empty((n, c, h * w), dtype=torch.float32)
    for i in range(0, h * w, rows):
        out[:, :, i:i + rows].copy_(src[:, i:i + rows].transpose(1, 2))
    return out.view(n, c, h, w)


def to_float(obj: Any) -> Any:
    """Cast every floating tensor in a (nested) tuple/list back to fp32, for the fp32 parts."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float(o) for o in obj)
    return obj


def feature_modules(model) -> list[torch.nn.Module]:
    mods = [model.backbone]
    if model.with_neck:
        mods.append(model.neck)
    return mods


def apply(model, precision: Precision, *, channels_last: bool = False, fold_bn: bool = False) -> None:
    """Mutates ``model`` (a copy owned by the optimized predictor) for the chosen levers."""
    if fold_bn:
        from mmcv.cnn import fuse_conv_bn

        fuse_conv_bn(model.backbone)
        shared = getattr(model.roi_head, "shared_head", None)
        if shared is not None:
            fuse_conv_bn(shared)
    if channels_last:
        for m in feature_modules(model) + [model.rpn_head, model.roi_head]:
            m.to(memory_format=torch.channels_last)
    if precision.cast_weights:
        for m in feature_modules(model):
            m.to(precision.dtype)
