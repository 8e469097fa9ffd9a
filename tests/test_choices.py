"""Choices: "auto" is decided in one place (``Choices.resolve``), values are checked by their own modules."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from mmdet_speedup import STOCK, Choices
from mmdet_speedup.checks import InputError
from mmdet_speedup.choices import AUTO, MEASURED


class _Head:
    def __init__(self, with_mask: bool) -> None:
        self.with_mask = with_mask


class _Model:
    def __init__(self, with_mask: bool = True) -> None:
        self.roi_head = _Head(with_mask)


@pytest.mark.parametrize("bf16, expect", [(True, "bf16"), (False, "fp32")])
def test_auto_on_the_cpu_follows_the_matrix_engine(monkeypatch, bf16, expect):
    import mmdet_speedup.environment as env

    monkeypatch.setattr(env, "cpu_has_bf16", lambda: bf16)
    c = Choices.auto().resolve("cpu", _Model())
    assert c.precision == expect and c.channels_last is (expect != "fp32")
    assert (c.masks, c.roi_align, c.fold_bn, c.compile) == ("raw", "threaded", False, False)
    assert c.preprocess == AUTO and "preprocess" in MEASURED  # measured at run time, not decided here
    assert c.runtime == AUTO and "runtime" in MEASURED  # measured too (OpenVINO and ONNX Runtime are installed)
    assert c.resolved


def test_auto_on_cuda_and_without_a_mask_head():
    c = Choices.auto().resolve(torch.device("cuda"), _Model(with_mask=False))
    # torchvision: the optimized rows route RoIAlign and NMS through torchvision on CUDA (cuda_ops)
    assert (c.precision, c.channels_last, c.roi_align, c.masks, c.runtime) == ("fp16", True, "torchvision", "full", "torch")


def test_given_values_are_kept_and_checked_against_device_and_model():
    c = Choices.auto(precision="fp32", masks="box", channels_last=True).resolve("cpu", _Model())
    assert (c.precision, c.masks, c.channels_last) == ("fp32", "box", True)
    assert c.runtime == "torch"  # channels_last is a torch lever: auto keeps torch
    assert STOCK.resolve("cpu", _Model()) == STOCK and not STOCK.changes_model()
    with pytest.raises(InputError, match="fp16 needs CUDA"):
        Choices(precision="fp16").resolve("cpu", _Model())
    with pytest.raises(InputError, match="needs a model with a mask head"):
        Choices(masks="raw").resolve("cpu", _Model(with_mask=False))
    with pytest.raises(ValueError, match="needs the model"):
        Choices.auto().resolve("cpu")


@pytest.mark.parametrize("field, value, message", [
    ("precision", "fp8", "unknown precision"), ("masks", "rle", "unknown masks"),
    ("preprocess", "gpu", "unknown preprocess"), ("roi_align", "cuda", "unknown roi_align"),
    ("channels_last", "yes", "channels_last must be True, False or 'auto'"), ("runtime", "tensorrt", "unknown runtime"),
])
def test_each_value_is_checked_by_its_module(field, value, message):
    with pytest.raises(InputError, match=message):
        Choices(**{field: value})


def test_labels_name_what_runs():
    assert STOCK.label() == "stock/fp32/full"
    assert Choices.auto().label() == "auto/auto/rt:auto/cl:auto/foldbn:auto/roi-auto/compiled:auto/auto"
    assert Choices(precision="bf16", runtime="openvino").label() == "stock/bf16/ov/full"
    assert Choices(runtime="onnxruntime").label() == "stock/fp32/ort/full"
    assert Choices(precision="bf16", channels_last=True, roi_align="threaded").label() == "stock/bf16/cl/roi-threaded/full"


def test_runtime_resolves_with_the_torch_levers(monkeypatch):
    import sys

    c = Choices.auto(runtime="openvino", precision="fp32").resolve("cpu", _Model())
    assert (c.runtime, c.channels_last, c.compile) == ("openvino", False, False) and c.changes_model()
    assert Choices(runtime="torch").resolve("cpu", _Model()) == STOCK
    with pytest.raises(InputError, match="channels_last is a torch lever"):
        Choices(runtime="openvino", channels_last=True).resolve("cpu", _Model())
    with pytest.raises(InputError, match="runtime 'onnxruntime' runs precision fp32"):
        Choices(runtime="onnxruntime", precision="bf16").resolve("cpu", _Model())
    with pytest.raises(InputError, match="CPU only"):
        Choices(runtime="onnxruntime").resolve("cuda", _Model())
    for name in ("openvino", "onnxruntime"):  # neither installed: nothing to measure, auto is torch
        monkeypatch.setitem(sys.modules, name, None)
    assert Choices.auto().resolve("cpu", _Model()).runtime == "torch"
    with pytest.raises(InputError, match="pip install onnxruntime"):
        Choices(runtime="onnxruntime").resolve("cpu", _Model())


def test_preprocess_summary_medians_per_case_and_variant():
    from mmdet_speedup.study.preprocess import preprocess_summary

    rows = []
    for variant, pre, chosen in (("stock", 4.0, "stock"), ("auto", 2.0, "legacy")):
        for rep, k in enumerate((1.0, 3.0, 2.0)):
            for stage, ms in (("load", 10.0), ("preprocess", pre * k), ("data_preprocessor", 1.0), ("total", 99.0)):
                rows.append(dict(status="ok", input_size="640x480", scale="480x320", variant=variant, repeat=rep,
                                 image="a.jpg", stage=stage, ms=ms, cpu_ms=2 * ms, bytes_copied=2**20,
                                 chosen=chosen))
    rows.append(dict(status="error", input_size="640x480", scale="480x320", variant="device", stage="total"))
    s = preprocess_summary(pd.DataFrame(rows))
    assert list(s.index) == [("640x480 > 480x320", "stock"), ("640x480 > 480x320", "auto")]  # errors left out
    stock = s.loc[("640x480 > 480x320", "stock")]
    assert stock["pre_ms"] == 4.0 * 2 + 1 and stock["pre_cpu_ms"] == 2 * (4.0 * 2 + 1) and stock["load_ms"] == 10
    assert stock["MiB copied"] == 1 and stock["megapixels"] == pytest.approx(0.3072)
    assert s.loc[("640x480 > 480x320", "auto"), "chosen"] == "legacy"


def test_bf16_on_a_cpu_that_only_emulates_it_is_refused_unless_asked(monkeypatch):
    """A study run refuses emulated bf16 in one line (an emulated row would take hours); the opt-in runs it."""
    from mmdet_speedup import environment, precision
    from mmdet_speedup.checks import EMULATED_ENV, InputError

    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)
    monkeypatch.delenv(EMULATED_ENV, raising=False)
    with pytest.raises(InputError, match="without bf16 instructions.*MMDET_SPEEDUP_EMULATED=1"):
        precision.check("bf16-weights", torch.device("cpu"))
    assert precision.check("fp32", torch.device("cpu")) == "fp32"
    monkeypatch.setenv(EMULATED_ENV, "1")
    assert precision.check("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: True)
    monkeypatch.delenv(EMULATED_ENV)
    assert precision.check("bf16", torch.device("cpu")) == "bf16"
