"""The stage profiler: a thin layer over the staged pipeline that times, repeats and records rows."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import cv2
import pandas as pd
import torch

from . import stages as S
from .masks import masks_nbytes, rle_encode
from .models import clone, fmt_size, parse_size
from .pipeline import STOCK, Choices, Detections, ImageLike, StagedPipeline, clone_instances, load_image
from .records import Recorder
from .timing import PeakMemory, StageTimer, resolve_device, summarize


@dataclass
class Sample:
    """One input as the pipeline's ``load`` stage sees it: encoded bytes at the requested input size."""

    name: str
    data: bytes
    size: tuple[int, int]  # (W, H)


def prepare_inputs(images: Sequence[ImageLike], input_size: str | tuple[int, int] | None = None,
                   quality: int = 95) -> list[Sample]:
    """Decode each photo, resize it to ``input_size`` (WxH) and re-encode it as JPEG, outside any timing.

    So a 3840x2304 input exists although the sample photos are small, and ``load`` still decodes a real file.
    """
    size = parse_size(input_size)
    out = []
    for src in images:
        name = Path(src).name if isinstance(src, (str, Path)) else "array"
        img = load_image(src)
        if size is not None and (img.shape[1], img.shape[0]) != size:
            interp = cv2.INTER_AREA if size[0] < img.shape[1] else cv2.INTER_CUBIC
            img = cv2.resize(img, size, interpolation=interp)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"could not encode {name}")
        out.append(Sample(name, buf.tobytes(), (img.shape[1], img.shape[0])))
    return out


def workload_of(model) -> dict:
    cfg = model.cfg
    scale = None
    for t in cfg.test_dataloader.dataset.pipeline:
        if t["type"].endswith("Resize"):
            scale = tuple(t["scale"])
    return {"scale": fmt_size(scale), "rpn_pre_nms": cfg.model.test_cfg.rpn.get("nms_pre"),
            "dets_per_image": cfg.model.test_cfg.rcnn.get("max_per_img"),
            "config": getattr(model, "mmdet_speedup_config", "")}


def _dtype_name(choices: Choices) -> str:
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[choices.precision.split("-")[0]]


def rle_consumer(dets) -> list[dict]:
    """What a COCO-style consumer asks of every result: one RLE per instance."""
    if dets.masks is None:
        return []
    if hasattr(dets.masks, "to_rle"):
        return dets.masks.to_rle()
    return [rle_encode(m.numpy()) for m in dets.masks]


class Profiler:
    """Profiles choice sets (variants) on one stock model; every measurement becomes tidy rows.

    ``clock`` is injectable (tests check the stage accounting without wall time).
    """

    def __init__(self, model, *, device: str = "auto", recorder: Recorder | None = None, repeats: int = 3,
                 warmup: int = 1, threads: int | None = None, clock: Callable[[], float] = time.perf_counter,
                 consumer: bool = False, progress: bool = False) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.recorder = recorder
        self.repeats, self.warmup = int(repeats), int(warmup)
        self.threads = threads
        self.clock = clock
        self.consumer = consumer
        self.progress = progress

    def pipeline(self, choices: Choices) -> StagedPipeline:
        model = clone(self.model) if choices.changes_model() else self.model
        return StagedPipeline(model, choices, self.device)

    def run(self, variants: Mapping[str, Choices] | Iterable[Choices], samples: Sequence[Sample],
            extra: Mapping | None = None) -> pd.DataFrame:
        """Profile every variant on every sample, ``repeats`` times, interleaved.

        Each repeat runs every variant once, in turn: on a shared or throttling machine, drift then
        lands on all variants alike instead of on whichever ran last, so ratios from one run stay fair.
        """
        if not isinstance(variants, Mapping):
            variants = {c.label(): c for c in variants}
        if self.threads:
            torch.set_num_threads(int(self.threads))
        out: list[dict] = []
        pipes: dict[str, StagedPipeline] = {}
        for label, choices in variants.items():
            try:
                pipes[label] = self.pipeline(choices)
                for sample in samples:
                    for _ in range(self.warmup):
                        pipes[label](sample.data)
            except Exception as e:  # a failed variant becomes an error row; the sweep goes on
                pipes.pop(label, None)
                out.append(self._error(label, choices, None, extra, e))
        steps = [(rep, label) for rep in range(self.repeats) for label in list(pipes)]
        if self.progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc="runs")
        for rep, label in steps:
            if label not in pipes:
                continue
            choices, sample = variants[label], None
            try:
                for sample in samples:
                    with PeakMemory(self.device) as mem:
                        rows = self._one(pipes[label], label, choices, sample, rep, extra)
                    rows = [dict(r, peak_mem_mb=mem.peak_mb) for r in rows]
                    self._emit(rows)
                    out += rows
            except Exception as e:
                del pipes[label]
                out.append(self._error(label, choices, sample, extra, e))
        return pd.DataFrame(out)

    def base_row(self, label: str, choices: Choices, sample: Sample | None, extra: Mapping | None) -> dict:
        return {**workload_of(self.model), "variant": label, "preprocess": choices.preprocess,
                "precision": choices.precision, "channels_last": choices.channels_last, "masks": choices.masks,
                "fold_bn": choices.fold_bn, "roi_align": choices.roi_align, "compile": choices.compile, "device": str(self.device),
                "dtype": _dtype_name(choices), "threads": torch.get_num_threads(),
                "input_size": fmt_size(sample.size) if sample else "", "image": sample.name if sample else "",
                **(extra or {})}

    def _one(self, pipe, label, choices, sample, rep, extra) -> list[dict]:
        timer = StageTimer(self.device, clock=self.clock)
        with timer.stage(S.TOTAL):
            dets = pipe(sample.data, timer)
        if self.consumer and dets.masks is not None:
            with timer.stage(S.CONSUMER_RLE):
                rle_consumer(dets)
        base = dict(self.base_row(label, choices, sample, extra), repeat=rep, status="ok",
                    rpn_nms_in=dets.counts.get("rpn_nms_in"), bbox_nms_in=dets.counts.get("bbox_nms_in"),
                    dets_out=dets.counts.get("dets_out"), mask_bytes=masks_nbytes(dets.masks))
        return [dict(base, stage=k, ms=v) for k, v in timer.ms().items()]

    def _interleaved(self, labels: Sequence[str], samples: Sequence[Sample], one: Callable, on_error: Callable) -> list:
        """Warm-up passes (dropped), then ``repeats`` passes that each run every label once, in turn."""
        out: list[dict] = []
        failed: set[str] = set()
        for rep in range(-self.warmup, self.repeats):
            for sample in samples:
                for label in labels:
                    if label in failed:
                        continue
                    try:
                        rows = one(label, sample, rep)
                    except Exception as e:  # an error row; the other labels go on
                        failed.add(label)
                        out.append(on_error(label, sample, e))
                        continue
                    if rep >= 0:
                        self._emit(rows)
                        out += rows
        return out

    def run_preprocess(self, variants: Mapping[str, Choices], samples: Sequence[Sample],
                       extra: Mapping | None = None) -> pd.DataFrame:
        """Only the host side and the device step: wall and process-CPU ms per stage, and bytes copied."""
        from .preprocess import make_preprocessor

        pres = {label: make_preprocessor(c.preprocess, self.model, self.device) for label, c in variants.items()}

        def one(label, sample, rep):
            pre = pres[label]
            wall = StageTimer(self.device, clock=self.clock)
            cpu = StageTimer(self.device, clock=time.process_time, record_function=False)
            with wall.stage(S.TOTAL), cpu.stage(S.TOTAL):
                with wall.stage(S.LOAD), cpu.stage(S.LOAD):
                    img = load_image(sample.data)
                with wall.stage(S.PREPROCESS), cpu.stage(S.PREPROCESS):
                    hb = pre.host(img)
                with wall.stage(S.DATA_PREPROCESSOR), cpu.stage(S.DATA_PREPROCESSOR):
                    pre.to_device(hb)
            base = dict(self.base_row(label, variants[label], sample, extra), repeat=rep, status="ok",
                        bytes_copied=hb.bytes_copied, chosen=hb.variant or variants[label].preprocess)
            return [dict(base, stage=k, ms=v, cpu_ms=cpu.times[k]) for k, v in wall.ms().items()]

        return pd.DataFrame(self._interleaved(list(variants), samples, one,
                                              lambda label, sample, e: self._error(label, variants[label], sample, extra, e)))

    def run_masks(self, variants: Mapping[str, str], samples: Sequence[Sample], choices: Choices = STOCK,
                  extra: Mapping | None = None) -> pd.DataFrame:
        """Only ``mask_postprocess`` (and the RLE consumer), per mask variant, on the same captured inputs."""
        from .masks import postprocess

        pipe = self.pipeline(choices)
        captured = {id(sample): pipe.mask_inputs(sample.data) for sample in samples}

        def one(label, sample, rep):
            mask_preds, results, meta = captured[id(sample)]
            timer = StageTimer(self.device, clock=self.clock)
            res = clone_instances(results)
            with timer.stage(S.MASK_POSTPROCESS):
                res, masks = postprocess(variants[label], pipe.model.roi_head, mask_preds, res, meta)
            dets = Detections(res.bboxes, res.scores, res.labels, masks, meta["ori_shape"][:2])
            with timer.stage(S.CONSUMER_RLE):
                rle_consumer(dets)
            base = dict(self.base_row(label, choices.replace(masks=variants[label]), sample, extra), repeat=rep,
                        status="ok", dets_out=len(res), mask_bytes=masks_nbytes(masks))
            return [dict(base, stage=k, ms=v) for k, v in timer.ms().items()]

        return pd.DataFrame(self._interleaved(
            list(variants), samples, one,
            lambda label, sample, e: self._error(label, choices.replace(masks=variants[label]), sample, extra, e)))

    def _error(self, label, choices, sample, extra, e: Exception) -> dict:
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:500]
        row = dict(self.base_row(label, choices, sample, extra), stage=S.TOTAL, repeat=-1, ms=float("nan"),
                   status="error", message=msg)
        self._emit([row])
        return row

    def _emit(self, rows: list[dict]) -> None:
        if self.recorder is not None:
            self.recorder.write(rows)


# -- summaries -------------------------------------------------------------------------------------------
def stage_table(df: pd.DataFrame, stat: str = "median") -> pd.DataFrame:
    """Seed-style table: one row per variant, median ms per stage (columns in pipeline order)."""
    ok = df[df["status"] == "ok"]
    per = ok.groupby(["variant", "stage", "repeat"], sort=False)["ms"].sum().reset_index()  # sum over images
    n_img = ok.groupby(["variant", "repeat"])["image"].nunique().groupby("variant").max()
    agg = per.groupby(["variant", "stage"], sort=False)["ms"].agg(stat).unstack("stage")
    agg = agg.div(n_img.reindex(agg.index), axis=0)  # per image
    cols = [c for c in S.ALL if c in agg.columns]
    return agg[cols]


def stage_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Median, p10, p90 and n per variant and stage (over repeats and images)."""
    ok = df[df["status"] == "ok"]
    rows = []
    for (v, st), g in ok.groupby(["variant", "stage"], sort=False):
        s = summarize(g["ms"].to_numpy())
        rows.append({"variant": v, "stage": st, "median": s.median, "p10": s.p10, "p90": s.p90, "n": s.n})
    return pd.DataFrame(rows)


def stage_gap(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant: sum of top-level stage medians against the independently timed total."""
    t = stage_table(df)
    parts = [c for c in S.STAGES if c in t.columns]
    out = pd.DataFrame({"sum_of_stages": t[parts].sum(axis=1), "total": t[S.TOTAL]})
    out["gap_pct"] = 100 * (out["total"] - out["sum_of_stages"]) / out["total"]
    return out
