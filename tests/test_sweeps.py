"""The profiler's sweeps: one interleaving loop, error rows that leave the others going, and what each records."""
from __future__ import annotations

import pandas as pd
import pytest

from mmdet_speedup import STOCK, Choices, Profiler, StagedPipeline, prepare_inputs
from mmdet_speedup import stages as S

from .conftest import TickClock


def test_sweep_interleaves_drops_warmup_and_keeps_going_after_an_error(mask_rcnn, image):
    calls = []

    def measure(label, pipe, choices, item, rep):
        calls.append((rep, label, item.name))
        if label == "bad" and rep == 0:
            raise RuntimeError("boom")
        return [{"stage": S.TOTAL, "ms": 1.0}]

    items = prepare_inputs([image, image])
    items[1].name = "second"
    variants = {"a": STOCK, "bad": STOCK, "never": Choices(precision="fp16")}  # fp16 on the CPU fails to build
    df = Profiler(mask_rcnn, device="cpu", repeats=2, warmup=1).sweep(variants, items, measure,
                                                                        build=lambda c: StagedPipeline(mask_rcnn, c, "cpu"))
    assert calls == [(-1, "a", items[0].name), (-1, "a", "second"), (-1, "bad", items[0].name), (-1, "bad", "second"),
                     (0, "a", items[0].name), (0, "a", "second"), (0, "bad", items[0].name),
                     (1, "a", items[0].name), (1, "a", "second")]
    ok, err = df[df["status"] == "ok"], df[df["status"] == "error"]
    assert ok["variant"].tolist() == ["a"] * 4 and sorted(ok["repeat"].unique()) == [0, 1]  # warm-up not kept
    assert dict(zip(err["variant"], err["message"])) == {"never": "InputError: fp16 needs CUDA (TensorCores); on the "
                                                                  "CPU use bf16 (AMX where the CPU has it)",
                                                         "bad": "RuntimeError: boom"}


def test_run_preprocess_times_only_the_host_stages(mask_rcnn, image):
    variants = {v: Choices(preprocess=v) for v in ("legacy", "stock", "auto")}
    df = Profiler(mask_rcnn, device="cpu", repeats=1, warmup=0, clock=TickClock()).run_preprocess(
        variants, prepare_inputs([image], "640x480"))
    assert set(df["stage"]) == {S.LOAD, S.PREPROCESS, S.DATA_PREPROCESSOR, S.TOTAL}
    wall = df.set_index(["variant", "stage"])["ms"]
    assert wall[("stock", S.LOAD)] == 1000 and wall[("stock", S.TOTAL)] == 7000  # 3 stages inside total: 6 reads
    assert (df["cpu_ms"] >= 0).all()
    by = df[df["stage"] == S.TOTAL].set_index("variant")
    assert by.loc["legacy", "bytes_copied"] > 3 * by.loc["stock", "bytes_copied"]  # float32 against uint8
    assert by.loc["auto", "chosen"] in ("legacy", "stock", "device") and by.loc["stock", "chosen"] == "stock"


def test_run_masks_posts_the_same_inputs_for_every_variant(mask_rcnn, image):
    dets = StagedPipeline(mask_rcnn, STOCK, "cpu")(image)
    variants = {v: v for v in ("full", "legacy", "box", "raw")}
    df = Profiler(mask_rcnn, device="cpu", repeats=2, warmup=1, clock=TickClock()).run_masks(
        variants, prepare_inputs([image]))
    assert set(df["stage"]) == {S.MASK_POSTPROCESS, S.CONSUMER_RLE} and (df["ms"] == 1000).all()
    assert (df["dets_out"] == len(dets)).all()  # every variant, every repeat: the same detections
    assert (df["masks"] == df["variant"]).all() and df["repeat"].tolist() == [0] * 8 + [1] * 8
    mem = df.groupby("variant")["mask_bytes"].first()
    assert mem["full"] == mem["legacy"] == dets.masks.nbytes() > 10 * max(mem["box"], mem["raw"])


def test_run_masks_on_a_model_without_masks_gives_error_rows(faster_rcnn, image):
    df = Profiler(faster_rcnn, device="cpu", repeats=1, warmup=0).run_masks({"raw": "raw", "full": "full"},
                                                                            prepare_inputs([image]))
    assert df["status"].tolist() == ["error", "error"]
    assert "needs a model with a mask head" in df["message"][0] and "has no mask head" in df["message"][1]
