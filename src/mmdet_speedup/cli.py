"""``python -m mmdet_speedup profile CONFIG ...``: a per-stage table like the seed's, one row per variant."""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Callable

from . import checks
from .project import sample_image


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        if message.endswith("expected one argument"):  # e.g. --scale -5x3: argparse takes "-5x3" for an option
            message += " (a value that starts with '-' is written --option=VALUE)"
        self.exit(2, f"error: {message}\n")


def _list(text: str | None, cast=str) -> list:
    if text is None:
        return [None]
    return [cast(v.strip()) for v in str(text).split(",") if v.strip()]


def _typed(cast: Callable, name: str) -> Callable:
    """An argparse type for a comma list, each item checked by ``cast``; argparse prints the one-line error."""
    def parse(text: str) -> str:
        try:
            if not _list(text, cast):
                raise checks.InputError(f"{name} is empty")
        except checks.InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    parse.__name__ = name
    return parse


def _options(options: tuple[str, ...], name: str) -> Callable:
    return _typed(lambda v: checks.choice(v, options, name), name)


def _count(name: str, minimum: int = 1) -> Callable:
    def parse(text: str) -> int:
        try:
            return checks.count(text, name, minimum)
        except checks.InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _flag(name: str) -> Callable:
    values = {"on": True, "off": False, "auto": "auto"}

    def parse(text: str):
        if text not in values:
            raise argparse.ArgumentTypeError(f"{name} must be on, off or auto, got {text!r}")
        return values[text]
    return parse


def parser() -> argparse.ArgumentParser:
    from .choices import AUTO, FLAGS, STOCK, VARIANTS
    from .models import WEIGHTS

    p = _Parser(prog="python -m mmdet_speedup", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("profile", help="time every stage of a two-stage detector, per variant")
    q.add_argument("config", help="config path or mmdet packaged config name, e.g. mask-rcnn_r50_fpn_1x_coco")
    q.add_argument("--checkpoint", help="an mmdet checkpoint (default: --weights)")
    q.add_argument("--weights", default="auto", choices=WEIGHTS,
                   help="without a checkpoint: the repository's trained weights, conditioned random ones, or auto "
                        "(trained where they fit the config)")
    q.add_argument("--image", nargs="+", default=None,
                   help=f"image paths (default: {sample_image().name}, shipped with the package)")
    q.add_argument("--input-size", default=None, type=_typed(checks.size, "input size"),
                   help="resize the photo to WxH before the pipeline (comma list ok)")
    q.add_argument("--scale", default="1333x800", type=_typed(checks.size, "scale"),
                   help="the model's test scale WxH (comma list ok)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q.add_argument("--threads", type=_count("threads"), default=None)
    q.add_argument("--repeats", type=_count("repeats"), default=3)
    q.add_argument("--warmup", type=_count("warmup", 0), default=1)
    q.add_argument("--dets", default="100", type=_typed(lambda v: checks.count(v, "dets"), "dets"),
                   help="detections per image (max_per_img; comma list ok)")
    q.add_argument("--rpn-pre-nms", default=None, type=_typed(lambda v: checks.count(v, "rpn-pre-nms"), "rpn-pre-nms"),
                   help="RPN top-N before NMS (comma list ok)")
    for name, variants in VARIANTS.items():
        options = variants + (AUTO,) * (AUTO not in variants)
        q.add_argument(f"--{name.replace('_', '-')}", default=getattr(STOCK, name), type=_options(options, name),
                       help=f"{','.join(options)} (comma list ok; default {getattr(STOCK, name)})")
    for name in FLAGS:
        q.add_argument(f"--{name.replace('_', '-')}", nargs="?", const=True, default=getattr(STOCK, name),
                       type=_flag(name), help=f"on, off or auto (bare flag: on; default {'on' if getattr(STOCK, name) else 'off'})"
                       + ("; TorchInductor for backbone and neck, compiled on warm-up" if name == "compile" else ""))
    q.add_argument("--rle", action="store_true", help="also time a consumer that RLE-encodes every mask")
    q.add_argument("--out", default=None, help="append tidy rows to this CSV")
    q.add_argument("--traceback", action="store_true", help="show the full traceback of an unexpected error")
    from .synth import SPLITS
    from .train import Recipe
    d = sub.add_parser("data", help="generate the labelled shapes data set (cached, never committed)")
    d.add_argument("splits", nargs="*", default=list(SPLITS), help=f"{', '.join(SPLITS)} (default: all)")
    t = sub.add_parser("train", help="train the study's Mask R-CNN on the shapes (resumes from its last save)")
    t.add_argument("--iters", type=_count("iters"), default=Recipe().iters, help="the schedule's length")
    t.add_argument("--until", type=_count("until"), default=None, help="stop after this iteration (resume later)")
    t.add_argument("--work-dir", default=None, help="training state folder (default: outside the repository)")
    t.add_argument("--init", default=None, help="start from this weights file (a later stage: fresh optimizer)")
    e = sub.add_parser("export", help="write the trained weights (BatchNorm re-estimated) as safetensors")
    e.add_argument("--work-dir", default=None)
    e.add_argument("--out", default=None, help="weights file (default: the repository's data/weights/ file)")
    for x in (d, t, e):
        x.add_argument("--traceback", action="store_true", help="show the full traceback of an unexpected error")
    return p


def data(args) -> int:
    from . import synth

    for name in args.splits:
        synth.split(name)
    for name in args.splits:
        print(f"{name}: {synth.generate(name)}")
    return 0


def train(args) -> int:
    from dataclasses import replace

    from .train import Recipe, train as run

    work = run(replace(Recipe(), iters=args.iters, init=args.init), work_dir=args.work_dir, until=args.until)
    print(f"training state in {work}")
    return 0


def export(args) -> int:
    from .train import export as run

    rec = run(work_dir=args.work_dir, out=args.out)
    print(f"wrote {rec['path']} (sha256 {rec['sha256'][:16]}..., {rec['bytes'] / 2**20:.1f} MiB)")
    return 0


def check(args) -> list[str]:
    """Everything the user gave that can be checked before any work; returns the images."""
    from . import runtimes
    from .choices import AUTO
    from .models import load_config
    from .pipeline import load_image
    from .choices import check_precision
    from .timing import resolve_device

    load_config(args.config)  # an unknown config or a detector the pipeline cannot split: one line
    if args.checkpoint is not None:
        checks.checkpoint_file(args.checkpoint)
    else:
        from . import weights
        from .models import check_weights, config_path

        if check_weights(args.config, args.weights):
            weights.load_state(config=config_path(args.config).stem)  # missing or corrupt: one line, before work
    try:
        dev = resolve_device(args.device)
    except ValueError as e:
        raise checks.InputError(str(e)) from None
    for p in _list(args.precision):
        if p != AUTO:
            check_precision(p, dev)  # e.g. fp16 without CUDA, before any model is built
    for r in _list(args.runtime):
        if r not in (AUTO, runtimes.TORCH):
            runtimes.compatible(r, dev)  # e.g. openvino on CUDA, or not installed, before any model is built
            runtimes.load(r)
    if args.out and Path(args.out).is_dir():
        raise checks.InputError(f"--out {args.out} is a directory; give a CSV file path")
    images = args.image or [str(sample_image())]
    for im in images:
        load_image(checks.image_file(im))
    return images


def profile(args, state: dict) -> int:
    import pandas as pd

    from .models import Workload, build_detector, parse_size
    from .choices import Choices
    from .profiler import Profiler, prepare_inputs, stage_gap, stage_table
    from .records import Recorder

    images = check(args)
    choices = [Choices(pp, pr, args.channels_last, args.fold_bn, m, ra, args.compile, rt)
               for pp, pr, m, ra, rt in itertools.product(_list(args.preprocess), _list(args.precision),
                                                          _list(args.masks), _list(args.roi_align),
                                                          _list(args.runtime))]
    recorder = Recorder(args.out, notebook="cli", params=vars(args)) if args.out else None
    state["recorder"] = recorder
    frames = []
    for scale, dets, pre in itertools.product(_list(args.scale, parse_size), _list(args.dets, int),
                                              _list(args.rpn_pre_nms, int)):
        model = build_detector(args.config, checkpoint=args.checkpoint, weights=args.weights, device=args.device,
                               workload=Workload(scale=scale, dets_per_image=dets, rpn_pre_nms=pre))
        for size in _list(args.input_size):
            samples = prepare_inputs(images, size)
            prof = Profiler(model, device=args.device, recorder=recorder, repeats=args.repeats, warmup=args.warmup,
                            threads=args.threads, consumer=args.rle, progress=True)
            multi = len(_list(args.scale)) * len(_list(args.dets)) * len(_list(args.rpn_pre_nms)) * len(_list(args.input_size)) > 1
            variants = {(f"{c.resolve(prof.device, model).label()} @{samples[0].size[0]}x{samples[0].size[1]}>{scale[0]}x{scale[1]} dets={dets} pre={pre}"
                         if multi else c.resolve(prof.device, model).label()): c for c in choices}
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


def interrupted(recorder) -> str:
    if recorder is None:
        return "interrupted: no rows kept (no --out given)"
    return (f"interrupted: {recorder.rows_written} rows written to {recorder.path} under run id "
            f"{recorder.run_id}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    state: dict = {}
    try:
        if args.command != "profile":
            return {"data": data, "train": train, "export": export}[args.command](args)
        return profile(args, state)
    except KeyboardInterrupt:
        print(interrupted(state.get("recorder")), file=sys.stderr)
        return 130
    except checks.InputError as e:  # the user's input: one line that says what is wrong
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    except Exception as e:  # ours or mmdet's: no internal text unless asked for
        if args.traceback:
            raise
        print(f"error: unexpected {type(e).__name__} (not a problem with your input); re-run with --traceback "
              "to see where", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
