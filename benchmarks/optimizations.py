"""Each optimization's stage time against its baseline, as a ratio measured in one run (a benchmark, not a test).

    python benchmarks/optimizations.py [--quick] [--out rows.csv]

Mask R-CNN R-50-FPN, conditioned random weights, 100 detections per image, at a 1333x800 input and at a
3840x2304 input (resized to 1333x800, and the seed's case of running the model at 3840x2304 for the
pre-processing). Prints one table; with --out, appends the tidy rows as well.
"""
from __future__ import annotations

import argparse
import tempfile

import pandas as pd
import torch

import mmdet_speedup as ms
from mmdet_speedup import book, stages as S
from mmdet_speedup.loader import overlap_bound
from mmdet_speedup.models import parse_size

TARGETS = {"precision": ">= 4x (backbone+neck)", "masks raw vs legacy": ">= 50x at 3840x2304",
           "masks raw vs full": ">= 20x at 3840x2304", "preprocess auto": "never slower than the best (within noise)",
           "loading": ">= 80% of the bound"}


def stage_ms(df: pd.DataFrame, stages) -> pd.Series:
    t = ms.stage_table(df)
    return t[[s for s in stages if s in t.columns]].sum(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small scale, one repeat: checks the script runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    dev = ms.resolve_device(a.device)
    scale, big, reps = ("480x320", "1280x768", 1) if a.quick else ("1333x800", "3840x2304", 3)
    rec = ms.Recorder(a.out or tempfile.mktemp(suffix=".csv"), notebook="benchmark", params=vars(a))
    print(f"run {rec.run_id} on {dev} ({ms.environment.cpu_model()}), threads {torch.get_num_threads()}")
    model = ms.build_detector("mask-rcnn_r50_fpn_1x_coco", device=str(dev),
                              workload=ms.Workload(scale=parse_size(scale), dets_per_image=100))
    images = book.default_images(1)
    low = ms.precision.studied(dev)  # named, not "auto": the benchmark compares it even where the CPU lacks bf16
    C = ms.Choices
    out = []

    def add(opt, case, base, var, stages, b, v):
        out.append({"optimization": opt, "case": case, "baseline": base, "variant": var, "stages": "+".join(stages),
                    "baseline ms": b, "variant ms": v, "ratio": b / v, "target": TARGETS.get(opt, "")})

    prof = ms.Profiler(model, device=str(dev), recorder=rec, repeats=reps, warmup=1)
    for size in (scale, big):
        samples = ms.prepare_inputs(images, size)
        # pre-processing, alone
        pre = prof.run_preprocess({v: C(preprocess=v) for v in ("legacy", "stock", "device", "auto")}, samples)
        t = stage_ms(pre, [S.PREPROCESS, S.DATA_PREPROCESSOR])
        best = t.drop("auto").min()
        for v in ("legacy", "device", "auto"):
            add("preprocess " + v, f"{size}>{scale}", "stock", v, ["preprocess", "data_preprocessor"], t["stock"], t[v])
        add("preprocess auto", f"{size}>{scale}", "best fixed", "auto", ["preprocess", "data_preprocessor"], best, t["auto"])
        # masks, alone (the same captured logits for every variant)
        mk = prof.run_masks({v: v for v in ("legacy", "full", "box", "raw")}, samples)
        t = stage_ms(mk, [S.MASK_POSTPROCESS])
        rle = stage_ms(mk, [S.MASK_POSTPROCESS, S.CONSUMER_RLE])
        add("masks raw vs legacy", f"{size}>{scale}", "legacy", "raw", ["mask_postprocess"], t["legacy"], t["raw"])
        add("masks raw vs full", f"{size}>{scale}", "full", "raw", ["mask_postprocess"], t["full"], t["raw"])
        add("masks box vs full", f"{size}>{scale}", "full", "box", ["mask_postprocess"], t["full"], t["box"])
        add("masks raw+RLE vs full+RLE", f"{size}>{scale}", "full", "raw", ["mask_postprocess", "consumer.rle"],
            rle["full"], rle["raw"])
    # precision and RoIAlign: whole pipeline at the model scale
    samples = ms.prepare_inputs(images, scale)
    variants = {"fp32": C(), f"{low}+cl": C(precision=low, channels_last=True),
                f"{low}-weights+cl+foldbn": C(precision=f"{low}-weights", channels_last=True, fold_bn=True),
                f"{low}+cl torchvision RoIAlign": C(precision=low, channels_last=True, roi_align="torchvision"),
                f"{low}+cl threaded RoIAlign": C(precision=low, channels_last=True, roi_align="threaded")}
    df = prof.run(variants, samples)
    t = stage_ms(df, [S.BACKBONE, S.NECK])
    for v in list(variants)[1:3]:
        add("precision", f"{scale}>{scale}", "fp32", v, ["backbone", "neck"], t["fp32"], t[v])
    t = stage_ms(df, [S.ROI_BBOX, S.ROI_MASK])
    add("roi_align torchvision", f"{scale}>{scale}", f"{low}+cl", f"{low}+cl torchvision RoIAlign",
        ["roi_bbox", "roi_mask"], t[f"{low}+cl"], t[f"{low}+cl torchvision RoIAlign"])
    add("roi_align threaded", f"{scale}>{scale}", f"{low}+cl torchvision RoIAlign", f"{low}+cl threaded RoIAlign",
        ["roi_bbox", "roi_mask"], t[f"{low}+cl torchvision RoIAlign"], t[f"{low}+cl threaded RoIAlign"])
    # overlapped loading, the optimized model, small scale (where loading matters) and the model scale
    for s in ("320x192", scale):
        m = ms.build_detector("mask-rcnn_r50_fpn_1x_coco", device=str(dev),
                              workload=ms.Workload(scale=parse_size(s), dets_per_image=100))
        prof = ms.Profiler(m, device=str(dev), repeats=reps, warmup=1)
        choices = ms.Choices.auto().resolve(dev, m)  # what optimize() picks
        bound = overlap_bound(ms.stage_table(prof.run({"s": choices}, ms.prepare_inputs(images, scale))).iloc[0])
        stream = [x.data for x in ms.prepare_inputs(book.default_images(), scale)] * (2 if a.quick else 4)
        ips = prof.run_loading(choices, stream).groupby("variant")["images_per_s"].median()
        speed = ips["overlapped"] / ips["serial"]
        out.append({"optimization": "loading", "case": f"{scale}>{s}", "baseline": "serial", "variant": "overlapped",
                    "stages": "total", "baseline ms": 1e3 / ips["serial"], "variant ms": 1e3 / ips["overlapped"],
                    "ratio": speed, "target": f"bound {bound:.3f}x; reached {speed / bound:.0%} of it"})
    table = pd.DataFrame(out)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 60)
    print(table.round(3).to_string(index=False))
    if a.out:
        book.record_table(rec, "benchmark_ratios", table)


if __name__ == "__main__":
    main()
