"""NMS workbench: seeded generators, implementations agreeing with a brute-force oracle, recall, sweep, fits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from mmdet_speedup.nms import (IMPLEMENTATIONS, NMS_COLUMNS, BoxSet, clustered_boxes, nms_mmcv_batched, random_idxs,
                               recall, sweep, topk_recall, uniform_boxes)
from mmdet_speedup.study.nms import crossover, fit_slope

W, H = 1333, 800
BATCHED = ("offset", "per_class", "torchvision_batched", "mmcv_batched")


def needs_mmcv(name: str) -> None:
    if name.startswith("mmcv"):
        pytest.importorskip("mmcv.ops")


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thr: float) -> torch.Tensor:
    """Greedy NMS written out longhand: the oracle every kernel must match."""
    iou = torchvision.ops.box_iou(boxes, boxes)
    keep: list[int] = []
    for i in scores.argsort(descending=True).tolist():
        if all(idxs[i] != idxs[j] or iou[i, j] <= thr for j in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def assert_valid(boxes: torch.Tensor) -> None:
    x1, y1, x2, y2 = boxes.unbind(1)
    assert boxes.dtype == torch.float32
    assert bool((x2 > x1).all()) and bool((y2 > y1).all())
    assert bool((x1 >= 0).all()) and bool((y1 >= 0).all())
    assert bool((x2 <= W).all()) and bool((y2 <= H).all())


# --------------------------------------------------------------------------- generators

@pytest.mark.parametrize("n", [1, 37, 2000])
def test_uniform_boxes_seeded_counted_valid(n):
    b1, s1 = uniform_boxes(n, seed=3)
    b2, s2 = uniform_boxes(n, seed=3)
    b3, _ = uniform_boxes(n, seed=4)
    assert b1.shape == (n, 4) and s1.shape == (n,)
    assert torch.equal(b1, b2) and torch.equal(s1, s2)
    assert not torch.equal(b1, b3)
    assert_valid(b1)


@pytest.mark.parametrize("n,num_objects", [(0, 20), (7, 20), (1000, 20), (999, 7)])
def test_clustered_boxes_seeded_counted_valid(n, num_objects):
    a = clustered_boxes(n, num_objects=num_objects, seed=1, num_classes=4)
    b = clustered_boxes(n, num_objects=num_objects, seed=1, num_classes=4)
    assert isinstance(a, BoxSet) and len(a) == n
    assert a.boxes.shape == (n, 4) and a.scores.shape == a.labels.shape == a.object_of.shape == (n,)
    assert a.objects.shape == (num_objects, 4)
    for x, y in zip((a.boxes, a.scores, a.labels, a.objects, a.object_of),
                    (b.boxes, b.scores, b.labels, b.objects, b.object_of)):
        assert torch.equal(x, y)
    assert_valid(a.boxes)
    assert_valid(a.objects)
    counts = torch.bincount(a.object_of, minlength=num_objects)
    assert int(counts.sum()) == n
    assert set(counts.tolist()) <= {n // num_objects, n // num_objects + 1}
    if n:
        assert a.labels.min() >= 0 and a.labels.max() < 4
        assert 0.0 <= float(a.scores.min()) and float(a.scores.max()) <= 1.0
        assert not torch.equal(a.boxes, clustered_boxes(n, num_objects=num_objects, seed=2).boxes)


def test_scores_distinct_at_large_n():
    # float32 uniform draws tie at this n; tied scores would make the kept order kernel-dependent
    assert uniform_boxes(30_000)[1].unique().numel() == 30_000
    assert clustered_boxes(30_000).scores.unique().numel() == 30_000


def test_clustered_scores_track_tightness():
    bs = clustered_boxes(4000, seed=0, jitter=0.3)
    iou = torchvision.ops.box_iou(bs.boxes, bs.objects).gather(1, bs.object_of[:, None]).squeeze(1)
    corr = np.corrcoef(iou.numpy(), bs.scores.numpy())[0, 1]
    assert corr > 0.9


# --------------------------------------------------------------------------- implementations

@pytest.mark.parametrize("thr", [0.5, 0.7])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("name", ["torchvision", "mmcv"])
def test_class_agnostic_match_oracle(name, kind, thr):
    needs_mmcv(name)
    if kind == "uniform":
        boxes, scores = uniform_boxes(400, seed=5)
    else:
        bs = clustered_boxes(400, seed=5)
        boxes, scores = bs.boxes, bs.scores
    idxs = torch.zeros(len(boxes), dtype=torch.int64)
    keep = IMPLEMENTATIONS[name](boxes, scores, idxs, thr)
    ref = reference_nms(boxes, scores, idxs, thr)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, ref)
    assert 0 < len(keep) < len(boxes)  # the case actually suppresses something


@pytest.mark.parametrize("thr", [0.5, 0.7])
@pytest.mark.parametrize("name", BATCHED)
def test_batched_match_oracle(name, thr):
    needs_mmcv(name)
    bs = clustered_boxes(600, seed=7, num_classes=5)
    keep = IMPLEMENTATIONS[name](bs.boxes, bs.scores, bs.labels, thr)
    ref = reference_nms(bs.boxes, bs.scores, bs.labels, thr)
    assert torch.equal(keep, ref)
    # Per class keeps strictly more than class-agnostic on overlapping, mixed-label clusters.
    assert len(keep) > len(torchvision.ops.nms(bs.boxes, bs.scores, thr))


@pytest.mark.parametrize("n", [500, 3000])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_batched_strategies_agree(kind, n):
    # 500 boxes: torchvision's batched_nms uses the offset trick on the CPU; 3000: its per-class loop.
    if kind == "uniform":
        boxes, scores = uniform_boxes(n, seed=11)
        idxs = random_idxs(n, 8, seed=11)
    else:
        bs = clustered_boxes(n, seed=11, num_classes=8)
        boxes, scores, idxs = bs.boxes, bs.scores, bs.labels
    names = [m for m in BATCHED if not m.startswith("mmcv")]
    keeps = {m: IMPLEMENTATIONS[m](boxes, scores, idxs, 0.6) for m in names}
    for m in names[1:]:
        assert torch.equal(keeps[m], keeps[names[0]]), m
    assert bool((scores[keeps["offset"]].diff() <= 0).all())  # sorted by decreasing score


def test_mmcv_batched_split_paths_agree():
    pytest.importorskip("mmcv.ops")
    bs = clustered_boxes(2000, seed=13, num_classes=6)
    args = (bs.boxes, bs.scores, bs.labels, 0.7)
    one_call = nms_mmcv_batched(*args)                # 2000 < split_thr=10000: offset, one NMS
    looped = nms_mmcv_batched(*args, split_thr=100)   # >= split_thr: per-index loop and re-sort
    assert torch.equal(one_call, looped)
    assert torch.equal(looped, IMPLEMENTATIONS["per_class"](*args))


def test_mmcv_batched_default_split_thr_above_10000():
    pytest.importorskip("mmcv.ops")
    boxes, scores = uniform_boxes(10_001, seed=17)
    idxs = random_idxs(10_001, 5, seed=17)
    keep = IMPLEMENTATIONS["mmcv_batched"](boxes, scores, idxs, 0.5)
    assert torch.equal(keep, IMPLEMENTATIONS["offset"](boxes, scores, idxs, 0.5))


def test_empty_input():
    boxes, scores = torch.zeros(0, 4), torch.zeros(0)
    idxs = torch.zeros(0, dtype=torch.int64)
    for name in ("torchvision", "torchvision_batched", "offset", "per_class"):
        assert IMPLEMENTATIONS[name](boxes, scores, idxs, 0.5).numel() == 0


# --------------------------------------------------------------------------- recall

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_bounds(seed):
    bs = clustered_boxes(500, seed=seed, jitter=0.5)
    assert recall(bs, torch.arange(len(bs))) == 1.0
    assert recall(bs, torch.empty(0, dtype=torch.int64)) == 0.0
    # Copies of object 0 recall it, and any other object only by overlapping it.
    only0 = (bs.object_of == 0).nonzero().view(-1)
    others = torchvision.ops.box_iou(bs.objects[:1], bs.objects[1:]).max()
    assert recall(bs, only0) >= 1 / 20
    if others < 0.3:
        assert recall(bs, only0) == pytest.approx(1 / 20)


def test_recall_partial_is_exact():
    objects = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [300, 300, 310, 310]])
    bs = BoxSet(boxes, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64), objects,
                torch.tensor([0, 1]))
    assert recall(bs, torch.tensor([0, 1])) == 0.5
    assert recall(bs, torch.tensor([1])) == 0.0


def test_topk_recall_drops_when_k_tiny():
    bs = clustered_boxes(2000, num_objects=20, seed=3, jitter=0.3)
    full = topk_recall(bs, 2000, 0.7)
    tiny = topk_recall(bs, 3, 0.7)
    assert full == 1.0
    assert tiny <= 3 / 20
    assert topk_recall(bs, 3, 0.7) < topk_recall(bs, 200, 0.7) <= full


# --------------------------------------------------------------------------- sweep

def _boom(boxes, scores, idxs, thr):
    raise RuntimeError("kernel exploded")


def test_sweep_rows_and_error_rows(tmp_path):
    out = tmp_path / "nms.csv"
    impls = {"torchvision": IMPLEMENTATIONS["torchvision"], "offset": IMPLEMENTATIONS["offset"], "boom": _boom}
    rows = sweep([50, 120], impls, [0.5], repeats=3, warmup=1, device="cpu", out_csv=str(out), run_id="t1",
                 num_classes=3)
    df = pd.read_csv(out)
    assert list(df.columns) == list(NMS_COLUMNS)
    # 2 box sets x 2 n x 1 threshold x (2 implementations x 3 repeats + 1 error row)
    assert len(df) == len(rows) == 2 * 2 * (2 * 3 + 1)
    ok, err = df[df.status == "ok"], df[df.status == "error"]
    assert len(err) == 4 and set(err.implementation) == {"boom"}
    assert err.message.str.contains("RuntimeError: kernel exploded").all()
    assert sorted(ok.groupby(["box_set", "n", "implementation"]).repeat.apply(list).iloc[0]) == [0, 1, 2]
    assert (ok.ms > 0).all() and (ok.kept > 0).all() and (ok.kept <= ok.n).all()
    assert set(df.run_id) == {"t1"} and set(df.num_classes) == {3} and set(df.device) == {"cpu"}
    assert ok[ok.implementation == "torchvision"].message.str.contains("class-agnostic").all()


def test_sweep_interrupted_keeps_rows(tmp_path):
    out = tmp_path / "nms.csv"

    def interrupt(boxes, scores, idxs, thr):
        raise KeyboardInterrupt  # not an Exception: the sweep stops, what it wrote stays

    impls = {"offset": IMPLEMENTATIONS["offset"], "stop": interrupt}
    with pytest.raises(KeyboardInterrupt):
        sweep([40], impls, [0.5], box_sets=("uniform",), repeats=2, warmup=0, device="cpu", out_csv=str(out))
    df = pd.read_csv(out)
    assert len(df) == 2 and set(df.implementation) == {"offset"}


def test_sweep_unknown_box_set():
    with pytest.raises(ValueError):
        sweep([10], ["offset"], [0.5], box_sets=("gaussian",), repeats=1, device="cpu")


# --------------------------------------------------------------------------- fits

def _synthetic(ns, impls_ms, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"implementation": name, "box_set": "uniform", "n": n, "ms": f(n) * rng.lognormal(0, 0.05),
             "status": "ok", "repeat": r} for name, f in impls_ms.items() for n in ns for r in range(5)]
    return pd.DataFrame(rows)


def test_fit_slope_recovers_exponent():
    ns = np.unique(np.logspace(2, 4.5, 8).astype(int))
    df = _synthetic(ns, {"quad": lambda n: 3e-6 * n**2, "lin": lambda n: 2e-3 * n,
                         # a fixed overhead hides the exponent at small n: n_min recovers it
                         "overhead": lambda n: 5.0 + 1e-6 * n**2})
    df.loc[0, "status"], df.loc[0, "ms"] = "error", np.nan
    fit = fit_slope(df).set_index("implementation")
    assert fit.loc["quad", "slope"] == pytest.approx(2.0, abs=0.05)
    assert fit.loc["lin", "slope"] == pytest.approx(1.0, abs=0.05)
    assert fit.loc["quad", "n_min"] == ns[0] and fit.loc["quad", "n_max"] == ns[-1]
    assert fit.loc["overhead", "slope"] < 1.6
    tail = fit_slope(df, n_min=10_000).set_index("implementation")
    assert tail.loc["overhead", "slope"] == pytest.approx(2.0, abs=0.2)


def test_crossover():
    ns = [100, 200, 400, 800, 1600, 3200]
    df = _synthetic(ns, {"offset": lambda n: 1e-4 * n**2, "per_class": lambda n: 20 + 0.01 * n})
    # offset: 1, 4, 16, 64, ... ; per_class: 21, 22, 24, 28, ...: per_class wins from 800 on
    assert crossover(df) == 800
    assert crossover(df, a="per_class", b="offset") is None
    # a win at small n does not move the switch point
    df.loc[(df.implementation == "per_class") & (df.n == 100), "ms"] = 0.1
    assert crossover(df) == 800
    assert crossover(df, box_set="clustered") is None
