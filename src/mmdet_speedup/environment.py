"""What a run ran on: the commit, the CPU's matrix instructions, the GPU, the library versions."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch

from .cpu import cpu_identity, cpuinfo_fields
from .project import project_root

RUN_OUTPUTS = ("book/executed", "book/executed-cuda", "data/results", "tests/nbval")


def git_sha(root: Path | None = None) -> str:
    """The commit of ``root`` (default: the project), ``-dirty`` when its code differs from it."""
    cwd = root or project_root()
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
        sha = out.stdout.strip() or "unknown"
        # a study run rewrites its own outputs as it goes: they must not mark the code it ran as dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in RUN_OUTPUTS)], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    fields = cpuinfo_fields()
    return fields["model name"] if "model name" in fields else platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    return sorted(f for f in cpuinfo_fields().get("flags", "").split()
                  if f.startswith(("amx", "avx512_bf16", "avx512f", "avx512_vnni", "avx_vnni")))


def matrix_engine(device: str = "cpu") -> str:
    """What reduced precision runs on, in words: the hardware that decides whether bf16/fp16 pays."""
    if str(device).startswith("cuda"):
        return f"TensorCores ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "no CUDA device"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX tiles (amx_bf16)"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16 instructions (avx512_bf16) but no AMX tiles"
    return "no bf16 instructions (bf16 is emulated, expect no gain)"


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix math in hardware (AMX or AVX-512 BF16), as ``matrix_engine`` says."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_flags()))


def cpu_has_int8() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI or AMX-INT8), which int8 matrix math needs to pay."""
    return bool({"amx_int8", "avx512_vnni", "avx_vnni"} & set(cpu_flags()))


def weights_recipe() -> dict[str, Any]:
    """How a detector without a checkpoint gets its weights: the fixed recipe and the conditioning it uses."""
    from dataclasses import asdict

    from .models import WEIGHTS_RECIPE, Conditioning

    return {"recipe": WEIGHTS_RECIPE, "conditioning": asdict(Conditioning()), "trained": trained_weights()}


def trained_weights() -> dict[str, Any] | None:
    """The repository's trained weights as recorded beside them (file, sha256, iterations), or None."""
    import json

    from . import weights

    rec = weights.record_path(weights.default_path())
    if not rec.is_file():
        return None
    r = json.loads(rec.read_text())
    return {k: r.get(k) for k in ("file", "sha256", "architecture", "iterations", "data")}


#: Packages a run may use beside the stack (runtimes, the deployed peer); recorded when installed.
OPTIONAL = ("onnx", "onnxruntime", "openvino", "mmdeploy", "nncf")


def optional_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in OPTIONAL:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def environment(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import cv2
    import mmcv
    import mmdet
    import mmengine
    import numpy
    import torchvision

    from .cuda_ops import mmcv_has_cuda_ops, route_needed

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:  # on CUDA without mmcv's CUDA ops even the stock rows run NMS and RoIAlign on torchvision (cuda_ops)
        ops_fallback = route_needed(str((params or {}).get("device", "cpu")))
    except RuntimeError:  # "auto" or no device: not resolved yet
        ops_fallback = None
    return {
        "git_sha": git_sha(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "hostname_hash": uuid.uuid5(uuid.NAMESPACE_DNS, platform.node()).hex[:8],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_id": cpu_identity(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "cuda": torch.version.cuda if gpu else None,
        "mmcv_cuda_ops": mmcv_has_cuda_ops(),
        "ops_fallback": ops_fallback,
        "versions": {
            "torch": torch.__version__, "torchvision": torchvision.__version__, "mmcv": mmcv.__version__,
            "mmdet": mmdet.__version__, "mmengine": mmengine.__version__, "numpy": numpy.__version__,
            "opencv": cv2.__version__, **optional_versions(),
        },
        "weights_recipe": weights_recipe(),
        "params": dict(params or {}),
    }
