"""Compiling backbone and neck with TorchInductor: fusion where eager mode runs one operator at a time.

In eager mode every ReLU and residual add is its own pass over the feature maps. Once bf16 weights run the
convolutions on AMX, those memory-bound passes are a large share of the backbone. Inductor with ``freezing``
folds the (already cast, already BN-folded) weights into the graph and lets oneDNN fuse convolution, add and
ReLU. Stage boundaries stay where they were: backbone and neck are compiled separately.

The price is paid on the first call for each input shape (tens of seconds on two cores; the profiler's
warm-up absorbs it) and the shapes are static: a new padded input size compiles again.
"""
from __future__ import annotations

import logging

import torch


def compile_features(model, device: torch.device) -> None:
    """Replace ``model.backbone`` (and ``model.neck``) with compiled modules; mutates ``model``."""
    # Dynamo keys its cache on the shared ``forward`` code and guards on the module: every compiled copy
    # (one per variant, per case) is another entry, and past the limit it silently falls back to eager.
    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, 64)
    cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, 1024)
    if device.type == "cpu":  # Inductor's C++ build looks for CUDA and warns, into the chapter, that it has none
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    opts = {"freezing": True}  # weights become constants: inference only, under no_grad
    model.backbone = torch.compile(model.backbone, dynamic=False, options=opts)
    if model.with_neck:
        model.neck = torch.compile(model.neck, dynamic=False, options=opts)


def is_compiled(module) -> bool:
    return isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
