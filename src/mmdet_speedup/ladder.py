"""The end-to-end ladder (chapter 06): fixed rows, each adding one optimization to the row above, and what is
read from their rows: the per-case table, the bounds per stage (best measured anywhere, roofline floor), the
seed comparison.

A case is ``"<input size>><model scale>"`` (WxH each), e.g. ``"3840x2304>1333x800"``. Every ratio is against
``stock`` (mmdet 3.3's ``test_step``). The rows a run measured come back from its CSV; the functions below take
those rows (or the per-case tables made from them) and never time anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

from . import precision, roofline
from . import stages as S
from .choices import STOCK, Choices
from .models import clone, set_workload
from .optimize import Predictor, Reference
from .pipeline import StagedPipeline
from .profiler import stage_summary, stage_table
from .project import reference_dir, seed_figures
from .stats import (FASTER, SLOWER, Interval, Verdict, aa_of, findings_markdown, preservation_column, ratio_table,
                    row_interval, takeaway, verdict)

LEGACY, BASE = "legacy", "stock"
COMPILE = "+compile"
OPENVINO = "+OpenVINO"
#: The seed's first and last rows (``inference`` is mmdet 2.19 as published, ``inference_raw_mask`` its last row).
SEED_SYSTEM, SEED_FIRST, SEED_LAST = "mmdet 2.19 (seed)", "inference", "inference_raw_mask"
#: The seed's stages compared with ours, through ``data/reference/stage_map.csv``.
SEED_STAGES = ("pre-processing", "backbone", "rpn_head", "roi_head", "total")
#: ``seed_comparison``'s two ratios: the seed's, from its first row to its last, and ours, from ``legacy``
SEED_COLUMNS = ("seed (RTX 3080, published)", "ours (this machine)")
WORKLOAD = ["rpn_nms_in", "bbox_nms_in", "dets_out"]
AGREEMENT = ["matched_ref", "matched_test", "box_iou_mean", "box_iou_min", "score_diff_max", "mask_iou_mean",
             "mask_identical"]


def split_case(case: str) -> tuple[str, str]:
    """``"3840x2304>1333x800"`` -> ``("3840x2304", "1333x800")``: the input size and the model's scale."""
    size, scale = case.split(">")
    return size, scale


#: The A/A row: ``stock`` profiled a second time in the same sweep; its ratio interval is the noise floor.
AA = aa_of(BASE)


def levers(device: str | torch.device) -> list[tuple[str, dict]]:
    """The rungs above ``stock`` for ``device``, in order: each is one lever, applied to the best path below it.

    ``+precision`` is the precision a study compares with fp32 on the device (``precision.studied``: fp16 on CUDA,
    bf16 on a CPU whether or not it has bf16 instructions); the RoIAlign rungs exist on the CPU only (on CUDA mmcv's
    kernel stays); the weights rung is named after that precision (``+bf16 weights`` or ``+fp16 weights``); the last
    rung (CPU only) runs backbone, neck, RPN head and the RoI heads' dense layers in OpenVINO at that precision
    (``runtimes``), dropping the
    torch-only levers (channels_last, compile, the weights precision) of the path below it.
    """
    low = precision.studied(device)
    out = [("+precision", dict(precision=low, channels_last=True)), ("+auto preprocess", dict(preprocess="auto")),
           ("+raw masks", dict(masks="raw"))]
    if torch.device(device).type == "cpu":
        out += [("+torchvision RoIAlign", dict(roi_align="torchvision")), ("+threaded RoIAlign", dict(roi_align="threaded"))]
    out += [("+fold BN", dict(fold_bn=True)), (f"+{low} weights", dict(precision=f"{low}-weights")),
            (COMPILE, dict(compile=True))]
    if torch.device(device).type == "cpu":
        # the convolutional stages and RoI heads in OpenVINO at the study's precision; the torch-only levers go
        out.append((OPENVINO, dict(runtime="openvino", precision=low, channels_last=False, compile=False)))
    return out


@dataclass
class Climb:
    """The ladder as climbed: each rung's choices (its lever on the best path below it), the rung it was compared
    with (``parent``), the pilot's verdict, and whether it was ``kept`` (only a "faster" verdict keeps a rung)."""

    choices: dict[str, Choices]
    parent: dict[str, str]
    pilot: dict[str, Verdict]
    kept: dict[str, bool]

    @property
    def path(self) -> str:
        """The last kept rung (``stock`` if none): the path to use on this device."""
        return next((r for r in reversed(list(self.kept)) if self.kept[r]), BASE)


def climb(rungs: Sequence[tuple[str, dict]], pilot: Callable[[Choices, Choices], Verdict]) -> Climb:
    """Climb from ``stock``: each rung applies its lever to the best path so far; ``pilot(base, candidate)`` (a short
    interleaved measurement) decides whether the rungs above build on it. A rung that is slower or shows no
    measurable difference stays in the table, marked, and the path goes on without it."""
    best, best_name = STOCK, BASE
    c = Climb({}, {}, {}, {})
    for name, lever in rungs:
        candidate = best.replace(**lever)
        c.choices[name], c.parent[name] = candidate, best_name
        c.pilot[name] = pilot(best, candidate)
        c.kept[name] = c.pilot[name].word == FASTER
        if c.kept[name]:
            best, best_name = candidate, name
    return c


#: The pilot's own A/A row (``base`` measured twice), added to its first comparison.
PILOT_AA = "base (A/A)"


def pilot_with(profiler, samples, stages: Sequence[str] = (S.TOTAL,)) -> Callable[[Choices, Choices], Verdict]:
    """A pilot for ``climb``: ``profiler`` (its own repeats, no recorder) runs base and candidate interleaved.

    The first comparison also runs ``base`` a second time: that A/A pair is the pilot's noise floor, and every
    pilot verdict is held to it, as the sweep's verdicts are held to the sweep's. Give the profiler a
    ``Repeats`` policy (e.g. ``Repeats(3, 7)``) so a pilot stops once its intervals are narrow and measures
    longer where they are not.
    """
    floor: list[Interval] = []

    def pilot(base: Choices, candidate: Choices) -> Verdict:
        variants = {"base": base, "candidate": candidate, **({} if floor else {PILOT_AA: base})}
        rows = profiler.run(variants, samples)
        if "status" in rows and (rows["status"] == "error").any():
            return Verdict(SLOWER, Interval(float("nan"), float("nan"), float("nan"), 0))  # a failing lever
        t = ratio_table(rows, "base", stages=stages, aa=None if floor else PILOT_AA)
        if not floor:
            floor.append(row_interval(t.loc[PILOT_AA]))
        return verdict(row_interval(t.loc["candidate"]), floor[0])
    return pilot


def fewer_row(proposals: int) -> str:
    """The name of the row that runs the path's choices on a model keeping ``proposals`` RPN proposals."""
    return f"+{proposals} proposals (changes results)"


class Ladder:
    """The ladder on one device: ``legacy``, ``stock``, the A/A row, the rungs as climbed (``climb``) and the
    ``fewer`` row (the path's choices on a model keeping fewer proposals: changes results), with the mechanics of
    building and reading its rows."""

    def __init__(self, device: str | torch.device, fewer_proposals: int) -> None:
        self.device = torch.device(device)
        self.low = precision.studied(self.device)
        self.rungs = levers(self.device)
        self.fewer_proposals = int(fewer_proposals)
        self.fewer = fewer_row(self.fewer_proposals)
        self.climbed: Climb | None = None

    def climb(self, pilot: Callable[[Choices, Choices], Verdict]) -> Climb:
        """Decide which rungs the path keeps (see ``climb``); the full sweep then measures every rung."""
        self.climbed = climb(self.rungs, pilot)
        return self.climbed

    @property
    def choices(self) -> dict[str, Choices]:
        if self.climbed is None:
            raise RuntimeError("climb the ladder first (Ladder.climb with a pilot)")
        return {LEGACY: Choices(preprocess="legacy", masks="legacy"), BASE: STOCK, AA: STOCK, **self.climbed.choices}

    @property
    def path(self) -> str:
        """The rung whose choices are the path to use on this device."""
        return self.climbed.path

    @property
    def rows(self) -> list[str]:
        return [*self.choices, self.fewer]

    def rung_verdicts(self, rows: pd.DataFrame) -> dict[str, Verdict]:
        """One case's rungs, each against the rung it was built on, held to the A/A floor (failed rungs left out)."""
        floor = row_interval(ratio_table(rows, BASE, aa=AA).loc[AA])
        ok = set(rows.loc[rows["status"] == "ok", "variant"])
        return {rung: verdict(row_interval(ratio_table(rows, parent).loc[rung]), floor)
                for rung, parent in self.climbed.parent.items() if rung in ok}

    def verdicts(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One case's rungs against the rung below and against ``stock`` (intervals, verdicts held to the A/A floor),
        and the pilot's verdict that decided whether the path kept the rung."""
        vs_stock = ratio_table(rows, BASE, aa=AA)
        return pd.DataFrame([{"row": rung, "built on": self.climbed.parent[rung], "vs the rung below": v.text,
                              "vs stock": vs_stock.loc[rung, "text"], "pilot": self.climbed.pilot[rung].text,
                              "kept": self.climbed.kept[rung]}
                             for rung, v in self.rung_verdicts(rows).items()]).set_index("row")

    def findings(self, rows: pd.DataFrame) -> str:
        """One case's climb in words (Markdown): each rung against the rung it was built on, kept or not, and
        where the full sweep's verdict differs from the pilot's that decided it."""
        def line(rung: str, v: Verdict) -> str:
            kept = self.climbed.kept[rung]
            text = takeaway(rung, v, self.climbed.parent[rung]).rstrip(".")
            text += "; kept" if kept else "; not kept (the rungs above build on the rung below)"
            if v.word != self.climbed.pilot[rung].word:
                text += f"; the pilot that decided this said {self.climbed.pilot[rung].text}"
            return text + "."
        return findings_markdown(line(rung, v) for rung, v in self.rung_verdicts(rows).items())

    def disagreements(self, rows: pd.DataFrame) -> list[str]:
        """Rungs whose full-sweep verdict against the rung below differs from the pilot's."""
        return [r for r, v in self.rung_verdicts(rows).items() if v.word != self.climbed.pilot[r].word]

    def fewer_model(self, model):
        """A copy of ``model`` whose RPN keeps ``fewer_proposals`` proposals (``model`` is left as it is)."""
        fewer = clone(model)
        set_workload(fewer, rpn_proposals=self.fewer_proposals)
        return fewer

    def predictors(self, model, fewer_model, every_row: bool = True) -> dict[str, Callable[[], Predictor]]:
        """Per row, a function making its ``Predictor`` (for ``Chapter.equivalence``). Each row is checked against
        ``stock`` on ``model``; the ``fewer`` row runs ``fewer_model`` and is checked against the stock model with
        the stock workload, so what it changes shows. The rows share one ``Reference``: ``stock`` runs once.
        Without ``every_row``, only the path and the ``fewer`` row (a later case: the rungs were checked at the
        first, and at the seed's 3840x2304 each row's check costs about as much as a pass of the sweep)."""
        ref = Reference.of(model, STOCK, self.device)
        rows = self.choices if every_row else {self.path: self.choices[self.path]}
        makers: dict[str, Callable[[], Predictor]] = {row: partial(Predictor, model, c, self.device, reference=ref)
                                                for row, c in rows.items()}
        makers[self.fewer] = lambda: Predictor(fewer_model, self.choices[self.path], self.device, reference=ref)
        return makers

    def tables(self, rows: pd.DataFrame, agreement: pd.DataFrame | None,
               cases: Sequence[str]) -> dict[str, pd.DataFrame]:
        """``case_table`` per case, in the ladder's row order."""
        return case_tables(rows, agreement, cases, self.rows)

    def per_case(self, rows: pd.DataFrame, cases: Sequence[str],
                 summary: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
        """``summary`` (one row per variant, e.g. ``stage_gap`` or ``total_spread``) of each case, indexed by
        (case, row) in the ladder's order."""
        return pd.concat({case: summary(rows[rows["case"] == case]).reindex(self.rows) for case in cases},
                         names=["case", "row"])

    def stage_bounds(self, model, image, table: pd.DataFrame, rows: pd.DataFrame, best: pd.DataFrame,
                     peaks: Mapping) -> pd.DataFrame:
        """How far the path could go at one case, per stage (``roofline.bounds_table``): ``stock``, the path, (a)
        the best cost measured for the stage anywhere in the study (``best``: ``roofline.best_measured``), and (b)
        the roofline floor: FLOPs counted for this model and input over the matmul peak of the path's dtype, or
        the bytes the stage must move over the copy bandwidth, whichever is larger (``peaks``:
        ``roofline.measure_peaks``). ``table``: the case's ``case_table``; ``rows``: its profiler rows."""
        # compiled kernels and converted runtimes hide from the FLOP counter; the work is the same in eager torch
        c = self.choices[self.path].replace(compile=False, runtime="torch")
        pipe = StagedPipeline(model, c, self.device)
        flops = roofline.stage_flops(pipe, image, stages=(S.BACKBONE, S.NECK, S.RPN, S.ROI_BBOX, S.ROI_MASK))
        path_ms = table.loc[self.path, [s for s in S.STAGES if s in table.columns]].dropna().to_dict()
        roof = roofline.roofline_table(path_ms, flops, peaks, c.precision.split("-")[0],
                                       roofline.stage_bytes(pipe, image))
        return roofline.bounds_table(table.loc[BASE].to_dict(), path_ms, roofline.best_for(best, rows),
                                     roof.set_index("stage")["floor_ms"].to_dict())

    def seed_comparison(self, tables: Mapping[str, pd.DataFrame], seed: pd.DataFrame | None = None,
                        smap: pd.Series | None = None) -> pd.DataFrame:
        """``seed_comparison`` from ``legacy`` to the last result-preserving row."""
        return seed_comparison(tables, LEGACY, self.path, seed, smap)


def _of_case(df: pd.DataFrame | None, case: str) -> pd.DataFrame | None:
    return None if df is None else df[df["case"] == case]


# -- what is read from the rows ----------------------------------------------------------------------------------
def case_table(rows: pd.DataFrame, agreement: pd.DataFrame | None, order: Sequence[str]) -> pd.DataFrame:
    """One case's ladder: median ms per image per stage (``stage_table``), ``total + rle`` (a consumer asking for
    every mask as RLE), the speed-up against ``stock`` with and without it, the speed-up's 95% interval (``lo``,
    ``hi``, over ``n`` repeats) and verdict held to the A/A floor, the runtime of the converted parts
    (``runtime``, where recorded), the workload each row ran (median NMS inputs and
    detections out), its agreement with ``stock`` (mean over images; empty where not checked) and what that
    agreement says (``results``: exact, preserves results or changes results, ``stats.preservation``).

    ``rows``: the profiler's rows of one case; ``agreement``: its equivalence rows (column ``row``), or None.
    """
    t = stage_table(rows).reindex(list(order))
    t["total + rle"] = t[S.TOTAL] + t.get(S.CONSUMER_RLE, 0)
    t["speed-up"] = t.loc[BASE, S.TOTAL] / t[S.TOTAL]
    t["speed-up with rle"] = t.loc[BASE, "total + rle"] / t["total + rle"]
    t = t.join(ratio_table(rows, BASE, aa=AA if AA in set(rows["variant"]) else None)[["lo", "hi", "n", "verdict"]])
    t = t.join(rows.groupby("variant")[WORKLOAD].median())
    if "runtime" in rows:  # where backbone, neck, RPN head and RoI heads ran (RoIAlign, NMS, masks: torch)
        t["runtime"] = rows.groupby("variant")["runtime"].first()
    agreement = agreement if agreement is not None else pd.DataFrame(columns=["row", *AGREEMENT])
    t = t.join(agreement.reindex(columns=["row", *AGREEMENT]).groupby("row")[AGREEMENT].mean())
    t["results"] = preservation_column(t).where(t["matched_ref"].notna(), "")
    return t


def case_tables(rows: pd.DataFrame, agreement: pd.DataFrame | None, cases: Sequence[str],
                order: Sequence[str]) -> dict[str, pd.DataFrame]:
    """``case_table`` per case (a ``case`` column in both), rows in ``order``."""
    return {case: case_table(rows[rows["case"] == case], _of_case(agreement, case), order) for case in cases}


def total_spread(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, ``total`` ms per image over repeats and images: median, p10, p90 and n."""
    return stage_summary(rows[rows["stage"] == S.TOTAL]).set_index("variant")[["median", "p10", "p90", "n"]]


def biggest_stage(row: pd.Series) -> str:
    """The top-level stage taking the most time in one row of a ladder table (what is left to optimize)."""
    return str(row.reindex(list(S.STAGES)).dropna().idxmax())


def legacy_vs_stock(tables: Mapping[str, pd.DataFrame]) -> pd.Series:
    """Per case, ``legacy``'s total over ``stock``'s (above 1: mmdet 3.3 already fixed part of what the seed
    measured)."""
    return pd.Series({case: float(t.loc[LEGACY, S.TOTAL] / t.loc[BASE, S.TOTAL]) for case, t in tables.items()},
                     dtype=float)


def legacy_verdict(ratio: float, noise: float = 1.05) -> str:
    """What ``legacy``/``stock`` says, in words: a gain beyond ``noise`` is mmdet 3.3's fixes showing."""
    if ratio > noise:
        return "mmdet 3.3 already fixed part of what the seed measured"
    return ("at this size on this CPU mmdet 3.3's fixes (on-device normalize, no per-class host masks) "
            "are lost in the model's own cost; they show at larger inputs")


def ratios_in_words(ratios: pd.Series) -> str:
    """``"1.27x at 1333x800>1333x800, 3.10x at 3840x2304>3840x2304"``."""
    return ", ".join(f"{v:.2f}x at {c}" for c, v in ratios.items())


def seed_speedups(seed: pd.DataFrame | None = None, first: str = SEED_FIRST, last: str = SEED_LAST) -> pd.DataFrame:
    """The seed's published speed-up from its ``first`` row to its ``last``, per scale (rows) and seed stage
    (columns). ``seed``: the reference figures (default ``data/reference/seed_figures.csv``)."""
    seed = seed_figures() if seed is None else seed
    s = seed[seed["system"] == SEED_SYSTEM].pivot_table(index=["scale", "stage"], columns="variant", values="value")
    return (s[first] / s[last]).unstack("stage")


def stage_map() -> pd.Series:
    """The seed's stages in ours (``data/reference/stage_map.csv``): seed stage -> ``"ours+ours"``."""
    return pd.read_csv(reference_dir() / "stage_map.csv").set_index("seed_stage")["our_stages"]


def seed_comparison(tables: Mapping[str, pd.DataFrame], first: str, last: str, seed: pd.DataFrame | None = None,
                    smap: pd.Series | None = None) -> pd.DataFrame:
    """Per case run at its own size and at a scale the seed published, per seed stage (``SEED_STAGES``): the seed's
    speed-up from its first row to its last (RTX 3080, published) and ours from row ``first`` to row ``last``,
    summing our stages that map onto the seed's (``stage_map``). Empty when no case qualifies."""
    published = seed_speedups(seed)
    smap = stage_map() if smap is None else smap
    out = []
    for case, t in tables.items():
        size, scale = split_case(case)
        if size != scale or scale not in published.index:
            continue
        for st in SEED_STAGES:
            ours = [c for c in smap[st].split("+") if c in t.columns]
            out.append({"case": case, "seed stage": st, "our stages": "+".join(ours),
                        SEED_COLUMNS[0]: published.loc[scale, st],
                        SEED_COLUMNS[1]: t.loc[first, ours].sum() / t.loc[last, ours].sum()})
    return pd.DataFrame(out, columns=["case", "seed stage", "our stages", *SEED_COLUMNS])
