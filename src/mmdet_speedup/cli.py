"""``python -m mmdet_speedup profile CONFIG ...``: a per-stage table like the seed's, one row per variant."""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from .records import REPO_ROOT

DEFAULT_IMAGE = REPO_ROOT / "data" / "images" / "coffee.jpg"


def _list(text: str | None, cast=str) -> list:
    if text is None:
        return [None]
    return [cast(v.strip()) for v in str(text).split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmdet_speedup", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("profile", help="time every stage of a two-stage detector, per variant")
    q.add_argument("config", help="config path or mmdet packaged config name, e.g. mask-rcnn_r50_fpn_1x_coco")
    q.add_argument("--checkpoint", help="real weights (default: conditioned random weights)")
    q.add_argument("--image", nargs="+", default=None, help=f"image paths (default: {DEFAULT_IMAGE.name})")
    q.add_argument("--input-size", default=None, help="resize the photo to WxH before the pipeline (comma list ok)")
    q.add_argument("--scale", default="1333x800", help="the model's test scale WxH (comma list ok)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--warmup", type=int, default=1)
    q.add_argument("--dets", default="100", help="detections per image (max_per_img; comma list ok)")
    q.add_argument("--rpn-pre-nms", default=None, help="RPN top-N before NMS (comma list ok)")
    q.add_argument("--preprocess", default="stock", help="legacy,stock,device,auto")
    q.add_argument("--precision", default="fp32", help="fp32,fp16,bf16,fp16-weights,bf16-weights")
    q.add_argument("--masks", default="full", help="full,legacy,box,raw")
    q.add_argument("--channels-last", action="store_true")
    q.add_argument("--fold-bn", action="store_true")
    q.add_argument("--roi-align", default="mmcv", help="mmcv,torchvision,threaded")
    q.add_argument("--compile", action="store_true", help="TorchInductor for backbone and neck (compiles on warm-up)")
    q.add_argument("--rle", action="store_true", help="also time a consumer that RLE-encodes every mask")
    q.add_argument("--out", default=None, help="append tidy rows to this CSV")
    return p


def profile(args) -> int:
    import pandas as pd

    from .models import Workload, build_detector, config_path, parse_size
    from .pipeline import Choices
    from .profiler import Profiler, prepare_inputs, stage_gap, stage_table
    from .records import Recorder

    config_path(args.config)  # fail early, one line
    images = args.image or [str(DEFAULT_IMAGE)]
    for im in images:
        if not Path(im).is_file():
            raise FileNotFoundError(f"image not found: {im}")
    choices = [Choices(pp, pr, args.channels_last, args.fold_bn, m, ra, args.compile)
               for pp, pr, m, ra in itertools.product(_list(args.preprocess), _list(args.precision), _list(args.masks),
                                                      _list(args.roi_align))]
    recorder = Recorder(args.out, notebook="cli", params=vars(args)) if args.out else None
    frames = []
    for scale, dets, pre in itertools.product(_list(args.scale, parse_size), _list(args.dets, int),
                                              _list(args.rpn_pre_nms, int)):
        model = build_detector(args.config, checkpoint=args.checkpoint, device=args.device,
                               workload=Workload(scale=scale, dets_per_image=dets, rpn_pre_nms=pre))
        for size in _list(args.input_size):
            samples = prepare_inputs(images, size)
            prof = Profiler(model, device=args.device, recorder=recorder, repeats=args.repeats, warmup=args.warmup,
                            threads=args.threads, consumer=args.rle, progress=True)
            multi = len(_list(args.scale)) * len(_list(args.dets)) * len(_list(args.rpn_pre_nms)) * len(_list(args.input_size)) > 1
            variants = {(f"{c.label()} @{samples[0].size[0]}x{samples[0].size[1]}>{scale[0]}x{scale[1]} dets={dets} pre={pre}"
                         if multi else c.label()): c for c in choices}
            frames.append(prof.run(variants, samples))
    df = pd.concat(frames, ignore_index=True)
    errors = df[df["status"] == "error"]
    ok = df[df["status"] == "ok"]
    if len(ok):
        pd.set_option("display.width", 250)
        print("\nmedian ms per stage (per image)")
        print(stage_table(ok).round(2).fillna("").to_string())
        print("\nstage sum vs total")
        print(stage_gap(ok).round(2).to_string())
        w = ok.groupby("variant")[["rpn_nms_in", "bbox_nms_in", "dets_out", "peak_mem_mb"]].max()
        print("\nworkload\n" + w.to_string())
    for _, r in errors.iterrows():
        print(f"error in variant {r['variant']}: {r['message']}", file=sys.stderr)
    if args.out:
        print(f"\nrows appended to {args.out} (run_id {recorder.run_id})")
    return 1 if len(ok) == 0 else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return profile(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line, not a traceback
        print(f"error: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
