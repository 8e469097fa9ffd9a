"""Roofline bounds per stage: FLOPs counted for this model and input, over peaks measured on this machine.

A stage's measured time says how fast it is, not how fast it could be. Dividing the FLOPs it must do by the
machine's matrix peak for the dtype gives a floor it cannot beat (the compute roof); dividing the bytes it
must move by the measured memory bandwidth gives the floor for memory-bound stages (the memory roof).
"% of peak" is how close a stage gets. Both roofs are *measured here* through torch (a matmul per dtype, a
tensor copy), not taken from a datasheet, so they are the peaks the study's own kernels can reach.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from . import stages as S
from .checks import InputError
from .timing import benchmark, resolve_device, summarize

#: The stages ``stage_flops`` counts by default: the convolutional stages whose work does not depend on the data.
COUNTED: tuple[str, ...] = (S.BACKBONE, S.NECK, S.RPN)
#: What the counter does not see: it counts matrix products and convolutions (2 FLOPs per multiply-add) only.
NOT_COUNTED = ("RPN NMS and box decoding (elementwise, data-dependent), BatchNorm, activations, biases, "
               "upsampling and additions in the FPN, RoIAlign (an mmcv/torchvision kernel)")
#: dtype names the study uses (precision.PRECISIONS) mapped to the names peaks are keyed by.
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8", "bf16-weights": "bfloat16",
           "fp16-weights": "float16"}


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` as ``stage_flops`` counts them: 2 per multiply-add of mm/conv, biases not."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


class _FlopTimer:
    """A stand-in for the pipeline's timer: each top-level stage it opens runs under its own FLOP counter.

    Passing it as ``timer`` counts exactly the ops the pipeline runs inside its own stage ranges, so the
    split between stages is the pipeline's, not a re-statement of it. Nested ranges (``rpn.nms``) count in
    their parent only.
    """

    device = torch.device("cpu")

    def __init__(self, wanted: Sequence[str]) -> None:
        self.wanted = set(wanted)
        self.flops: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.wanted:
            yield
            return
        with FlopCounterMode(display=False) as fc:
            yield
        self.flops[name] = self.flops.get(name, 0.0) + float(fc.get_total_flops())


@torch.no_grad()
def stage_flops(pipeline, image, stages: Sequence[str] = COUNTED) -> dict[str, float]:
    """FLOPs per stage for this model and this input (``torch.utils.flop_counter``, 2 per multiply-add).

    Runs the pipeline's own stage methods (``prepare``, ``features``, ``proposals``, and ``boxes`` /
    ``mask_logits`` only when ``roi_bbox`` / ``roi_mask`` are asked for) with a timer that counts instead
    of timing. ``backbone``, ``neck`` and ``rpn`` depend on the padded input size only; the RoI heads' FLOPs
    depend on how many proposals and detections this image gives. FLOPs do not depend on dtype, layout or
    BatchNorm folding (BN is not counted), so any eager pipeline gives the fp32 count. Not counted:
    ``NOT_COUNTED``. A compiled pipeline is refused: inductor's kernels bypass the counter.
    """
    if getattr(pipeline.choices, "compile", False):
        raise InputError("stage_flops needs an eager pipeline: compiled kernels are invisible to the FLOP counter")
    unknown = set(stages) - set(S.STAGES)
    if unknown:
        raise InputError(f"stage_flops counts top-level stages {S.STAGES}, not {sorted(unknown)}")
    counter = _FlopTimer(stages)
    inputs, samples = pipeline.prepare(image)
    metas = [s.metainfo for s in samples]
    feats = pipeline.features(inputs, counter)
    proposals = pipeline.proposals(feats, metas, counter)
    if S.ROI_BBOX in counter.wanted or S.ROI_MASK in counter.wanted:
        results = pipeline.boxes(feats, metas, proposals, counter)
        if S.ROI_MASK in counter.wanted and pipeline.with_mask:
            pipeline.mask_logits(feats, results, metas[0], counter)
    return {s: counter.flops.get(s, 0.0) for s in stages}


# -- peaks ----------------------------------------------------------------------------------------------------
def _matmul(dtype: str, n: int, dev: torch.device):
    """The product to time for ``dtype``, or a reason it is skipped on this device: an emulated product is no
    peak (a 2048x2048 bf16 product without the instructions takes about a minute on two cores)."""
    from .environment import cpu_has_bf16, cpu_has_int8

    if dev.type == "cpu" and dtype == "bfloat16" and not cpu_has_bf16():
        return "no bf16 matrix instructions on this CPU (AVX-512 BF16 or AMX)"
    if dev.type == "cpu" and dtype == "int8" and not cpu_has_int8():
        return "no int8 dot-product instructions on this CPU (VNNI or AMX-INT8)"
    if dtype == "int8":
        if not hasattr(torch, "_int_mm"):
            return "torch._int_mm is not in this torch"
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=dev)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=dev)
        try:
            torch._int_mm(a, b)
        except RuntimeError as e:
            return f"torch._int_mm fails here: {str(e).splitlines()[0]}"
        return lambda: torch._int_mm(a, b)
    if dtype == "float16" and dev.type != "cuda":
        return "fp16 matmul is measured on CUDA only (the study runs fp16 only there)"
    dt = getattr(torch, dtype, None)
    if not isinstance(dt, torch.dtype):
        return f"unknown dtype {dtype!r}"
    a = torch.randn(n, n, device=dev).to(dt)
    b = torch.randn(n, n, device=dev).to(dt)
    return lambda: torch.mm(a, b)


#: The convolution the conv peak times: an FPN-like 3x3, 256 -> 256 channels, on a 64x64 map (4.8 GFLOP).
CONV_SHAPE = (1, 256, 64, 64)


def _conv(dtype: str, dev: torch.device, runtime: str):
    """A 3x3 convolution to time for ``dtype`` through ``runtime`` (torch eager, channels_last; or OpenVINO), or a
    reason it is skipped: the kind of work the convolutional stages do, which a runtime may run above matmul speed."""
    if dtype not in ("float32", "bfloat16"):
        return f"{dtype} convolutions are not timed"
    if dtype == "bfloat16" and dev.type == "cpu" and runtime == "torch":
        from .environment import cpu_has_bf16
        if not cpu_has_bf16():
            return "no bf16 matrix instructions on this CPU"
    conv = torch.nn.Conv2d(CONV_SHAPE[1], CONV_SHAPE[1], 3, padding=1, bias=False).eval()
    x = torch.randn(*CONV_SHAPE)
    if runtime == "torch":
        dt = getattr(torch, dtype)
        conv = conv.to(dev, dt).to(memory_format=torch.channels_last)
        x = x.to(dev, dt).contiguous(memory_format=torch.channels_last)

        def run():
            with torch.no_grad():
                return conv(x)
        return run
    from . import runtimes

    if dev.type != "cpu" or not runtimes.available(runtimes.OPENVINO):
        return "OpenVINO is not installed" if dev.type == "cpu" else "OpenVINO runs on the CPU only"
    compiled, used = runtimes.ov_compile(runtimes.ov_convert(conv, x), "f32" if dtype == "float32" else "bf16",
                                         torch.get_num_threads())
    if dtype == "bfloat16" and used != "bf16":
        return f"OpenVINO runs {used} here, not bf16"
    arr = x.numpy()
    return lambda: compiled([arr])


@functools.lru_cache(maxsize=None)
def _measure(device: str, dtypes: tuple[str, ...], size: int, repeats: int, copy_mib: int) -> dict[str, Any]:
    dev = resolve_device(device)
    matmul, spread, notes = {}, {}, {}
    flops = 2.0 * size ** 3
    for dtype in dtypes:
        fn = _matmul(ALIASES.get(dtype, dtype), size, dev)
        if isinstance(fn, str):
            notes[dtype] = "skipped: " + fn
            continue
        times = benchmark(fn, warmup=1, repeats=repeats, device=dev)
        s = summarize(times)
        # a peak is what the machine can do: the best repeat, since a shared machine only ever slows one down
        matmul[dtype] = flops / min(times) / 1e6                     # FLOP / ms -> GFLOP/s
        spread[dtype] = [flops / s.p90 / 1e6, flops / s.median / 1e6]
    conv_flops = 2.0 * CONV_SHAPE[1] ** 2 * 9 * CONV_SHAPE[2] * CONV_SHAPE[3]
    conv: dict[str, dict[str, float]] = {}
    for runtime in ("torch", "openvino"):
        for dtype in dtypes:
            key = ALIASES.get(dtype, dtype)
            fn = _conv(key, dev, runtime)
            if isinstance(fn, str):
                notes[f"conv {runtime} {dtype}"] = "skipped: " + fn
                continue
            times = benchmark(fn, warmup=1, repeats=repeats, device=dev)
            conv.setdefault(runtime, {})[key] = conv_flops / min(times) / 1e6
    n = copy_mib * 2 ** 20 // 4
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel() * src.element_size()                  # read src + write dst
    times = benchmark(lambda: dst.copy_(src), warmup=1, repeats=repeats, device=dev)
    s = summarize(times)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "device": str(dev), "device_name": name, "threads": torch.get_num_threads(),
        "matmul_size": size, "repeats": repeats,
        "matmul_gflops": matmul, "matmul_gflops_p90_median": spread, "conv_gflops": conv,
        "copy_bytes": nbytes, "copy_gbps": nbytes / min(times) / 1e6,
        "copy_gbps_p90_median": [nbytes / s.p90 / 1e6, nbytes / s.median / 1e6],
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if dev.type == "cuda" else None,
        "notes": notes,
        "method": (f"best of {repeats} timed {size}x{size} torch.mm per dtype (torch._int_mm for int8, "
                   f"2*n^3 FLOP) and of a {copy_mib} MiB fp32 dst.copy_(src) (bytes read + written), "
                   f"and of a 3x3 convolution on {CONV_SHAPE} (channels_last in torch; and through OpenVINO), "
                   "through mmdet_speedup.timing.benchmark after one warm-up; the p90 and median repeats beside them"),
    }


def measure_peaks(device: str = "cpu", dtypes: Sequence[str] = ("float32", "bfloat16", "float16", "int8"),
                  size: int | None = None, repeats: int = 5, copy_mib: int = 64) -> dict[str, Any]:
    """This machine's matmul GFLOP/s per dtype and copy bandwidth GB/s, measured once per process per arguments.

    ``size`` defaults to 2048 on the CPU (about 0.2 s per fp32 product on two cores) and 8192 on CUDA (a
    small product does not fill a GPU). fp16 is skipped on the CPU and int8 where ``torch._int_mm`` is
    missing, with a note saying so. The thread count is recorded: a CPU peak is a peak for that many threads.
    """
    dev = resolve_device(device)
    n = size or (8192 if dev.type == "cuda" else 2048)
    return copy.deepcopy(_measure(str(dev), tuple(dtypes), n, repeats, copy_mib))


def peaks_record(device: str = "cpu", **kwargs: Any) -> dict[str, Any]:
    """The peaks as a JSON-able entry for the environment record (the caller merges and writes it).

    ``kwargs`` go to ``measure_peaks``; the record carries its method, sizes and thread count with the figures.
    """
    return {"roofline_peaks": measure_peaks(device, **kwargs)}


# -- the arithmetic ---------------------------------------------------------------------------------------------
def achieved_gflops(ms: float, flops: float) -> float:
    return flops / ms / 1e6 if ms > 0 else math.nan


def percent_of_peak(ms: float, flops: float, gflops_peak: float) -> float:
    """Achieved GFLOP/s over the peak, in percent: 100 means the stage ran at the matmul roof."""
    return achieved_gflops(ms, flops) / gflops_peak * 100 if gflops_peak > 0 else math.nan


def compute_floor_ms(flops: float, gflops_peak: float) -> float:
    """The least time ``flops`` can take at the measured matmul peak."""
    return flops / gflops_peak / 1e6 if gflops_peak > 0 else math.nan


def memory_floor_ms(nbytes: float, gbps: float) -> float:
    """The least time moving ``nbytes`` can take at the measured copy bandwidth (for memory-bound stages)."""
    return nbytes / gbps / 1e6 if gbps > 0 else math.nan


def peak_for(peaks: Mapping[str, Any], dtype: str, work: str = "matmul") -> float:
    """The peak for ``dtype`` (``fp32``/``bf16``/... or torch names) from ``measure_peaks`` or a plain map.

    ``work="conv"`` (the convolutional stages): the highest of the matmul peak and the convolution peaks measured
    through each runtime, so a runtime whose convolutions outrun torch's matmul does not beat its own floor."""
    table = peaks.get("matmul_gflops", peaks)
    key = ALIASES.get(dtype, dtype)
    if key not in table:
        raise InputError(f"no measured matmul peak for {dtype!r}; have {sorted(table)}")
    best = float(table[key])
    if work == "conv":
        for per_runtime in (peaks.get("conv_gflops") or {}).values():
            best = max(best, float(per_runtime.get(key, 0.0)))
    return best


def roofline_table(stage_ms: Mapping[str, float], flops: Mapping[str, float], peaks: Mapping[str, Any],
                   dtype: str = "float32", nbytes: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per stage (those with both a time and a FLOP or byte count): ms, GFLOP, achieved GFLOP/s, peak, floor, %.

    ``floor_ms`` is the compute floor, or the larger of compute and memory floors where ``nbytes`` gives the
    stage's bytes moved (then ``bound`` says which roof binds and ``pct_of_peak`` is the floor over the time).
    """
    peak = peak_for(peaks, dtype, "conv")  # the counted stages are convolutions and linears: the highest peak
    gbps = float(peaks.get("copy_gbps", math.nan)) if nbytes else math.nan
    rows = []
    for stage in [s for s in stage_ms if s in flops or (nbytes and s in nbytes)]:
        ms, f = float(stage_ms[stage]), float(flops.get(stage, 0.0))
        row = {"stage": stage, "ms": ms, "gflop": f / 1e9, "achieved_gflops": achieved_gflops(ms, f),
               "peak_gflops": peak, "floor_ms": compute_floor_ms(f, peak), "pct_of_peak": percent_of_peak(ms, f, peak)}
        if nbytes:
            b = nbytes.get(stage, math.nan)
            mem = memory_floor_ms(b, gbps)
            row.update(gb=b / 1e9, mem_floor_ms=mem, bound="memory" if mem > row["floor_ms"] else "compute")
            if row["bound"] == "memory":
                row.update(floor_ms=mem, pct_of_peak=mem / ms * 100 if ms > 0 else math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["stage", "ms", "gflop", "achieved_gflops", "peak_gflops",
                                                          "floor_ms", "pct_of_peak"])


def percent_table(stages: pd.DataFrame, flops: Mapping[str, float], peaks: Mapping[str, Any],
                  precisions: Mapping[str, str]) -> pd.DataFrame:
    """% of the matrix peak per variant (rows of a ``stage_table``) and counted stage, each variant against the
    peak of the dtype its convolutions run in (``precisions``: variant -> ``fp32``, ``bf16``, ``bf16-weights`` ...);
    NaN for a dtype without a measured peak (the CPU lacks its instructions: the peaks' notes say so)."""
    def peak(v: str) -> float:
        try:
            return peak_for(peaks, precisions[v].split("-")[0], "conv")
        except InputError:
            return math.nan

    cols = [s for s in flops if s in stages.columns]
    return pd.DataFrame({f"{s} % of peak": [percent_of_peak(stages.loc[v, s], flops[s], peak(v))
                                            for v in stages.index] for s in cols}, index=stages.index)


# -- the memory roof: bytes a stage must move -------------------------------------------------------------------
def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if hasattr(x, "nbytes") and not callable(x.nbytes):
        return int(x.nbytes)  # numpy
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    if isinstance(x, dict):
        return sum(_nbytes(t) for t in x.values())
    return 0


class _Shapes:
    """A stand-in for the pipeline's timer that only remembers which stages ran (for ``stage_bytes``)."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.ran: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.ran.append(name)
        yield


@torch.no_grad()
def stage_bytes(pipeline, image) -> dict[str, float]:
    """The least bytes each stage must move for this model and input: every tensor it reads once and writes once.

    ``load`` writes the decoded image; ``preprocess`` reads it and writes its output; ``data_preprocessor``
    reads that and writes the model's input; ``backbone``, ``neck`` and ``rpn`` read their inputs and weights
    and write their outputs; ``roi_bbox`` writes the RoI features (7x7 per proposal) and, when the maps are in a
    reduced dtype or channels_last, reads and rewrites the FPN maps as fp32 NCHW (``Features.roi``); ``roi_mask``
    writes its RoI features (14x14 per detection) and logits; ``mask_postprocess`` reads the logits and writes
    the masks in the chosen form; each NMS reads its boxes and scores. A floor, not an estimate: real kernels
    move more (im2col buffers, several passes per BatchNorm and activation in eager mode).
    """
    from .masks import postprocess

    m = pipeline.model
    img = pipeline.load(image)
    hb = pipeline.preprocess(img)
    inputs, samples = pipeline.to_device(hb)
    metas = [s.metainfo for s in samples]
    feats = pipeline.features(inputs)
    weights = {name: sum(_nbytes(p) for p in mod.parameters())
               for name, mod in ((S.BACKBONE, m.backbone), (S.NECK, getattr(m, "neck", None)), (S.RPN, m.rpn_head))
               if mod is not None}
    with pipeline.precision.autocast():
        back = m.backbone(pipeline.precision.input(inputs, pipeline.choices.channels_last))
        rpn_out = m.rpn_head(feats.maps)
    out = {S.LOAD: _nbytes(img), S.PREPROCESS: _nbytes(img) + _nbytes(hb.data),
           S.DATA_PREPROCESSOR: _nbytes(hb.data) + _nbytes(inputs),
           S.BACKBONE: _nbytes(inputs) + _nbytes(back) + weights[S.BACKBONE],
           S.RPN: _nbytes(feats.maps) + _nbytes(rpn_out) + weights[S.RPN]}
    if m.with_neck:
        out[S.NECK] = _nbytes(back) + _nbytes(feats.maps) + weights[S.NECK]
    from .pipeline import NULL, probe

    with probe(NULL) as counts:
        proposals = pipeline.proposals(feats, metas)
        results = pipeline.boxes(feats, metas, proposals)
    box = 4 * 4 + 4 + 8  # a box, its score and its index/label, read once
    out[S.RPN_NMS] = counts.get("rpn_nms_in", 0) * box
    out[S.ROI_BBOX_NMS] = counts.get("bbox_nms_in", 0) * box
    convert = _nbytes(feats.maps) + _nbytes(feats.roi) if feats.roi[0] is not feats.maps[0] else 0
    n_rois = sum(len(p) for p in proposals)
    channels = int(feats.maps[0].shape[1])
    out[S.ROI_BBOX] = convert + n_rois * channels * 7 * 7 * 4
    if pipeline.with_mask:
        mi = pipeline.mask_logits(feats, results, metas[0])
        out[S.ROI_MASK] = len(results) * channels * 14 * 14 * 4 + _nbytes(mi.logits)
        _, masks = postprocess(pipeline.choices.masks, m.roi_head, mi.logits, mi.copy().results, mi.meta)
        out[S.MASK_POSTPROCESS] = _nbytes(mi.logits) + masks.nbytes()
    return {k: float(v) for k, v in out.items()}


# -- bound (a): the best cost measured for a stage anywhere in the study ----------------------------------------
#: What makes two rows the same work: the model, the input, the workload, the device.
#: Stages that are two halves of one path: a bound takes both from the same row, never each from a different one.
ONE_PATH = ((S.PREPROCESS, S.DATA_PREPROCESSOR),)


def best_measured(table: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    """Per top-level stage of one case table (median ms per image per row, one run): the lowest any row of
    ``keep`` reached and which row (``ms``, ``row``). ``keep``: the rows a bound may use (same workload, results
    kept); the halves in ``ONE_PATH`` come from one row together."""
    stages = [s for s in S.STAGES if s in table.columns]
    sub = table.loc[[k for k in keep if k in table.index], stages].astype(float)
    paired = {s for g in ONE_PATH for s in g}
    groups = [g for g in ONE_PATH if set(g) <= set(stages)] + [(s,) for s in stages if s not in paired]
    out = {}
    for g in groups:
        total = sub[list(g)].sum(axis=1, min_count=len(g)).dropna()
        if total.empty:
            continue
        who = total.idxmin()
        out |= {st: {"ms": float(sub.loc[who, st]), "row": str(who)} for st in g}
    return pd.DataFrame.from_dict(out, orient="index", columns=["ms", "row"])


def bounds_table(stock: Mapping[str, float], path: Mapping[str, float], best: pd.DataFrame,
                 floors: Mapping[str, float]) -> pd.DataFrame:
    """Per top-level stage (the keys of ``path`` in pipeline order): ``stock``'s ms, the path's, the best measured
    in this run (``best_measured``: bound a, and the row it came from) and the roofline floor (bound b), the floor
    over the path's ms as ``% of roof``, and ``beaten``: a measured row at or below the floor, so the measured peak
    is not what this stage's kernels reach and the roof bounds nothing there."""
    rows = []
    for st in [s for s in S.STAGES if s in path]:
        p = float(path[st])
        floor = float(floors.get(st, math.nan))
        b = float(best["ms"].get(st, p)) if st in best.index else p
        rows.append({"stage": st, "stock ms": float(stock.get(st, math.nan)), "path ms": p,
                     "best measured ms": b, "best row": best["row"].get(st, "") if st in best.index else "",
                     "roofline floor ms": floor, "% of roof": floor / p * 100 if p > 0 else math.nan,
                     "beaten": bool(floor >= min(p, b)) if not math.isnan(floor) else False})
    return pd.DataFrame(rows).set_index("stage")


def beaten_floors(table: pd.DataFrame) -> list[str]:
    """The stages of a ``bounds_table`` whose roofline floor a measured row reached or beat."""
    return [str(s) for s in table.index[table["beaten"].astype(bool)]]


def bound_speedups(table: pd.DataFrame) -> dict[str, float]:
    """From a ``bounds_table``: ``stock``'s summed stages over the path's (reached), over the best measured per
    stage (bound a), and over the roofline floors (bound b, stages without a floor at the path's ms); bound b is
    withheld (NaN) where a measured row beats a floor (``beaten_floors``). Sums of stage medians, so the glue
    between stages counts on neither side."""
    s = table.sum(numeric_only=True)
    floors = table["roofline floor ms"].fillna(table["path ms"])
    roof = math.nan if beaten_floors(table) else s["stock ms"] / floors.sum()
    return {"reached": s["stock ms"] / s["path ms"], "best measured bound": s["stock ms"] / s["best measured ms"],
            "roofline bound": roof}
