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
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from .. import precision, roofline
from .. import stages as S
from ..choices import STOCK, Choices
from ..models import clone, set_workload
from ..optimize import Predictor, Reference
from ..pipeline import StagedPipeline
from ..project import reference_dir, seed_figures
from ..stats import EXACT, FASTER, KEEPS, Verdict, best_of, ratio_table, row_interval, verdict
from .cases import AA, BASE, acc_of, case_tables, split_case  # noqa: F401  (split_case: the chapter's cases)
from .words import (Md, accuracy_text, findings_markdown, md_table, share_sentence, takeaway, tied_text,
                    verdict_of)

LEGACY = "legacy"
COMPILE = "+compile"
OPENVINO = "+OpenVINO"
#: The seed's first and last rows (``inference`` is mmdet 2.19 as published, ``inference_raw_mask`` its last row).
SEED_SYSTEM, SEED_FIRST, SEED_LAST = "mmdet 2.19 (seed)", "inference", "inference_raw_mask"
#: The seed's stages compared with ours, through ``data/reference/stage_map.csv``.
SEED_STAGES = ("pre-processing", "backbone", "rpn_head", "roi_head", "total")
#: ``seed_comparison``'s two ratios: the seed's, from its first row to its last, and ours, from ``legacy``
SEED_COLUMNS = ("seed (RTX 3080, published)", "ours (this machine)")



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


PILOT = "pilot"


def pilot_sweep(rung: str) -> str:
    """The ``sweep`` value of the pilot rows that decided ``rung``."""
    return f"{PILOT} {rung}"


def main_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """A run's rows without the pilot's: the full sweep the tables and verdicts are read from."""
    if "sweep" not in rows:
        return rows
    return rows[~rows["sweep"].fillna("").astype(str).str.startswith(PILOT)]


def pilot_verdicts(rows: pd.DataFrame, rungs: Sequence[str]) -> pd.DataFrame:
    """The climb, decided from recorded pilot rows alone: per rung (in order), the rung it was built on, its
    verdict against that rung held to the first pilot's A/A floor, and whether it was kept (only "faster" keeps
    a rung; a rung that failed is not kept). Each rung's pilot is the sweep ``pilot_sweep(rung)``: the candidate,
    the best path below it, and in the first one ``stock (A/A)``."""
    floor, out = None, []
    for rung in rungs:
        r = rows[rows["sweep"] == pilot_sweep(rung)] if "sweep" in rows else rows.iloc[:0]
        if r.empty:
            break
        base = next(v for v in dict.fromkeys(r["variant"]) if v not in (rung, AA))
        ok = r[r["status"] == "ok"]
        if not (ok["variant"] == rung).any():
            out.append({"row": rung, "built on": base, "pilot": "failed", "word": "failed", "kept": False})
            continue
        t = ratio_table(ok, base, aa=AA if floor is None and AA in set(ok["variant"]) else None, floor=floor)
        if floor is None and AA in t.index:
            floor = row_interval(t.loc[AA])
        v = verdict(row_interval(t.loc[rung]), floor)
        out.append({"row": rung, "built on": base, "pilot": v.text, "word": v.word, "kept": v.word == FASTER})
    return pd.DataFrame(out, columns=["row", "built on", "pilot", "word", "kept"]).set_index("row")


def path_of(decisions: pd.DataFrame) -> str:
    """The last kept rung of ``pilot_verdicts`` (``stock`` if none): the path to use on this device."""
    kept = decisions.index[decisions["kept"].astype(bool)]
    return str(kept[-1]) if len(kept) else BASE


@dataclass
class Climb:
    """The ladder as climbed: each rung's choices (its lever on the best path below it), the rung it was built on
    (``parent``), and the pilot's decisions, read from the pilot's recorded rows (``pilot_verdicts``)."""

    choices: dict[str, Choices]
    parent: dict[str, str]
    decisions: pd.DataFrame

    @property
    def kept(self) -> dict[str, bool]:
        return self.decisions["kept"].astype(bool).to_dict()

    @property
    def path(self) -> str:
        return path_of(self.decisions)


Pilot = Callable[[Mapping[str, Choices], str], pd.DataFrame]


def climb(rungs: Sequence[tuple[str, dict]], pilot: Pilot) -> Climb:
    """Climb from ``stock``: each rung applies its lever to the best path so far, and ``pilot(variants, sweep)``
    (a short interleaved sweep whose rows are recorded) measures it against that path; whether the rungs above
    build on it is read from those rows (``pilot_verdicts``). A rung that is not faster stays in the table,
    marked, and the path goes on without it."""
    best, best_name = STOCK, BASE
    choices, parent, recorded = {}, {}, []
    names = [name for name, _ in rungs]
    for name, lever in rungs:
        candidate = best.replace(**lever)
        choices[name], parent[name] = candidate, best_name
        variants = {best_name: best, name: candidate, **({} if recorded else {AA: STOCK})}
        recorded.append(pilot(variants, pilot_sweep(name)))
        if pilot_verdicts(pd.concat(recorded, ignore_index=True), names).loc[name, "kept"]:
            best, best_name = candidate, name
    return Climb(choices, parent, pilot_verdicts(pd.concat(recorded, ignore_index=True), names))


def pilot_with(profiler, samples, extra: Mapping | None = None) -> Pilot:
    """A pilot for ``climb``: ``profiler`` (its own repeats; its recorder keeps the rows) runs the variants
    interleaved, each pilot a sweep of its own marked in the ``sweep`` column."""
    def pilot(variants: Mapping[str, Choices], sweep: str) -> pd.DataFrame:
        return profiler.run(dict(variants), samples, {**(extra or {}), "sweep": sweep})
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

    def climb(self, pilot: Pilot) -> Climb:
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
        """One case's rungs (main sweep), each against the rung it was built on, held to the A/A floor (failed
        rungs left out)."""
        rows = main_rows(rows)
        floor = row_interval(ratio_table(rows, BASE, aa=AA).loc[AA])
        ok = set(rows.loc[rows["status"] == "ok", "variant"])
        return {rung: verdict(row_interval(ratio_table(rows, parent).loc[rung]), floor)
                for rung, parent in self.climbed.parent.items() if rung in ok and parent in ok}

    def verdicts(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One case's rungs against the rung below and against ``stock`` in the main sweep (verdicts held to its A/A
        floor), beside the pilot's recorded verdict that decided whether the path kept the rung."""
        vs_stock = ratio_table(main_rows(rows), BASE, aa=AA)
        d = self.climbed.decisions
        return pd.DataFrame([{"row": rung, "built on": self.climbed.parent[rung], "vs the rung below": v.text,
                              "vs stock": vs_stock.loc[rung, "text"], "pilot": d.loc[rung, "pilot"],
                              "kept": bool(d.loc[rung, "kept"])}
                             for rung, v in self.rung_verdicts(rows).items() if rung in d.index]).set_index("row")

    def bound_rows(self, table: pd.DataFrame) -> list[str]:
        """The rows of a case table a bound may use: ``stock`` and the rungs that keep accuracy by the study's rule
        or whose outputs are exactly stock's, at the study's workload (never the ``fewer`` row)."""
        keeps = (table["results"] == EXACT) | (table["accuracy"] == KEEPS)
        return [r for r in table.index if r != self.fewer and r != AA and (r == BASE or bool(keeps.get(r)))]

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

    def tables(self, rows: pd.DataFrame, agreement: pd.DataFrame | None, cases: Sequence[str],
               accuracy: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
        """``case_table`` per case, in the ladder's row order."""
        return case_tables(rows, agreement, cases, self.rows, accuracy)

    def pipelines(self, model, fewer_model, every_row: bool = True) -> dict[str, Callable[[], StagedPipeline]]:
        """Per row, a function making its pipeline (for ``Chapter.accuracy``, against ``stock`` on ``model``); the
        ``fewer`` row runs ``fewer_model``. Without ``every_row``, ``stock``, the path and the ``fewer`` row."""
        rows = self.choices if every_row else {BASE: STOCK, self.path: self.choices[self.path]}
        makers = {row: partial(StagedPipeline, model, c, self.device) for row, c in rows.items()}
        makers[self.fewer] = partial(StagedPipeline, fewer_model, self.choices[self.path], self.device)
        return makers

    def per_case(self, rows: pd.DataFrame, cases: Sequence[str],
                 summary: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
        """``summary`` (one row per variant, e.g. ``stage_gap`` or ``total_spread``) of each case, indexed by
        (case, row) in the ladder's order."""
        return pd.concat({case: summary(rows[rows["case"] == case]).reindex(self.rows) for case in cases},
                         names=["case", "row"])

    def stage_bounds(self, model, image, table: pd.DataFrame, peaks: Mapping) -> pd.DataFrame:
        """How far the path could go at one case, per stage (``roofline.bounds_table``): ``stock``, the path, (a)
        the lowest cost this run measured for the stage among the rows a bound may use (``bound_rows``:
        ``roofline.best_measured``), and (b) the roofline floor: FLOPs counted for this model and input over the
        matmul peak of the path's dtype, or the bytes the stage must move over the copy bandwidth, whichever is
        larger (``peaks``: ``roofline.measure_peaks``). ``table``: the case's ``case_table``."""
        # compiled kernels and converted runtimes hide from the FLOP counter; the work is the same in eager torch
        c = self.choices[self.path].replace(compile=False, runtime="torch")
        pipe = StagedPipeline(model, c, self.device)
        flops = roofline.stage_flops(pipe, image, stages=(S.BACKBONE, S.NECK, S.RPN, S.ROI_BBOX, S.ROI_MASK))
        path_ms = table.loc[self.path, [s for s in S.STAGES if s in table.columns]].dropna().to_dict()
        roof = roofline.roofline_table(path_ms, flops, peaks, c.precision.split("-")[0],
                                       roofline.stage_bytes(pipe, image))
        best = roofline.best_measured(table, self.bound_rows(table))
        return roofline.bounds_table(table.loc[BASE].to_dict(), path_ms, best,
                                     roof.set_index("stage")["floor_ms"].to_dict())

    def seed_comparison(self, tables: Mapping[str, pd.DataFrame], seed: pd.DataFrame | None = None,
                        smap: pd.Series | None = None) -> pd.DataFrame:
        """``seed_comparison`` from ``legacy`` to the last result-preserving row."""
        return seed_comparison(tables, LEGACY, self.path, seed, smap)


# -- what is read from the rows ----------------------------------------------------------------------------------


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


# -- what the chapter says ---------------------------------------------------------------------------------------
#: What each rung's lever needs from the machine or the consumer: a reader checks these before copying a choice.
DEPENDS_ON = {
    "+precision": "bf16 matrix instructions (AVX-512 BF16 or AMX; fp16 TensorCores on a GPU); without them the "
                  "reduced precision is emulated",
    "+auto preprocess": "nothing: the pick is measured on the machine, per input shape",
    "+raw masks": "a consumer that takes 28x28 mask probabilities and boxes instead of full-image masks",
    "+torchvision RoIAlign": "torchvision's CPU kernel",
    "+threaded RoIAlign": "more than one core",
    "+fold BN": "nothing",
    "+bf16 weights": "bf16 matrix instructions (AVX-512 BF16 or AMX)",
    "+fp16 weights": "fp16 TensorCores",
    "+compile": "a C++ compiler at run time (TorchInductor), and its compile time per input shape",
    "+OpenVINO": "OpenVINO's CPU plugin (bf16 where the CPU has AVX-512 BF16 or AMX)",
}


def cases_table(lad: Ladder, rows: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per case: ``stock``'s and the path's ms per image (the statistic the ratio is read from), the path against
    ``stock`` with its interval and verdict, and its delta box AP with the accuracy rule's word."""
    out = {}
    for case, table in tables.items():
        t = ratio_table(main_rows(rows[rows["case"] == case]), BASE, aa=AA)
        word = table.loc[lad.path, "accuracy"] or "not scored"
        out[case] = {"stock (ms per image)": f"{t.loc[BASE, 'median ms']:.0f}",
                     f"`{lad.path}` (ms per image)": f"{t.loc[lad.path, 'median ms']:.0f}",
                     "against stock": t.loc[lad.path, "text"],
                     "Δ box AP": table.loc[lad.path, "Δ box AP"] or "", "accuracy": word}
    df = pd.DataFrame(out).T
    df.index.name = "case (input > model scale)"
    return df


def todo_table(lad: Ladder, rows: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """What to do on this machine, from one case's verdicts: each rung against the rung it was built on, whether
    the path kept it, its accuracy against ``stock`` by the study's rule, and what the lever depends on."""
    v = lad.verdicts(rows)
    df = pd.DataFrame({"against the rung below": v["vs the rung below"], "on the path": v["kept"].map(
        {True: "yes", False: "no"}), "accuracy": table["accuracy"].reindex(v.index).replace("", "not scored"),
        "depends on": [DEPENDS_ON.get(r, "") for r in v.index]})
    df.index.name = "rung"
    return df


def climb_findings(lad: Ladder, rows: pd.DataFrame) -> str:
    """One case's climb in words (Markdown): each rung against the rung it was built on in the full sweep, and the
    pilot's recorded verdict that decided whether the path kept it."""
    d = lad.climbed.decisions

    def line(rung: str, v: Verdict) -> str:
        text = takeaway(rung, v, lad.climbed.parent[rung]).rstrip(".")
        pilot = d.loc[rung, "pilot"]
        if d.loc[rung, "kept"]:
            return f"{text}; kept (its pilot: {pilot})."
        return f"{text}; not kept (its pilot: {pilot}; the rungs above build on the rung below)."
    return findings_markdown(line(r, v) for r, v in lad.rung_verdicts(rows).items() if r in d.index)


def _roof_text(bounds: pd.DataFrame, value: float) -> str:
    beaten = roofline.beaten_floors(bounds)
    if beaten:
        return ("every counted stage at its roofline floor: withheld, because measured rows reach or beat the floor "
                f"at {', '.join(f'`{s}`' for s in beaten)} (the measured peaks are below what "
                "those kernels reach)")
    return f"every counted stage at its roofline floor (the others at the path's own time) {value:.1f}x"


def findings(lad: Ladder, rows: pd.DataFrame, tables: Mapping[str, pd.DataFrame],
             bounds: Mapping[str, pd.DataFrame], repeats: Mapping[str, str], accuracy: pd.DataFrame) -> dict[str, Any]:
    """06: per case the path against ``stock`` and against ``legacy`` (beside the seed's ratio from its own first
    row, mmdet 2.x: the same kind of baseline), the fastest result-keeping row by the verdict rule, the bounds
    from this run's rows; ``legacy`` against ``stock``, where the path's time goes, the proposal cut (its own
    sweep: compared unpaired); the climb in words at the first case."""
    seed, path, head, tail = seed_speedups(), lad.path, [], []
    for case, t in tables.items():
        of = main_rows(rows[rows["case"] == case])
        vs_stock = ratio_table(of, BASE, aa=AA)
        floor = row_interval(vs_stock.loc[AA])
        vs_legacy = ratio_table(of, LEGACY, floor=floor)
        scale = split_case(case)[1]
        published = (f"; the seed's ladder, from its mmdet 2.x row, gained {seed.loc[scale, 'total']:.2f}x at "
                     f"{scale} on an RTX 3080 (published)" if scale in seed.index else "")
        keep = [r for r in lad.bound_rows(t) if r in set(of.loc[of["status"] == "ok", "variant"])]
        best = (tied_text(best_of(of, keep, floor=floor), "end to end, among `stock` and the rows that keep "
                          "accuracy or give exactly stock's outputs")
                if len(keep) > 1 else "no row but `stock` was found to keep accuracy at this case")
        b = roofline.bound_speedups(bounds[case])
        measured = (f"every stage at the lowest cost an accuracy-keeping row measured {b['best measured bound']:.2f}x"
                    if b["best measured bound"] >= b["reached"] else
                    "no bound from accuracy-keeping rows: the path, which was not found to keep accuracy, is "
                    "faster than they are at every stage together")
        head.append(f"At {case}: `{path}` (the path the pilot kept) against `stock` end to end, "
                    f"{verdict_of(vs_stock, path)}; against `legacy` (mmdet 2.x's path), "
                    f"{verdict_of(vs_legacy, path)}{published}. Accuracy against `stock`: "
                    f"{accuracy_text(acc_of(accuracy, case), path)}. In the full sweep, {best}. Bounds from this run's "
                    f"stages: {measured}; {_roof_text(bounds[case], b['roofline bound'])}.")
        stage_ms = t.loc[path, [s for s in S.STAGES if s in t.columns]].dropna()
        tail.append(f"At {case}: `legacy` against `stock`, {verdict_of(vs_stock, LEGACY)}. "
                    f"{share_sentence(stage_ms, float(t.loc[path, S.TOTAL]), f'the time of `{path}`')} "
                    f"`{lad.fewer}` (a sweep of its own) against `{path}`: "
                    f"{verdict_of(ratio_table(of[of['variant'].isin([path, lad.fewer])], path, floor=floor), lad.fewer)}"
                    f"; its accuracy against `stock`: {accuracy_text(acc_of(accuracy, case), lad.fewer)}.")
    case0 = next(iter(tables))
    first = main_rows(rows[rows["case"] == case0])
    return {"lad_headline": Md(findings_markdown(head)), "lad_more": Md(findings_markdown(tail)),
            "lad_findings": Md(climb_findings(lad, first)), "lad_repeats": "; ".join(f"{c}: {r}" for c, r in repeats.items()),
            "lad_path": path, "lad_cases": Md(md_table(cases_table(lad, rows, tables))),
            "lad_todo": Md(f"At {case0}:\n\n" + md_table(todo_table(lad, first, tables[case0])))}
