"""The runtimes chapter's rows: the staged pipeline with each runtime for its convolutional stages, beside the
whole model as a user deploys it (mmdeploy's export in ONNX Runtime or OpenVINO), measured in one sweep.

Row names are fixed. ``stock`` is mmdet as shipped (the baseline of every ratio) and ``stock (A/A)`` its second
run in the same sweep (the noise floor). Staged rows change one thing at a time from ``stock`` (a runtime, a
precision), then ``auto`` rows stack the library's levers (``Choices.auto``). Deployed rows run mmdeploy's graph
(``deploy.DeployedModel``): the same weights, the same image, the same workload, mmdeploy's own pre- and
post-processing (full-image masks, like ``stock``).
"""
from __future__ import annotations

import atexit
import gc
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from .. import accuracy, roofline, runtimes
from ..choices import STOCK, Choices
from ..equivalence import compare
from ..models import STUDY_SCALE, above_study_scale
from ..optimize import Reference
from ..pipeline import StagedPipeline, load_image
from ..profiler import Built
from ..stats import aa_of

BASE = "stock"
AA = aa_of(BASE)
EAGER_BEST, COMPILED_BEST = "torch auto (eager)", "torch auto (compiled)"
INT8 = "ov int8 (changes results)"
#: int8 with the library's other levers on top (raw masks, threaded RoIAlign, ...), like ``ov auto``.
INT8_AUTO = "ov int8 auto (changes results)"
#: The stages a runtime converts (backbone, neck, RPN head, and the RoI heads' convolutions and linears).
CONVERTED = ("backbone", "neck", "rpn", "roi_bbox", "roi_mask")
DEPLOYED_PREFIX = "mmdeploy → "
#: A case above the study's scale (``models.above_study_scale``) runs only ``LARGE_ROWS``: every row's compiled
#: graphs and arenas live at once in an interleaved sweep, and at 3840x2304 every row at once outgrows a 24 GB
#: machine. Kept: the baseline and its A/A, torch's best, and OpenVINO's best staged and deployed rows at the
#: lowest precision that keeps results.
LARGE_ROWS = ("stock", "stock (A/A)", "torch auto (eager)", "ov auto (bf16)", "mmdeploy → ov bf16")
#: Why a row cannot run above the study's scale on its own, beyond the rule above: NNCF's quantization of the
#: int8 rows alone outgrows a 24 GB machine there (``scripts/probe_row_memory.py int8`` shows it).
TOO_LARGE = {INT8: "NNCF's quantization at this size alone outgrows this machine's memory",
             INT8_AUTO: "NNCF's quantization at this size alone outgrows this machine's memory"}
LARGE_MIN_FREE_MB = 6000


def staged_rows(device: str | torch.device, bf16: bool) -> dict[str, Choices]:
    """The staged rows for ``device``: runtimes for backbone, neck and RPN head at each precision they run, and
    the library's own best (``Choices.auto``) in torch and in each runtime. ``bf16``: whether to include bf16
    rows (a CPU without bf16 instructions would only emulate them)."""
    rows = {BASE: STOCK, AA: STOCK}
    low = "bf16" if bf16 else "fp32"
    rows[EAGER_BEST] = Choices.auto(runtime="torch", precision=low)
    rows[COMPILED_BEST] = Choices.auto(runtime="torch", precision=low, compile=True)
    if torch.device(device).type != "cpu":
        return rows
    for rt in (runtimes.OPENVINO, runtimes.ONNXRUNTIME):
        for prec in runtimes.PRECISIONS[rt]:
            if prec == "bf16" and not bf16:
                continue
            rows[f"{runtimes.SHORT[rt]} {prec}"] = STOCK.replace(runtime=rt, precision=prec)
        best = max(runtimes.PRECISIONS[rt], key=lambda p: p == low)  # the lowest precision it runs here
        rows[f"{runtimes.SHORT[rt]} auto ({best})"] = Choices.auto(runtime=rt, precision=best)
    return rows


def deployed_rows(model, image, workdir: str | Path | None = None, *, bf16: bool = True,
                  deploy_cfg: str = "instance-seg_onnxruntime_static") -> tuple[dict[str, Built], dict[str, Any]]:
    """mmdeploy's export of ``model`` for ``image``'s size (once), and one ``Built`` row per runtime and precision
    that runs it. Returns the rows and the export (path, seconds, error). An export that fails turns every
    deployed row into an error row that says why. Without ``workdir`` the export (170 MB for Mask R-CNN) goes to
    a temporary folder removed when the process exits."""
    from ..deploy import DeployedModel, export_end2end

    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="mmdeploy-")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir = Path(workdir)
    try:
        ex = export_end2end(model, load_image(image), workdir / "end2end.onnx", deploy_cfg=deploy_cfg)
        info = {"path": str(ex.path), "export_s": ex.seconds, "error": ""}
    except Exception as e:  # every deployed row becomes an error row saying why; the sweep goes on
        error = RuntimeError(f"mmdeploy export failed: {type(e).__name__}: {e}")
        ex, info = None, {"path": "", "export_s": float("nan"), "error": str(error)}

    def make(rt: str, prec: str):
        if ex is None:
            raise error
        return DeployedModel(ex.path, rt, prec)

    rows = {}
    for rt, prec in (("onnxruntime", "fp32"), ("openvino", "fp32"), *((("openvino", "bf16"),) if bf16 else ())):
        rows[f"{DEPLOYED_PREFIX}{runtimes.SHORT[rt]} {prec}"] = Built(lambda rt=rt, prec=prec: make(rt, prec),
                                                                     STOCK.replace(runtime=rt, precision=prec))
    return rows, info


def first_call_costs(built: Mapping[str, Any], export_s: float = 0.0) -> pd.DataFrame:
    """What a user pays before the first image, per row: export and compile seconds and RSS growth of every
    conversion a staged row made (``StagedPipeline.conversion_costs``), or a deployed row's export (shared by
    the deployed rows) and its graph's loading and compiling (``DeployedModel.load_seconds``)."""
    out = []
    for label, run in built.items():
        if isinstance(run, StagedPipeline):
            costs = run.conversion_costs()
            if costs:
                c = pd.DataFrame(costs)
                out.append({"row": label, "conversions": len(c), "first-call s": float(c["seconds"].sum()),
                            "RSS growth (MiB)": float(c["rss_growth_mb"].sum())})
        elif hasattr(run, "load_seconds"):
            out.append({"row": label, "conversions": 1, "first-call s": export_s + run.load_seconds,
                        "RSS growth (MiB)": float("nan")})
    return pd.DataFrame(out, columns=["row", "conversions", "first-call s", "RSS growth (MiB)"]).set_index("row")


class DeployedPredictor:
    """A deployed graph held against a reference (``stock``), for ``Chapter.equivalence``."""

    def __init__(self, deployed, reference: Reference) -> None:
        self.deployed, self.reference = deployed, reference

    def equivalence_report(self, images: Sequence, min_score: float = 0.0) -> pd.DataFrame:
        rows = []
        for k, image in enumerate(images):
            img = load_image(image)
            start = time.perf_counter()
            test = self.deployed(img)
            rows.append({"image": f"image{k}", "variant": repr(self.deployed),
                         **compare(self.reference.outputs(img).detections, test, min_score=min_score).as_dict(),
                         "seconds": time.perf_counter() - start})
        return pd.DataFrame(rows)


def versus_deployed(rows: pd.DataFrame) -> pd.DataFrame:
    """Per precision, the staged row that pastes full-image masks with the lowest median ``total`` (the deployed
    graphs' output kind; a label, not a verdict) against the deployed row with the lowest median at the same
    precision: the ratio of their totals with its interval and verdict (``stats.ratio_table``, the deployed row
    as the baseline: above 1 the library is faster), held to the A/A floor of ``stock``. One case's profiler rows;
    empty where either side is missing."""
    from .. import stages as S
    from ..stats import aa_floor, ratio_table

    floor = aa_floor(rows, BASE, AA)  # each verdict held to the sweep's noise floor, like every other
    ok = rows[(rows["status"] == "ok") & (rows["stage"] == S.TOTAL)]
    if "masks" in ok:  # equal outputs: the deployed graphs paste full-image masks, so only staged `full` rows
        ok = ok[ok["variant"].str.startswith(DEPLOYED_PREFIX) | (ok["masks"].astype(str) == "full")]
    med = ok.groupby(["variant", "precision"])["ms"].median().reset_index()
    med = med[~med["variant"].isin([AA])]
    out = []
    for prec, g in med.groupby("precision"):
        deployed = g[g["variant"].str.startswith(DEPLOYED_PREFIX)]
        staged = g[~g["variant"].str.startswith(DEPLOYED_PREFIX)]
        if deployed.empty or staged.empty:
            continue
        d, s_ = deployed.loc[deployed["ms"].idxmin(), "variant"], staged.loc[staged["ms"].idxmin(), "variant"]
        r = ratio_table(rows[rows["variant"].isin([d, s_])], d, floor=floor).loc[s_]
        out.append({"precision": prec, "staged (lowest median)": s_, "deployed (lowest median)": d, "ratio": r["ratio"],
                    "lo": r["lo"], "hi": r["hi"], "n": r["n"], "verdict": r["verdict"], "text": r["text"]})
    return pd.DataFrame(out, columns=["precision", "staged (lowest median)", "deployed (lowest median)", "ratio", "lo", "hi", "n",
                                      "verdict", "text"]).set_index("precision")


INT8_CHOICES = STOCK.replace(runtime="openvino", precision="int8")
INT8_AUTO_CHOICES = Choices.auto(runtime="openvino", precision="int8")


def int8_pipeline(model, images: Sequence, device, choices: Choices = INT8_CHOICES) -> StagedPipeline:
    """OpenVINO int8 for the converted parts (NNCF post-training quantization), calibrated on ``images``: what each
    part receives from them in fp32 (``StagedPipeline.calibrate``)."""
    pipe = StagedPipeline(model, choices, device)
    pipe.calibrate(images)
    return pipe


def int8_versus(rows: pd.DataFrame, against: str = "ov bf16", row: str = INT8) -> pd.Series | None:
    """An int8 ``row`` against ``against`` on the converted stages (``CONVERTED``): ratio, interval and verdict,
    held to the A/A floor of ``stock`` on the same stages; None when either row is missing."""
    from ..stats import aa_floor, ratio_table

    ok = rows[rows["status"] == "ok"]
    if not {row, against} <= set(ok["variant"]):
        return None
    stages = [s for s in CONVERTED if s in set(ok["stage"])]
    return ratio_table(ok[ok["variant"].isin([against, row])], against, stages=stages,
                       floor=aa_floor(ok, BASE, AA, stages=stages)).loc[row]


def scored_rows(model, staged: Mapping[str, Choices], deployed: Mapping[str, Built], device) -> dict[str, Any]:
    """Per row, what ``Chapter.accuracy`` scores: the staged rows' pipelines, the int8 rows' calibrated ones, and
    each deployed graph with a key of its own (its numerics are its runtime's)."""
    classes = model.roi_head.bbox_head.num_classes

    def deployed_graph(label: str, b: Built):
        made = b.make()
        return made if isinstance(made, StagedPipeline) else (made, f"deployed|{label}", classes)

    makers: dict[str, Any] = {label: partial(StagedPipeline, model, c, device) for label, c in staged.items()}
    return makers | {label: partial(deployed_graph, label, b) for label, b in deployed.items()}


def run_case(ch, case: str, staged: Mapping[str, Choices], bf16: bool) -> dict[str, Any]:
    """One case of the runtimes chapter, recorded through ``ch`` (a ``book.Chapter``): mmdeploy's export, one
    interleaved sweep of the staged and deployed rows, their first-call costs (table ``07_runtimes_first_call``)
    and their agreement with ``stock`` (``07_runtimes_equivalence``). Returns what the sweep traded (repeats),
    the export, the first-call table and the counted stages' FLOPs (``roofline.stage_flops``)."""
    from .cases import split_case
    from ..optimize import Predictor
    from .words import repeats_sentence

    size, scale = split_case(case)
    runtimes.clear_cache()  # the previous case's compiled graphs are never reused at another shape
    gc.collect()
    samples, model = ch.samples(size), ch.model(scale=scale)
    images = [s.data for s in samples]
    calibration = [s.data for s in ch.calibration_samples(size)]  # train images: never a timed or scored one
    flops = roofline.stage_flops(StagedPipeline(model, device=ch.device), images[0])
    deployed, export = deployed_rows(model, samples[0].data, ch.scratch / case.replace(">", "-"), bf16=bf16)
    if torch.device(ch.device).type == "cpu" and runtimes.available(runtimes.OPENVINO):
        deployed[INT8] = Built(partial(int8_pipeline, model, calibration, ch.device), INT8_CHOICES)
        deployed[INT8_AUTO] = Built(partial(int8_pipeline, model, calibration, ch.device, INT8_AUTO_CHOICES),
                                    INT8_AUTO_CHOICES)
    staged, deployed, left_out = rows_for_case(size, staged, deployed)
    prof = ch.profiler(model, min_free_mb=LARGE_MIN_FREE_MB if left_out else None)
    prof.run({**staged, **deployed}, samples, {"case": case})
    first = first_call_costs(prof.built, export["export_s"]).reset_index().assign(case=case)
    prof.built.clear()  # the agreement check below builds each row again, one at a time
    gc.collect()
    ch.record(f"{ch.name}_first_call", first)
    ref = Reference.of(model, STOCK, ch.device)  # stock runs once for every row's check
    makers = {label: partial(Predictor, model, c, ch.device, reference=ref) for label, c in staged.items()}
    makers |= {label: partial(lambda b: DeployedPredictor(b.make(), ref), b)
               for label, b in deployed.items()}  # the int8 row's make() calibrates its own pipeline
    ch.equivalence(f"{ch.name}_equivalence", makers, images, case=case, min_score=accuracy.CONFIDENT)
    ch.accuracy(f"{ch.name}_accuracy", scored_rows(model, staged, deployed, ch.device), size=size,
                images=ch.params.get("val_images") if case == ch.params["cases"][0] else ch.params.get("val_large_images"),
                case=case)
    traded = repeats_sentence(prof.last_repeats)
    if left_out:
        traded += f"; {left_out_sentence(left_out)}"
    runtimes.clear_cache()
    gc.collect()
    return {"traded": traded, "export": export, "first_call": first.set_index("row"), "left_out": left_out,
            "flops": flops}


def _requests(n) -> str:
    return "" if n is None or pd.isna(n) else f" ({int(n)} requests)"


def findings(rows: pd.DataFrame, cases: Sequence[str], versus: Mapping[str, pd.DataFrame],
             tp: pd.DataFrame, acc: pd.DataFrame) -> dict[str, Any]:
    """07: every row against ``stock`` at the first case, and its accuracy; the staged pipeline against the
    deployed model at equal outputs, with both sides' accuracy; int8 on the converted stages; throughput mode
    against latency mode."""
    from .cases import acc_of
    from .words import Md, accuracy_text, findings_markdown, row_accuracy, table_findings
    from ..stats import ratio_table

    first = ratio_table(rows[rows["case"] == cases[0]], BASE, aa=AA)
    int8 = {k: int8_versus(rows[rows["case"] == cases[0]], *a) for k, a in
            {"rt_int8": ("ov bf16",), "rt_int8_auto": ("ov auto (bf16)", INT8_AUTO)}.items()}

    def word(case: str, row: str) -> str:
        a = acc_of(acc, case)
        return row_accuracy(a.loc[row]) if row in a.index else "not scored"

    scored = acc_of(acc, cases[0])
    return {"rt_findings": Md(table_findings(first, BASE, "end to end")),
            "rt_accuracy": Md(findings_markdown(f"`{row}`: {accuracy_text(scored, row)}"
                                                for row in scored.index if row not in (BASE, AA))),
            "rt_versus": Md(findings_markdown(
                f"at {case}, `{r['staged (lowest median)']}` against `{r['deployed (lowest median)']}` ({p}, each the "
                f"lowest median of its kind, both pasting full-image masks): {r['text']}; accuracy against `stock`: "
                f"{word(case, r['staged (lowest median)'])} and {word(case, r['deployed (lowest median)'])}"
                for case, v in versus.items() for p, r in v.iterrows())
                or "No staged row with full-image masks ran beside a deployed row at the same precision.\n"),
            "rt_throughput": Md(findings_markdown(
                f"`{r['row']}`{_requests(r['requests'])} against `{r['against']}`: {r['text']}"
                for _, r in tp.iterrows())),
            **{k: "not measured" if v is None else v["text"] for k, v in int8.items()}}


def percent_of_peak(table: pd.DataFrame, rows: pd.DataFrame, flops: Mapping[str, float],
                    peaks: Mapping[str, Any]) -> pd.DataFrame:
    """Each row's counted stages (``roofline.COUNTED``) as % of this machine's matrix peak for the dtype they
    compute in (the row's ``precision``: fp32, bf16 or int8), from a ``case_table`` and the case's profiler rows;
    rows without per-stage times (the deployed graphs) are left out."""
    precision = rows.groupby("variant")["precision"].first().reindex(table.index).fillna("fp32")
    return roofline.percent_table(table, flops, peaks, precision.to_dict()).dropna(how="all")


def rows_for_case(size: str, staged: Mapping[str, Any], deployed: Mapping[str, Any],
                  keep: Sequence[str] = LARGE_ROWS) -> tuple[dict, dict, list[str]]:
    """The staged and deployed rows a case of input ``size`` (WxH) runs: all of them up to the study's scale,
    above it only those named in ``keep``; and the labels left out, in order."""
    if not above_study_scale(size):
        return dict(staged), dict(deployed), []
    left_out = [label for label in (*staged, *deployed) if label not in keep]
    return ({k: v for k, v in staged.items() if k in keep}, {k: v for k, v in deployed.items() if k in keep},
            left_out)


def left_out_sentence(left_out: Sequence[str]) -> str:
    """Which rows a large case left out, and why (``TOO_LARGE``, else the rule of ``LARGE_ROWS``)."""
    rule = [label for label in left_out if label not in TOO_LARGE]
    parts = [f"rows left out above {STUDY_SCALE}, where every row's graphs at once outgrow this machine's memory: "
             f"{', '.join(rule)}"] if rule else []
    for why in dict.fromkeys(TOO_LARGE[label] for label in left_out if label in TOO_LARGE):
        parts.append(f"{', '.join(label for label in left_out if TOO_LARGE.get(label) == why)} left out: {why}")
    return "; ".join(parts)


def throughput_rows(onnx_path: str | Path, bf16: bool) -> dict[str, Built]:
    """The deployed graph in OpenVINO compiled for latency (one request in flight) and for throughput (OpenVINO's
    optimal number of requests in flight), at each precision the CPU runs."""
    from ..deploy import DeployedModel

    rows = {}
    for prec in ("fp32", "bf16") if bf16 else ("fp32",):
        for hint in ("LATENCY", "THROUGHPUT"):
            rows[f"{DEPLOYED_PREFIX}ov {prec} {hint.lower()}"] = Built(
                lambda prec=prec, hint=hint: DeployedModel(onnx_path, "openvino", prec, hint=hint),
                STOCK.replace(runtime="openvino", precision=prec))
    first = next(iter(rows))  # the sweep's A/A row: the first latency row once more, its floor
    rows[aa_of(first)] = rows[first]
    return rows


def run_throughput(ch, case: str, export: Mapping[str, Any], bf16: bool, n_stream: int) -> pd.DataFrame:
    """Images per second of ``throughput_rows`` over a stream of ``n_stream`` images at the case's input size
    (the sample photos, repeated to length), interleaved passes, recorded as ``<chapter>_throughput``; each
    throughput row against the latency row of its precision (``stats.ratio_table`` on ms per image)."""
    from ..book import recorder
    from ..deploy import throughput
    from .cases import split_case
    from .words import repeats_sentence
    from ..stats import aa_floor, ratio_table

    if not export.get("path"):
        return pd.DataFrame()
    size, scale = split_case(case)
    samples = ch.samples(size)
    sources = [samples[k % len(samples)].data for k in range(n_stream)]
    prof = ch.profiler(ch.model(scale=scale), recorder=recorder(ch.name, ch.params, f"{ch.name}_throughput"))
    variants = throughput_rows(export["path"], bf16)
    rows = prof.run_stream(variants, sources,
                           lambda run, images: throughput(run, images, warmup=False)["images_per_s"], {"case": case})
    ok = rows[rows["status"] == "ok"]
    first = next(iter(variants))  # the latency row the sweep's A/A row repeats
    aa, ran = aa_of(first), set(ok["variant"])
    floor = aa_floor(ok, first, aa)
    against = {**{v: v.replace("throughput", "latency") for v in variants if v.endswith("throughput")}, aa: first}
    out = []
    for label, base in against.items():
        if not {label, base} <= ran:
            continue
        r = ratio_table(ok[ok["variant"].isin([base, label])], base, aa=label if label == aa else None,
                        floor=None if label == aa else floor).loc[label]
        out.append({"row": label, "against": base, "images/s": float(1e3 / r["median ms"]),
                    "requests": None if label == aa else getattr(prof.built.get(label), "requests", None),
                    "ratio": r["ratio"], "lo": r["lo"], "hi": r["hi"], "n": r["n"], "verdict": r["verdict"],
                    "text": r["text"]})
    out_df = pd.DataFrame(out)
    out_df.attrs["repeats"] = repeats_sentence(prof.last_repeats)
    return out_df
