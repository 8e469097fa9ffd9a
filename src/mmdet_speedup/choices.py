"""One choice per swappable stage, and the one place where "auto" becomes a concrete choice.

An optimization is a set of choices, never a fork of the pipeline. Every field accepts ``"auto"``:
``Choices.resolve(device, model)`` decides it from the device's capabilities and the model. A field listed in
``MEASURED`` is the exception: its "auto" is decided by measuring, at run time, by the field's own module
(``preprocess="auto"`` times the candidates once per input shape, ``runtime="auto"`` times backbone, neck and RPN
convolutions in each available runtime once per input shape), so ``resolve`` leaves it as it is.
Each value is validated by its own module. ``precision`` also takes a runtime's quantized precision (``int8``:
OpenVINO's post-training quantization, ``runtimes.QUANTIZED``), checked by ``runtimes``; it needs a runtime that
runs it, and ``runtime="auto"`` with it resolves to that runtime (there is no torch path to measure against).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Union

import torch

from . import masks, precision, preprocess, roi_align, runtimes
from .checks import InputError, choice

AUTO = "auto"
Flag = Union[bool, str]  # True, False or "auto"
#: Fields whose "auto" the field's module resolves by measuring at run time (see the module docstring).
MEASURED = ("preprocess", "runtime")
#: the quantized precisions some runtime runs (int8), beside the torch precisions
QUANTIZED_PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for q in runtimes.QUANTIZED.values() for p in q))
#: Each string field's variants, from its own module.
VARIANTS: dict[str, tuple[str, ...]] = {
    "preprocess": preprocess.PREPROCESS_VARIANTS, "precision": precision.PRECISIONS + QUANTIZED_PRECISIONS,
    "masks": masks.MASK_VARIANTS, "roi_align": roi_align.ROI_ALIGN_IMPLS, "runtime": runtimes.RUNTIMES,
}
FLAGS = ("channels_last", "fold_bn", "compile")


def check_precision(name: str, device: str | torch.device | None = None) -> str:
    """A torch precision (``precision.check``, against ``device``), or a runtime's quantized one (int8: which
    runtime runs it is checked by ``runtimes.compatible`` in ``resolve``)."""
    choice(name, VARIANTS["precision"], "precision")
    return name if runtimes.is_quantized(name) else precision.check(name, device)


_CHECKS = {"preprocess": preprocess.check, "precision": check_precision, "masks": masks.check,
           "roi_align": roi_align.check, "runtime": runtimes.check}


@dataclass(frozen=True)
class Choices:
    """The defaults are mmdet as shipped (``STOCK``); ``Choices.auto()`` asks for the optimized choice everywhere."""

    preprocess: str = "stock"
    precision: str = "fp32"
    channels_last: Flag = False
    fold_bn: Flag = False
    masks: str = "full"
    roi_align: str = "mmcv"
    compile: Flag = False
    runtime: str = "torch"

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            if getattr(self, name) != AUTO:
                check(getattr(self, name))
        for name in FLAGS:
            if getattr(self, name) not in (True, False, AUTO):
                raise InputError(f"{name} must be True, False or 'auto', got {getattr(self, name)!r}")

    @classmethod
    def auto(cls, **given) -> "Choices":
        return cls(**{f.name: AUTO for f in fields(cls)} | given)

    @property
    def resolved(self) -> bool:
        return all(getattr(self, f.name) != AUTO or f.name in MEASURED for f in fields(self))

    def resolve(self, device: str | torch.device, model=None) -> "Choices":
        """Every "auto" (except ``MEASURED``) made concrete for ``device`` and ``model``; checked against both.

        precision: fp16 on CUDA, bf16 on a CPU with bf16 matrix instructions (AMX or AVX-512 BF16), else fp32;
        channels_last: with reduced precision; fold_bn and compile: off (compile costs tens of seconds per input
        shape); masks: ``raw`` where the model has a mask head; roi_align: torchvision's kernel over threads on the
        CPU, mmcv's on CUDA. runtime: "torch" where a torch-only lever is asked for (CUDA, fp16, the *-weights
        precisions, channels_last or compile on) or only torch is installed, else left "auto" (measured, see
        ``runtimes``); a non-torch runtime turns channels_last and compile off ("auto") or refuses them (given),
        and is checked against the device, the precision and what is installed. precision "int8" (never chosen by
        "auto": it changes results) needs runtime "openvino"; runtime "auto" with it becomes "openvino".
        """
        from .environment import cpu_has_bf16

        dev = torch.device(device)
        cuda = dev.type == "cuda"
        with_mask = bool(getattr(getattr(model, "roi_head", None), "with_mask", False))
        c = self
        if c.precision == AUTO:
            c = c.replace(precision="fp16" if cuda else "bf16" if cpu_has_bf16() else "fp32")
        check_precision(c.precision, dev)
        c = c._resolve_runtime(dev)
        if c.channels_last == AUTO:
            c = c.replace(channels_last=c.precision != "fp32" and c.runtime in (runtimes.TORCH, AUTO))
        c = c.replace(fold_bn=False if c.fold_bn == AUTO else c.fold_bn,
                      compile=False if c.compile == AUTO else c.compile)
        if c.masks == AUTO:
            if model is None:
                raise ValueError("masks='auto' needs the model (whether it has a mask head)")
            c = c.replace(masks="raw" if with_mask else "full")
        if model is not None and not with_mask and c.masks != "full":
            raise InputError(f"masks={c.masks!r} needs a model with a mask head ({type(model).__name__} has none)")
        if c.roi_align == AUTO:
            # on CUDA the optimized rows route RoIAlign and NMS to torchvision (cuda_ops), so they run with or
            # without mmcv's CUDA ops; stock keeps mmcv's where they exist
            c = c.replace(roi_align="torchvision" if cuda else "threaded")
        return c

    def _resolve_runtime(self, dev: torch.device) -> "Choices":
        c = self
        if runtimes.is_quantized(c.precision):
            if c.runtime == AUTO:  # nothing to measure: only a runtime runs it
                c = c.replace(runtime=runtimes.runs(c.precision)[0])
            runtimes.compatible(c.runtime, dev, c.precision)  # int8 with torch or ONNX Runtime: a clear error
        torch_only = (dev.type != "cpu" or c.precision.startswith("fp16") or c.precision.endswith("-weights")
                      or c.channels_last is True or c.compile is True)
        if c.runtime == AUTO:
            if torch_only or runtimes.candidates(dev, c.precision) == (runtimes.TORCH,):
                c = c.replace(runtime=runtimes.TORCH)
            return c
        if c.runtime == runtimes.TORCH:
            return c
        runtimes.compatible(c.runtime, dev, c.precision)
        for name in ("channels_last", "compile"):
            if getattr(c, name) is True:
                raise InputError(f"{name} is a torch lever: it does not apply with runtime={c.runtime!r} "
                                 "(converted parts take fp32 NCHW inputs); turn it off or use runtime='torch'")
        runtimes.load(c.runtime)  # installed, or an error naming the pip package
        if runtimes.is_quantized(c.precision):
            runtimes.load_quantizer(c.precision)  # int8: NNCF installed, or an error naming it
        return c.replace(channels_last=False, compile=False)

    def label(self) -> str:
        parts = [self.preprocess, self.precision]
        if self.runtime != runtimes.TORCH:
            parts.append("rt:auto" if self.runtime == AUTO else runtimes.SHORT[self.runtime])
        flags = (("cl", self.channels_last), ("foldbn", self.fold_bn))
        parts += [name if on is True else f"{name}:auto" for name, on in flags if on]
        if self.roi_align != "mmcv":
            parts.append(f"roi-{self.roi_align}")
        if self.compile:
            parts.append("compiled" if self.compile is True else "compiled:auto")
        parts.append(self.masks)
        return "/".join(str(p) for p in parts)

    def changes_model(self) -> bool:
        """Whether the levers mutate the model (then the pipeline works on its own copy)."""
        return (self.precision != "fp32" or self.channels_last is not False or self.fold_bn is not False
                or self.roi_align != "mmcv" or self.compile is not False or self.runtime != runtimes.TORCH)

    def replace(self, **kw) -> "Choices":
        return replace(self, **kw)


STOCK = Choices()
