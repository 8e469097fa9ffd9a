"""Pre-processing variants: each turns a decoded uint8 BGR image into the model's inputs and metainfo.

Every variant has a host step (timed as ``preprocess``) and a device step (timed as ``data_preprocessor``):
- ``legacy``: mmdet 2.x: CPU resize, CPU float32 normalize and pad, float32 host-to-device copy.
- ``stock``: mmdet 3.3: the config's test pipeline on the CPU, uint8 copy, ``DetDataPreprocessor``.
- ``device``: uint8 copy (pinned, non-blocking on CUDA), then resize, colour order, normalize, pad on the device.
- ``auto``: the fastest of the three for the device (CUDA: ``device``; elsewhere measured once per input shape,
  and only a clear win over ``stock``, by more than ``AUTO_MARGIN``, moves it off ``stock``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PREPROCESS_VARIANTS = ("legacy", "stock", "device", "auto")


@dataclass
class HostBatch:
    """What the host step hands to the device step (one image)."""

    data: Any
    meta: dict
    bytes_copied: int = 0
    variant: str = ""


def _norm_params(model) -> tuple[torch.Tensor, torch.Tensor, bool, int, float]:
    dp = model.data_preprocessor
    return dp.mean, dp.std, bool(dp._channel_conversion), int(dp.pad_size_divisor), float(dp.pad_value)


def test_steps(cfg) -> list:
    """The config's test pipeline steps (the dataloader's, else the top-level ``test_pipeline``)."""
    if cfg.get("test_dataloader") is not None:
        return cfg.test_dataloader.dataset.pipeline
    return cfg.get("test_pipeline", [])


def resize_step(cfg) -> dict | None:
    """The test pipeline's Resize step: the one place its target scale is read (and written, by the workload)."""
    return next((t for t in test_steps(cfg) if str(t.get("type", "")).endswith("Resize")), None)


def test_pipeline(model):
    """The config's test pipeline for in-memory arrays, as ``mmdet.apis.inference_detector`` builds it."""
    from mmcv.transforms import Compose

    steps = [dict(t) for t in test_steps(model.cfg.copy()) if "LoadAnnotations" not in t["type"]]
    steps[0]["type"] = "mmdet.LoadImageFromNDArray"
    return Compose(steps)


def resize_target(model) -> tuple[int, int]:
    step = resize_step(model.cfg)
    if step is None:
        raise ValueError("the config's test pipeline has no Resize")
    if not step.get("keep_ratio", False):
        raise ValueError("only keep_ratio Resize is supported by the legacy/device variants")
    return tuple(step["scale"])


def rescaled_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmdet's keep-ratio size rule (mmcv.rescale_size), shared by every variant."""
    import mmcv

    return tuple(mmcv.rescale_size((w, h), scale))  # (new_w, new_h)


def _meta(img: np.ndarray, new_w: int, new_h: int, divisor: int) -> dict:
    h, w = img.shape[:2]
    pad = (int(math.ceil(new_h / divisor)) * divisor, int(math.ceil(new_w / divisor)) * divisor)
    return dict(img_id=0, img_path=None, ori_shape=(h, w), img_shape=(new_h, new_w),
                scale_factor=(new_w / w, new_h / h), pad_shape=pad, batch_input_shape=pad)


def _samples(meta: dict):
    from mmdet.structures import DetDataSample

    return [DetDataSample(metainfo=meta)]


class Preprocessor:
    name = "base"

    def __init__(self, model, device: torch.device) -> None:
        self.model = model
        self.device = torch.device(device)
        self.mean, self.std, self.to_rgb, self.divisor, self.pad_value = _norm_params(model)
        self.scale = resize_target(model)

    def host(self, img: np.ndarray) -> HostBatch:
        raise NotImplementedError

    def to_device(self, hb: HostBatch) -> tuple[torch.Tensor, list]:
        raise NotImplementedError

    def __call__(self, img: np.ndarray) -> tuple[torch.Tensor, list]:
        return self.to_device(self.host(img))


class StockPreprocessor(Preprocessor):
    name = "stock"

    def __init__(self, model, device) -> None:
        super().__init__(model, device)
        self.pipeline = test_pipeline(model)

    def host(self, img: np.ndarray) -> HostBatch:
        data = self.pipeline(dict(img=img, img_id=0))
        return HostBatch(data, {}, data["inputs"].numel())

    def to_device(self, hb: HostBatch) -> tuple[torch.Tensor, list]:
        out = self.model.data_preprocessor(dict(inputs=[hb.data["inputs"]], data_samples=[hb.data["data_samples"]]),
                                           False)
        return out["inputs"], out["data_samples"]


class LegacyPreprocessor(Preprocessor):
    """mmdet 2.x's Resize -> Normalize -> Pad -> ImageToTensor, all on the CPU in float32."""

    name = "legacy"

    def host(self, img: np.ndarray) -> HostBatch:
        import mmcv

        h, w = img.shape[:2]
        new_w, new_h = rescaled_size(w, h, self.scale)
        resized = mmcv.imresize(img, (new_w, new_h), interpolation="bilinear", backend="cv2")
        mean = self.mean.flatten().cpu().numpy()
        std = self.std.flatten().cpu().numpy()
        norm = mmcv.imnormalize(resized, mean, std, to_rgb=self.to_rgb)  # flips before subtracting, as 2.x did
        meta = _meta(img, new_w, new_h, self.divisor)
        padded = mmcv.impad(norm, shape=meta["pad_shape"], pad_val=self.pad_value)
        t = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))
        return HostBatch(t, meta, t.numel() * 4)

    def to_device(self, hb: HostBatch) -> tuple[torch.Tensor, list]:
        return hb.data.to(self.device)[None], _samples(hb.meta)


class DevicePreprocessor(Preprocessor):
    """Decode stays on the host; everything else runs in torch on the device, from uint8."""

    name = "device"

    def host(self, img: np.ndarray) -> HostBatch:
        t = torch.from_numpy(img)
        if self.device.type == "cuda":
            t = t.pin_memory()
        h, w = img.shape[:2]
        new_w, new_h = rescaled_size(w, h, self.scale)
        return HostBatch(t, _meta(img, new_w, new_h, self.divisor), t.numel())

    def to_device(self, hb: HostBatch) -> tuple[torch.Tensor, list]:
        meta = hb.meta
        x = hb.data.to(self.device, non_blocking=True).permute(2, 0, 1)[None]
        if self.to_rgb:
            x = x.flip(1)
        new_h, new_w = meta["img_shape"]
        if (new_h, new_w) != tuple(x.shape[-2:]):
            # uint8 bilinear without antialias, like cv2's INTER_LINEAR (which has none)
            x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(new_h, new_w),
                              mode="bilinear", align_corners=False, antialias=False)
        x = (x.float() - self.mean) / self.std
        ph, pw = meta["pad_shape"]
        x = F.pad(x, (0, pw - new_w, 0, ph - new_h), value=self.pad_value)
        return x.contiguous(), _samples(meta)


#: how much faster than ``stock`` another variant must be for ``auto`` to pick it
AUTO_MARGIN = 0.9
#: auto's measured winners, per (device, Resize target, input shape): measured once per process.
_AUTO_CHOICE: dict[tuple, str] = {}


class AutoPreprocessor(Preprocessor):
    """Picks the fastest variant for this device: ``device`` on CUDA; elsewhere measured per input shape."""

    name = "auto"

    def __init__(self, model, device, trials: int = 5) -> None:
        super().__init__(model, device)
        self.candidates = {c.name: c(model, device) for c in (LegacyPreprocessor, StockPreprocessor,
                                                               DevicePreprocessor)}
        self.trials = trials

    def pick(self, img: np.ndarray) -> Preprocessor:
        if self.device.type == "cuda":
            return self.candidates["device"]
        key = (str(self.device), self.scale, img.shape)
        if key not in _AUTO_CHOICE:
            times: dict[str, list[float]] = {name: [] for name in self.candidates}
            for p in self.candidates.values():
                p(img)
            for _ in range(self.trials):  # interleaved, so drift lands on every candidate alike
                for name, p in self.candidates.items():
                    t0 = time.perf_counter()
                    p(img)
                    times[name].append(time.perf_counter() - t0)
            med = {name: float(np.median(t)) for name, t in times.items()}
            best = min(med, key=med.get)
            # stock's inputs are the reference: another variant has to win by more than timing noise
            _AUTO_CHOICE[key] = best if med[best] < AUTO_MARGIN * med["stock"] else "stock"
        return self.candidates[_AUTO_CHOICE[key]]

    def host(self, img: np.ndarray) -> HostBatch:
        p = self.pick(img)
        hb = p.host(img)
        hb.variant = p.name
        return hb

    def to_device(self, hb: HostBatch) -> tuple[torch.Tensor, list]:
        return self.candidates[hb.variant].to_device(hb)


_VARIANTS = {c.name: c for c in (LegacyPreprocessor, StockPreprocessor, DevicePreprocessor, AutoPreprocessor)}


def check(name: str) -> str:
    from .checks import choice

    return choice(name, PREPROCESS_VARIANTS, "preprocess")


def make_preprocessor(name: str, model, device) -> Preprocessor:
    return _VARIANTS[check(name)](model, device)


def compare_inputs(model, img: np.ndarray, variant: str, device="cpu") -> dict:
    """How far a variant's model input is from ``stock``'s, in grey levels (one level = 1/std after normalize)."""
    ref, ref_s = make_preprocessor("stock", model, device)(img)
    x, s = make_preprocessor(variant, model, device)(img)
    same_meta = all(tuple(s[0].metainfo[k]) == tuple(ref_s[0].metainfo[k])
                    for k in ("ori_shape", "img_shape", "scale_factor", "pad_shape"))
    h, w = ref_s[0].metainfo["img_shape"]
    std = model.data_preprocessor.std.to(x.device)
    d = ((x - ref)[..., :h, :w] * std).abs()  # back to pixel units
    return {"variant": variant, "same_shape": tuple(x.shape) == tuple(ref.shape), "same_meta": same_meta,
            "max_levels": float(d.max()), "mean_levels": float(d.mean()),
            "frac_changed": float((d > 0.5).float().mean())}
