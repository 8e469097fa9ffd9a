"""Training through mmengine's Runner on tiny generated images: the loss falls, and a stopped run resumes where it
stopped (iteration, optimizer, scheduler and data order)."""
from dataclasses import replace

import pytest
import torch

from mmdet_speedup import synth, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synth.generate("train", tmp_path_factory.mktemp("synth"), images=4, image_size="256x160", seed=7)


RECIPE = replace(train.Recipe(), iters=4, crop=128, resize=(0.2, 0.2), warmup=0, lr=5e-4, checkpoint_every=2,
                 rois_per_image=32, autocast=False, log_every=1)


def _seen(monkeypatch):
    """The image files of every batch the loop trains on, in order."""
    from mmengine.runner.loops import IterBasedTrainLoop

    seen: list[list[str]] = []
    run_iter = IterBasedTrainLoop.run_iter

    def spy(self, batch):
        seen.append([s.img_path.rsplit("/", 1)[-1] for s in batch["data_samples"]])
        return run_iter(self, batch)

    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", spy)
    return seen


@pytest.mark.slow
def test_training_lowers_the_loss_and_resumes_where_it_stopped(tiny, tmp_path, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    seen = _seen(monkeypatch)
    train.train(RECIPE, tiny, whole)
    once = list(seen)
    seen.clear()
    train.train(RECIPE, tiny, parts, until=2)
    assert train.last_checkpoint(parts).name == "iter_2.pth"
    first = list(seen)
    seen.clear()
    train.train(RECIPE, tiny, parts)  # a new process would do the same: the state is on disk
    assert first + seen == once  # the data order continues, nothing trained twice or skipped

    a, b = (torch.load(train.last_checkpoint(w), map_location="cpu", weights_only=False) for w in (whole, parts))
    assert a["meta"]["iter"] == b["meta"]["iter"] == RECIPE.iters
    steps = [next(iter(c["optimizer"]["state"].values()))["step"] for c in (a, b)]
    assert float(steps[0]) == float(steps[1]) == RECIPE.iters  # the optimizer's state came through the resume
    assert [s["last_step"] for s in a["param_schedulers"]] == [s["last_step"] for s in b["param_schedulers"]]

    curve = train.learning_curve(whole)
    assert curve["iter"].tolist() == list(range(1, RECIPE.iters + 1))
    losses = curve["loss"].tolist()
    assert losses[-1] < losses[0], losses


def test_the_data_order_skips_without_loading():
    stream = train.order(5, seed=1)
    head = [next(stream) for _ in range(12)]
    assert sorted(head[:5]) == sorted(head[5:10]) == list(range(5)) and head[:5] != head[5:10]
    later = train.order(5, seed=1, start=7)
    assert [next(later) for _ in range(5)] == head[7:12]


def test_autocast_runs_backbone_and_neck_in_bf16_and_hands_the_heads_fp32():
    """The dtype contract, checked by forward hooks: convs of the backbone and neck compute in bf16 under the
    training wrapper, the RPN and RoI heads receive fp32 (mmcv's NMS and RoIAlign refuse bf16)."""
    from mmengine.registry import MODELS

    from mmdet_speedup.environment import cpu_has_bf16
    from mmdet_speedup.models import load_config

    if not cpu_has_bf16():
        pytest.skip("no bf16 matrix instructions: training runs fp32 here")
    cfg = train.config(RECIPE, synth.cache_root() / "unused.json", synth.cache_root())
    model = MODELS.build(cfg.model)
    train.autocast_features(model)
    train.autocast_features(model)  # idempotent: wrapped once
    seen = {}

    def hook(name):
        def fn(module, args, out):
            seen[name] = (args[0].dtype if args else None, out[0].dtype if isinstance(out, (tuple, list)) else out.dtype)
        return fn

    model.backbone.conv1.register_forward_hook(hook("backbone.conv1"))
    model.neck.fpn_convs[0].conv.register_forward_hook(hook("neck.fpn_convs.0"))
    model.rpn_head.rpn_conv.register_forward_hook(hook("rpn_head.rpn_conv"))
    model.train()
    feats = model.extract_feat(torch.randn(1, 3, 64, 96))
    model.rpn_head(feats)
    assert seen["backbone.conv1"][1] == torch.bfloat16 and seen["neck.fpn_convs.0"][1] == torch.bfloat16
    assert all(f.dtype == torch.float32 for f in feats)
    assert seen["rpn_head.rpn_conv"][0] == torch.float32
    assert load_config(train.CONFIG).model.backbone.norm_eval is True  # the study's config itself is untouched


def test_a_later_stage_reports_every_stage_and_counts_iterations_from_the_first(tmp_path):
    import json

    import pandas as pd

    (tmp_path / "earlier_record.json").write_text(json.dumps(dict(recipe={"iters": 10}, iterations=8,
                                                                  seconds_in_loop=30.0)))
    pd.DataFrame({"iter": [4, 8], "loss": [2.0, 1.5]}).to_csv(tmp_path / "earlier_curve.csv", index=False)
    now = pd.DataFrame({"iter": [3, 6], "loss": [1.4, 1.2]})
    parts, curve = train.stages(tmp_path, replace(RECIPE, init="w.safetensors"), 6, 20.0, now)
    assert [p["iterations"] for p in parts] == [8, 6] and parts[1]["seconds_in_loop"] == 20.0
    assert curve["iter"].tolist() == [4, 8, 11, 14] and curve["stage"].tolist() == [1, 1, 2, 2]
    alone, curve = train.stages(tmp_path, RECIPE, 6, 20.0, now)  # no init: one stage, whatever the folder holds
    assert len(alone) == 1 and curve["stage"].tolist() == [1, 1]
