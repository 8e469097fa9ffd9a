"""The stage profiler: a thin layer over the staged pipeline that times, repeats and records rows."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import cv2
import pandas as pd
import torch

from . import stages as S
from .choices import STOCK, Choices
from .models import fmt_size, parse_size
from .pipeline import Detections, ImageLike, MaskInputs, StagedPipeline, load_image
from .preprocess import resize_step
from .records import Recorder
from .timing import PeakMemory, StageTimer, Timers, resolve_device, summarize


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
    step = resize_step(cfg)
    return {"scale": fmt_size(tuple(step["scale"]) if step else None),
            "rpn_pre_nms": cfg.model.test_cfg.rpn.get("nms_pre"),
            "dets_per_image": cfg.model.test_cfg.rcnn.get("max_per_img"),
            "config": getattr(model, "mmdet_speedup_config", "")}


def _dtype_name(choices: Choices) -> str:
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}[choices.precision.split("-")[0]]


def rle_consumer(dets: Detections) -> list[dict]:
    """What a COCO-style consumer asks of every result: one RLE per instance."""
    return [] if dets.masks is None else dets.masks.to_rle()


@dataclass
class Stream:
    """A sequence of encoded images run as one pass (the loading comparison's unit of work)."""

    name: str
    sources: list
    size: tuple[int, int]


@dataclass(frozen=True)
class Repeats:
    """How many interleaved passes a sweep measures, chosen per sweep so a study fits its time.

    At least ``min`` passes and at most ``max``. Between them the sweep stops as soon as either every variant's
    95% interval for its ratio against ``base`` (default: the first variant) on ``stage`` is narrower than
    ``width`` (``hi / lo - 1``): more passes would not change what the chapter can say; or the next pass would
    take the measured passes past ``budget_s`` seconds. ``Repeats(7)`` is exactly seven passes.
    """

    min: int = 3
    max: int | None = None
    width: float = 0.10
    budget_s: float | None = None
    stage: str = S.TOTAL
    base: str | None = None

    def __post_init__(self) -> None:
        if self.max is None:
            object.__setattr__(self, "max", self.min)
        if not 1 <= self.min <= self.max:
            raise ValueError(f"repeats need 1 <= min <= max, got min={self.min}, max={self.max}")

    def stop(self, done: int, seconds: float, rows: list[dict]) -> str:
        """Why to stop after ``done`` measured passes taking ``seconds`` (``rows`` so far), or "" to go on."""
        if done >= self.max:
            return "max"
        if done < self.min:
            return ""
        if self.budget_s is not None and seconds * (done + 1) / done > self.budget_s:
            return "budget"
        return "narrow" if self.narrow(pd.DataFrame(rows)) else ""

    def narrow(self, rows: pd.DataFrame) -> bool:
        from .stats import ratio_table

        ok = rows[rows["status"] == "ok"] if len(rows) else rows
        if len(ok) == 0 or self.stage not in set(ok["stage"]):
            return False  # nothing to judge by: measure up to ``max``
        labels = list(dict.fromkeys(ok["variant"]))
        base = self.base or labels[0]
        if base not in labels:
            return False
        t = ratio_table(ok, base, stages=(self.stage,), n_boot=500).drop(base)
        return bool(((t["hi"] / t["lo"] - 1) <= self.width).all())

    @classmethod
    def for_scale(cls, scale: str | tuple[int, int], repeats: int, *, large_min: int = 3, width: float = 0.10,
                  budget_s: float | None = None) -> "Repeats":
        """The study's rule: exactly ``repeats`` passes up to 1333x800 pixels; above, at least ``large_min`` and
        at most ``repeats``, stopping early only where every interval is already narrower than ``width``."""
        from .models import above_study_scale

        large = above_study_scale(scale)
        return cls(min(large_min, repeats) if large else repeats, repeats, width, budget_s if large else None)


@dataclass(frozen=True)
class Built:
    """A sweep variant that is not the profiler's model under some choices, e.g. a deployed whole-model graph:
    ``make()`` returns what runs (called as ``run(image, timer) -> Detections`` by ``Profiler.run``), and
    ``choices`` is what its rows record (precision, masks ...)."""

    make: Callable[[], Any]
    choices: Choices = STOCK


def _choices(v: "Choices | Built") -> Choices:
    return v.choices if isinstance(v, Built) else v


Item = Union[Sample, Stream]
#: one measurement: (label, the label's pipeline, its choices, the item, the repeat) -> rows
Measure = Callable[[str, StagedPipeline, Choices, Item, int], list]


class Profiler:
    """Profiles choice sets (variants) on one stock model; every measurement becomes tidy rows.

    Every sweep (``run``, ``run_preprocess``, ``run_masks``, ``run_loading``) goes through one loop (``sweep``).
    ``clock`` is injectable (tests check the stage accounting without wall time).
    """

    def __init__(self, model, *, device: str = "auto", recorder: Recorder | None = None, repeats: int | Repeats = 3,
                 warmup: int = 1, threads: int | None = None, clock: Callable[[], float] = time.perf_counter,
                 consumer: bool = False, progress: bool = False, min_free_mb: float | None = None) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.recorder = recorder
        self.repeats = repeats if isinstance(repeats, Repeats) else Repeats(int(repeats))
        self.warmup = int(warmup)
        self.last_repeats: dict | None = None
        self.built: dict[str, Any] = {}
        self.threads = threads
        self.clock = clock
        self.consumer = consumer
        self.progress = progress
        self.min_free_mb = min_free_mb

    def pipeline(self, choices: Choices) -> StagedPipeline:
        return StagedPipeline(self.model, choices, self.device)

    def sweep(self, variants: Mapping[str, Choices | Built], items: Sequence[Item], measure: Measure,
              extra: Mapping | None = None, build: Callable[[Choices], StagedPipeline] | None = None) -> pd.DataFrame:
        """Build each variant's pipeline, then ``warmup`` passes (dropped) and the measured passes, interleaved.

        How many measured passes is the profiler's ``Repeats`` policy: an int is exactly that many; a policy may
        stop between its ``min`` and ``max`` (its reason lands in ``df.attrs["repeats"]`` and ``last_repeats``).

        A variant is choices for a ``StagedPipeline`` on the profiler's model (made by ``build``), or a ``Built``:
        something else that runs the same items (a deployed whole-model graph), measured in the same loop.

        Each pass runs every variant once, in turn, on every item: on a shared or throttling machine, drift then
        lands on all variants alike instead of on whichever ran last, so ratios from one run stay fair. A variant
        that fails (building or running) becomes an error row and leaves the sweep; the others go on. With
        ``min_free_mb``, a variant whose first pass (where runtimes convert and allocate) would start with less
        memory available than that becomes an error row instead of running: an out-of-memory kill would lose the
        whole sweep.
        """
        if self.threads:
            torch.set_num_threads(int(self.threads))
        # rows of one interleaved sweep pair by repeat; rows of different sweeps are compared unpaired
        extra = {"sweep_id": uuid.uuid4().hex[:8], **(extra or {})}
        build = build or self.pipeline
        out: list[dict] = []
        pipes: dict[str, StagedPipeline] = {}
        resolved: dict[str, Choices] = {}  # what each row records: the variant's choices, as run
        for label, v in variants.items():
            try:
                if isinstance(v, Built):
                    pipes[label], resolved[label] = v.make(), v.choices
                else:
                    pipes[label], resolved[label] = build(v), v.resolve(self.device, self.model)
            except Exception as e:
                pipes.pop(label, None)
                out.append(self._error(label, _choices(v), None, extra, e))
        for label in list(pipes):  # per-shape picks (auto pre-processing) before any pass, warm-up included
            try:
                getattr(pipes[label], "prime", lambda _: None)([it.data for it in items if hasattr(it, "data")])
            except Exception as e:
                del pipes[label]
                out.append(self._error(label, _choices(variants[label]), None, extra, e))
        policy = self.repeats
        start, passes, reason = self.clock(), 0, "max"
        for rep in range(-self.warmup, policy.max):
            if rep >= 0 and passes > 0:
                reason = policy.stop(passes, self.clock() - start, out)
                if reason:
                    break
            if rep == 0:
                start = self.clock()  # the budget counts measured passes; warm-up (compilation) is outside it
            for label in self._progress(list(pipes), rep):
                if label not in pipes:
                    continue
                item = None
                try:
                    if rep == -self.warmup:
                        self._check_memory()
                    for item in items:
                        rows = [dict(self.base_row(label, resolved[label], item, extra), repeat=rep, status="ok", **r)
                                for r in measure(label, pipes[label], resolved[label], item, rep)]
                        if rep >= 0:
                            self._emit(rows)
                            out += rows
                except Exception as e:
                    del pipes[label]
                    out.append(self._error(label, _choices(variants[label]), item, extra, e))
            passes += rep >= 0
        df = pd.DataFrame(out)
        df.attrs["repeats"] = {"n": passes, "min": policy.min, "max": policy.max, "stopped": reason or "max",
                               "seconds": round(self.clock() - start, 3)}
        self.last_repeats = df.attrs["repeats"]
        self.built = pipes  # what ran, by label (e.g. to read a runtime's conversion costs)
        return df

    def _check_memory(self) -> None:
        if self.min_free_mb is None:
            return
        import psutil

        free = psutil.virtual_memory().available / 2**20
        if free < self.min_free_mb:
            raise MemoryError(f"not run: {free:.0f} MB available before its first pass, under the "
                              f"{self.min_free_mb:.0f} MB this sweep asks for")

    def _progress(self, labels: list[str], rep: int):
        if not self.progress:
            return labels
        from tqdm.auto import tqdm
        return tqdm(labels, desc=f"pass {rep}", leave=False)

    def run(self, variants: Mapping[str, Choices | Built] | Iterable[Choices], samples: Sequence[Sample],
            extra: Mapping | None = None) -> pd.DataFrame:
        """The whole pipeline, per stage, for every variant on every sample."""
        if not isinstance(variants, Mapping):
            variants = {c.resolve(self.device, self.model).label(): c for c in variants}

        def measure(label, pipe, choices, sample, rep) -> list[dict]:
            timer = StageTimer(self.device, clock=self.clock)
            with PeakMemory(self.device) as mem:
                with timer.stage(S.TOTAL):
                    dets = pipe(sample.data, timer)
                if self.consumer and dets.masks is not None:
                    with timer.stage(S.CONSUMER_RLE):
                        rle_consumer(dets)
            base = dict(rpn_nms_in=dets.counts.get("rpn_nms_in"), bbox_nms_in=dets.counts.get("bbox_nms_in"),
                        dets_out=dets.counts.get("dets_out"), peak_mem_mb=mem.peak_mb,
                        chosen=getattr(pipe, "last_preprocess", None),
                        mask_bytes=0 if dets.masks is None else dets.masks.nbytes())
            return [dict(base, stage=k, ms=v) for k, v in timer.ms().items()]

        return self.sweep(variants, samples, measure, extra)

    def run_preprocess(self, variants: Mapping[str, Choices], samples: Sequence[Sample],
                       extra: Mapping | None = None) -> pd.DataFrame:
        """Only ``load`` and the pre-processing stages: wall and process-CPU ms per stage, and bytes copied."""

        def measure(label, pipe, choices, sample, rep) -> list[dict]:
            wall = StageTimer(self.device, clock=self.clock)
            cpu = StageTimer(self.device, clock=time.process_time, record_function=False)
            both = Timers(wall, cpu)
            with both.stage(S.TOTAL):
                hb = pipe.preprocess(pipe.load(sample.data, both), both)
                pipe.to_device(hb, both)
            base = dict(bytes_copied=hb.bytes_copied, chosen=hb.variant or pipe.choices.preprocess)
            return [dict(base, stage=k, ms=v, cpu_ms=cpu.times[k]) for k, v in wall.ms().items()]

        return self.sweep(variants, samples, measure, extra)

    def run_masks(self, variants: Mapping[str, str], samples: Sequence[Sample], choices: Choices = STOCK,
                  extra: Mapping | None = None) -> pd.DataFrame:
        """Only ``mask_postprocess`` (and the RLE consumer), per mask variant, on the same mask inputs.

        The stages before it run once per sample (untimed); every variant post-processes a copy of their output.
        """
        pipe = self.pipeline(choices)
        inputs: dict[int, MaskInputs] = {}

        def measure(label, pipe, choices, sample, rep) -> list[dict]:
            if id(sample) not in inputs:
                inputs[id(sample)] = pipe.mask_inputs(sample.data)
            m = inputs[id(sample)].copy()
            timer = StageTimer(self.device, clock=self.clock)
            results, masks = pipe.postprocess_masks(m, timer, variant=choices.masks)
            with timer.stage(S.CONSUMER_RLE):
                masks.to_rle()
            base = dict(dets_out=len(results), mask_bytes=masks.nbytes())
            return [dict(base, stage=k, ms=v) for k, v in timer.ms().items()]

        masked = {label: pipe.choices.replace(masks=v) for label, v in variants.items()}
        return self.sweep(masked, samples, measure, extra, build=lambda _: pipe)

    def run_loading(self, choices: Choices, sources: Sequence[ImageLike], *, depth: int = 4, workers: int = 1,
                    extra: Mapping | None = None) -> pd.DataFrame:
        """Images per second of serial passes over ``sources`` against overlapped ones (``loader.LOADING``)."""
        from .loader import LOADING, throughput

        pipe = self.pipeline(choices)
        runs = {label: Built(lambda fn=fn: partial(fn, pipe, depth=depth, workers=workers), pipe.choices)
                for label, fn in LOADING.items()}
        return self.run_stream(runs, sources, lambda run, images: throughput(lambda: run(images), len(images),
                                                                             pipe.device), extra)

    def run_stream(self, variants: Mapping[str, Choices | Built], sources: Sequence[ImageLike],
                   images_per_s: Callable[[Any, list], float], extra: Mapping | None = None) -> pd.DataFrame:
        """Images per second of each variant over the whole ``sources`` list (``images_per_s(run, sources)``), one
        pass per repeat, interleaved; ``ms`` is per image (1000 / images per second)."""
        first = load_image(sources[0])
        stream = Stream(f"stream of {len(sources)}", list(sources), (first.shape[1], first.shape[0]))

        def measure(label, pipe, choices, stream, rep) -> list[dict]:
            ips = images_per_s(pipe, stream.sources)
            return [{"stage": S.TOTAL, "ms": 1e3 / ips, "images_per_s": ips}]

        return self.sweep(variants, [stream], measure, extra)

    def base_row(self, label: str, choices: Choices, item: Item | None, extra: Mapping | None) -> dict:
        return {**workload_of(self.model), "variant": label, "preprocess": choices.preprocess,
                "precision": choices.precision, "channels_last": choices.channels_last, "masks": choices.masks,
                "fold_bn": choices.fold_bn, "roi_align": choices.roi_align, "compile": choices.compile,
                "runtime": getattr(choices, "runtime", "torch"),
                "device": str(self.device), "dtype": _dtype_name(choices) if choices.precision != "auto" else "",
                "threads": torch.get_num_threads(), "input_size": fmt_size(item.size) if item else "",
                "image": item.name if item else "", **(extra or {})}

    def _error(self, label, choices, item, extra, e: Exception) -> dict:
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:500]
        row = dict(self.base_row(label, choices, item, extra), stage=S.TOTAL, repeat=-1, ms=float("nan"),
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


