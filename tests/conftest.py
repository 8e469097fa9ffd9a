from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
IMAGES = sorted((REPO / "data" / "images").glob("*.jpg"))
# Small enough for CI, large enough that the mask head runs on >= 50 detections.
SMALL = dict(scale=(480, 320), dets_per_image=60, rpn_proposals=300)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _emulated_bf16():
    """bf16 runs on every CPU in the tests (tiny inputs): a CPU without the instructions emulates it."""
    from mmdet_speedup.checks import EMULATED_ENV

    mp = pytest.MonkeyPatch()
    mp.setenv(EMULATED_ENV, "1")
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _model_cache():
    """No cache of conditioned models: a test never reads weights another run conditioned, and a session would
    leave 2 GB of them on a disk CI has little of (the cache's own tests set a folder)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MMDET_SPEEDUP_MODEL_CACHE", "0")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def images() -> list[Path]:
    assert IMAGES, "data/images/*.jpg missing"
    return IMAGES


@pytest.fixture(scope="session")
def image(images) -> Path:
    return images[0]


@pytest.fixture(scope="session")
def mask_rcnn():
    from mmdet_speedup import Workload, build_detector

    return build_detector("mask-rcnn_r50_fpn_1x_coco", weights="conditioned", device="cpu", workload=Workload(**SMALL))


@pytest.fixture(scope="session")
def faster_rcnn():
    from mmdet_speedup import Workload, build_detector

    return build_detector("faster-rcnn_r50_fpn_1x_coco", weights="conditioned", device="cpu", workload=Workload(**SMALL))


@pytest.fixture(scope="session")
def stock_dets(mask_rcnn, image):
    from mmdet_speedup import stock_test_step

    return stock_test_step(mask_rcnn, image)


class TickClock:
    """A fake clock: every read advances one second, so stage times count clock reads, not wall time."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t
