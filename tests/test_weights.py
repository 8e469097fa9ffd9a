"""The weights recipe (issue 12): BatchNorms that are not identities, calibrated on the study's images, seeded."""
import copy

import pytest
import torch

from mmdet_speedup import Choices, StagedPipeline, compare, stock_test_step
from mmdet_speedup.checks import InputError
from mmdet_speedup.equivalence import relative_error
from mmdet_speedup.models import (WEIGHTS_RECIPE, Conditioning, batch_norms, calibrate_bn, init_weights,
                                  load_config, randomize_bn)

from .conftest import IMAGES, SMALL


def test_bn_gammas_betas_follow_the_recipe(mask_rcnn):
    bns = batch_norms(mask_rcnn)
    assert len(bns) == 53  # ResNet-50: stem + 16 bottlenecks x 3 + 4 downsamples
    gamma = torch.cat([bn.weight.detach() for bn in bns])
    beta = torch.cat([bn.bias.detach() for bn in bns])
    # no gamma is zero (zero_init_residual undone) and all lie in the clip range
    assert bool((gamma != 0).all()) and float(gamma.min()) >= 0.3 and float(gamma.max()) <= 2.0
    assert 0.9 < float(gamma.mean()) < 1.1 and 0.15 < float(gamma.std()) < 0.25  # N(1, 0.2), lightly clipped
    assert bool((beta != 0).all()) and abs(float(beta.mean())) < 0.02 and 0.15 < float(beta.std()) < 0.25
    # every Bottleneck's last BN (zeroed by init_weights' zero_init_residual) is not an identity either
    last = [m.norm3.weight for m in mask_rcnn.backbone.modules() if hasattr(m, "norm3")]
    assert len(last) == 16 and all(bool((g != 1).any()) and bool((g != 0).all()) for g in last)


def test_bn_running_stats_are_calibrated_not_identity(mask_rcnn):
    for bn in batch_norms(mask_rcnn):
        assert not bool((bn.running_mean == 0).all()), "running_mean left at its reset value"
        assert not bool((bn.running_var == 1).all()), "running_var left at its reset value"
        assert bool((bn.running_var > 0).all())
        assert not bn.training and bn.momentum == 0.1  # eval mode and momentum restored after calibration
        assert int(bn.num_batches_tracked) == len(mask_rcnn.mmdet_speedup_calibration)
    assert mask_rcnn.mmdet_speedup_calibration == tuple(p.name for p in IMAGES[:Conditioning().calibration_images])


def test_calibration_is_the_cumulative_average_of_batch_statistics():
    """Each BN in train mode alone, momentum None: running stats = mean over images of each image's batch stats."""
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
            self.neck = None

        def extract_feat(self, x):
            return self.backbone(x)

    g = torch.Generator().manual_seed(0)
    model = Tiny().eval()
    model.backbone[1].running_mean.fill_(5.0)  # stale statistics: must be reset first
    batches = [(torch.randn(1, 3, 9, 11, generator=g) * (k + 1) + k, None) for k in range(3)]
    calibrate_bn(model, batches)
    conv, bn = model.backbone
    with torch.no_grad():
        outs = [conv(x) for x, _ in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).flatten(1).var(1, unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert not bn.training and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3


def test_bn_randomization_is_seeded():
    def bns(seed):
        m = torch.nn.Sequential(torch.nn.BatchNorm2d(64), torch.nn.Conv2d(64, 64, 1), torch.nn.BatchNorm1d(32))
        randomize_bn(m, Conditioning(seed=seed))
        return torch.cat([p.detach() for bn in batch_norms(m) for p in (bn.weight, bn.bias)])

    assert torch.equal(bns(0), bns(0)) and not torch.equal(bns(0), bns(1))


def test_no_pretrained_weights_are_ever_downloaded():
    from mmengine.model import BaseModule

    # the C4 config's shared head (res5) names an ImageNet checkpoint; the config is cleaned of it
    cfg = load_config("faster-rcnn_r50-caffe_c4-1x_coco")
    assert "Pretrained" not in cfg.pretty_text and "open-mmlab://" not in cfg.pretty_text
    # and a Pretrained init that slipped through is refused, not fetched
    m = torch.nn.Module()
    m.head = BaseModule(init_cfg=dict(type="Pretrained", checkpoint="https://example.invalid/w.pth"))
    m.init_weights = lambda: pytest.fail("init_weights ran")
    with pytest.raises(InputError, match="pretrained"):
        init_weights(m, Conditioning())


def test_recipe_is_recorded_and_matches_the_defaults():
    from mmdet_speedup.environment import environment

    c = Conditioning()
    rec = environment()["weights_recipe"]
    assert rec["recipe"] == WEIGHTS_RECIPE and rec["conditioning"]["seed"] == c.seed
    assert (rec["conditioning"]["bn_gamma_std"], tuple(rec["conditioning"]["bn_gamma_range"]),
            rec["conditioning"]["bn_beta_std"], rec["conditioning"]["calibration_images"]) == (0.2, (0.3, 2.0), 0.2, 3)
    # the fixed text says what the defaults do
    for text in ("N(1, 0.2)", "[0.3, 2]", "N(0, 0.2)", f"first {c.calibration_images} study images",
                 f"cls std {c.cls_logit_std:g}", f"background bias {c.background_bias:g}",
                 f"mask std {c.mask_logit_std:g}"):
        assert text in WEIGHTS_RECIPE, text


def test_folding_bn_changes_the_weights_and_keeps_the_detections(mask_rcnn, image):
    stock = StagedPipeline(copy.deepcopy(mask_rcnn), Choices(), "cpu")
    folded = StagedPipeline(mask_rcnn, Choices(fold_bn=True), "cpu")
    assert not batch_norms(folded.model.backbone) and len(batch_norms(mask_rcnn.backbone)) == 53
    before = dict(mask_rcnn.backbone.named_modules())
    convs = [(n, m) for n, m in folded.model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 53
    for name, conv in convs:
        # identity BNs would change each weight by 1/sqrt(1 + eps) only; these change it by gamma/sqrt(var)
        rel = ((conv.weight - before[name].weight).norm() / before[name].weight.norm()).item()
        assert rel > 0.01, (name, rel)
        assert conv.bias is not None and bool((conv.bias != 0).any()), name
    inputs, _ = stock.prepare(image)
    # folding is exact up to float rounding: features within 1e-3 (bf16 is ~0.2 on these weights)
    assert relative_error(stock.features(inputs).maps, folded.features(inputs).maps) < 1e-3
    a = compare(stock(image), folded(image))
    assert a.n_ref >= 50 and a.matched_ref >= 0.95 and a.matched_test >= 0.95, a
    assert a.box_iou_mean >= 0.99 and a.mask_iou_mean >= 0.99, a


def test_conditioned_workload_looks_trained_on_every_study_image(mask_rcnn):
    """Logits conditioned on real images: every study image fills max_per_img with masks that are not empty."""
    assert len(IMAGES) >= 4
    for path in IMAGES:
        d = stock_test_step(mask_rcnn, path)
        assert len(d) == SMALL["dets_per_image"], path.name
        assert float(d.scores.min()) >= 0.05
        fill = d.masks.to_full().flatten(1).float().mean(1)
        assert float((fill > 0).float().mean()) > 0.5 and float(fill.max()) < 1, path.name


def test_a_conditioned_model_from_the_cache_is_the_model_conditioning_makes(tmp_path, monkeypatch):
    """The cache of conditioned weights changes nothing: same weights, same random state after the build; a
    broken file is conditioned again; ``0`` turns it off."""
    from mmdet_speedup import Workload, build_detector

    def build():
        model = build_detector("faster-rcnn_r50_fpn_1x_coco", weights="conditioned", device="cpu",
                               workload=Workload(scale=(320, 224)))
        return model.state_dict(), torch.rand(3)  # the draw after the build: the random state conditioning left

    monkeypatch.setenv("MMDET_SPEEDUP_MODEL_CACHE", "0")
    fresh, draw = build()
    monkeypatch.setenv("MMDET_SPEEDUP_MODEL_CACHE", str(tmp_path))
    assert build()[1].equal(draw) and len(list(tmp_path.glob("*.pt"))) == 1  # conditioned, then kept
    for kept in ("cached", "broken"):
        state, after = build()
        assert set(state) == set(fresh) and all(state[k].equal(fresh[k]) for k in fresh) and after.equal(draw)
        next(tmp_path.glob("*.pt")).write_bytes(b"not a checkpoint")  # the second round reads a broken file
    monkeypatch.setenv("MMDET_SPEEDUP_MODEL_CACHE", "0")
    assert torch.equal(build()[1], draw)


def test_the_model_cache_stays_within_its_size_and_never_fails_a_run(tmp_path, monkeypatch):
    """Least recently used out first (a load counts as a use); a save that would leave the disk short, or that
    fails (disk full), keeps nothing and warns, and the run goes on."""
    import os
    from collections import namedtuple

    from mmdet_speedup import models

    model = torch.nn.Linear(256, 1024)  # 1 MiB of weights
    old, used, fresh, new = (tmp_path / f"{n}.pt" for n in ("old", "used", "fresh", "new"))
    for age, f in enumerate((fresh, used, old)):
        models._save_conditioned(model, f)
        os.utime(f, (1e9 - age * 100, 1e9 - age * 100))
    assert models._load_conditioned(model, old)  # now the most recently used
    monkeypatch.setenv("MMDET_SPEEDUP_MODEL_CACHE_GB", str(3.5 / 1024))  # room for three
    models._save_conditioned(model, new)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fresh.pt", "new.pt", "old.pt"]

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(models.shutil, "disk_usage", lambda p: usage(2**40, 2**40, int(models.CACHE_MIN_FREE_GB * 2**30)))
    with pytest.warns(UserWarning, match=r"not keeping 1 MB .* GB free on its disk"):
        models._save_conditioned(model, tmp_path / "short.pt")
    monkeypatch.undo()

    def full(*a, **k):
        a[1].write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.warns(UserWarning, match="could not keep full.pt: .*No space left on device"):
        models._save_conditioned(model, tmp_path / "full.pt")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fresh.pt", "new.pt", "old.pt"]  # no partial file
