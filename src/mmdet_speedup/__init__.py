"""mmdet-speedup: a per-stage profiler for mmdet two-stage detectors, and the optimizations it measures.

Names load on first use (PEP 562), so a torch-free part (``mmdet_speedup.study.ledger``) imports without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_NAMES = {
    "STOCK": "choices", "Choices": "choices",
    "Agreement": "equivalence", "compare": "equivalence", "identical": "equivalence",
    "BoxMasks": "masks", "FullMasks": "masks", "LegacyMasks": "masks", "RawMasks": "masks",
    "Conditioning": "models", "UnsupportedModelError": "models", "Workload": "models", "build_detector": "models",
    "Predictor": "optimize", "optimize": "optimize",
    "Detections": "pipeline", "ImageLoadError": "pipeline", "StagedPipeline": "pipeline", "load_image": "pipeline",
    "stock_test_step": "pipeline",
    "Profiler": "profiler", "Repeats": "profiler", "prepare_inputs": "profiler", "stage_gap": "profiler",
    "stage_summary": "profiler", "stage_table": "profiler",
    "BENCHMARK_VERSION": "records", "Recorder": "records",
    "StageTimer": "timing", "benchmark": "timing", "resolve_device": "timing", "summarize": "timing",
}
__all__ = sorted([*_NAMES, "environment", "project", "stages"])


def submodule(package: str, name: str) -> Any:
    """``package.name`` imported on first use (PEP 562 attribute access); AttributeError where there is none."""
    try:
        return importlib.import_module(f".{name}", package)
    except ModuleNotFoundError as e:
        if e.name != f"{package}.{name}":
            raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}") from None


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    else:  # a submodule as an attribute (``ms.environment``, ``ms.profiler``)
        value = submodule(__name__, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
