# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The end-to-end ladder
#
# **In short** (generated from this run's rows; the method follows):
#
# {glue:md}`lad_headline`

# %% [markdown] tags=["method"]
# The seed's table, rebuilt: each rung adds one optimization to the best path below it, per stage, with the
# speed-up against `stock` (mmdet 3.3's `test_step`, the baseline for every ratio) and its interval, the
# workload each row ran, and its accuracy against `stock`. A rung is kept only if a pilot finds it faster than
# the rung it was built on by the verdict rule of the method page, held to the pilots' A/A floor (`stock` run twice
# in the first pilot, the floor every later pilot is held to as well); a rung that
# is not stays in the table, marked, and the rungs above build on the rung below it. Each pilot is a short
# interleaved sweep of its own (between `pilot_repeats` and `pilot_max_repeats` passes), recorded in the rows
# (`sweep` = `pilot <rung>`) and shown below; the path is read from those rows. Row names are fixed:
#
# | row | what changes |
# |---|---|
# | `legacy` | the mmdet 2.x path the seed started from: CPU float32 normalize, per-class full-size host masks |
# | `stock` | mmdet 3.3 as shipped |
# | `stock (A/A)` | `stock` again, in the same sweep: its interval is the noise floor every verdict is held to |
# | `+precision` | fp16 (GPU) or bf16 (CPU) autocast with channels_last |
# | `+auto preprocess` | the pre-processing picker `auto` (method page: per input shape, timed on the machine); `preprocess ran` shows its pick |
# | `+raw masks` | 28x28 probabilities and boxes, pasted lazily; the RLE consumer column shows what a consumer pays |
# | `+torchvision RoIAlign` | torchvision's RoIAlign kernel in the RoI extractors (CPU; same output) |
# | `+threaded RoIAlign` | the same kernel over interleaved slices of the RoIs, one per thread (CPU; same output) |
# | `+fold BN` | BatchNorm folded into the convolutions |
# | `+bf16 weights` / `+fp16 weights` | backbone and neck kept entirely in the reduced dtype |
# | `+compile` | backbone and neck through TorchInductor (fused convolution, add and ReLU; compiled on warm-up) |
# | `+OpenVINO` | CPU: backbone, neck, RPN head and the RoI heads' convolutions and linears in OpenVINO at the study's precision (chapter 07); the torch-only levers (channels_last, compile, bf16 weights) go; the `runtime` column says where each row ran |
# | `+N proposals` | **changes results** (N is the `fewer_proposals` parameter): the path's choices on a model whose RPN keeps fewer proposals, in a sweep of its own (compared unpaired) |
#
# The cases are the `cases` parameter, each `<input size>><model scale>`: the image's size, then the size the
# model's test pipeline resizes it to (`3840x2304>1333x800` is a 3840x2304 image resized to 1333x800). The study
# runs, at study size, a 1333x800 input at 1333x800 and the seed's case of running the model at 3840x2304. Up to 1333x800 every row gets exactly `repeats` interleaved
# passes; above it at least 3, fewer than `repeats` only where every interval is already narrow or the sweep
# reaches `sweep_budget_s` (what each case got: {glue:text}`lad_repeats`).
#
# `+precision` names its precision instead of asking for "auto": on this run {glue:text}`lad_low`, on
# {glue:text}`lad_engine`. The row is measured even where the hardware lacks it (`Choices.auto()` would then
# keep fp32), so on such a machine the rows from `+precision` down pay for emulation.

# %% tags=["parameters", "hide-cell"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
cases = ["640x480>480x320"]
pilot_repeats = 3
pilot_max_repeats = 3
dets = 50
rpn_proposals = 300
fewer_proposals = 100
n_images = 1
val_images = 4
repeats = 3
sweep_budget_s = None
val_large_images = 2
warmup = 0
threads = 2

# %% tags=["hide-cell"]
# %matplotlib inline
import pandas as pd

import mmdet_speedup as ms
from mmdet_speedup import book, roofline, stages as S, stats
from mmdet_speedup.study import cases as case_tables, ladder, words

ch = book.Chapter("06_ladder", globals())
lad = ladder.Ladder(ch.device, fewer_proposals)  # the rows above, for this device
traded, built = {}, {}

# %% tags=["nbval-ignore-output", "hide-cell"]
for case in cases:
    size, scale = ladder.split_case(case)
    samples, model = ch.samples(size), ch.model(scale=scale)
    if lad.climbed is None:  # the path is decided once, on the first case, by a pilot whose rows are recorded
        pilot = ch.profiler(model, repeats=ms.Repeats(pilot_repeats, pilot_max_repeats))
        lad.climb(ladder.pilot_with(pilot, samples, {"case": case}))
    fewer = lad.fewer_model(model)
    prof = ch.profiler(model, consumer=True)
    prof.run(lad.choices, samples, {"case": case})
    traded[case], built[case] = words.repeats_sentence(prof.last_repeats), (model, samples[0].data)
    ch.profiler(fewer, consumer=True).run({lad.fewer: lad.choices[lad.path]}, samples, {"case": case})
    checked = lad.predictors(model, fewer, every_row=case == cases[0])
    ch.equivalence("06_ladder_equivalence", checked, [s.data for s in samples], case=case,
                   min_score=ms.accuracy.CONFIDENT)
    ch.accuracy("06_ladder_accuracy", lad.pipelines(model, fewer, every_row=case == cases[0]), size=size,
                images=val_images if case == cases[0] else val_large_images, case=case)

# %% [markdown] tags=["method"]
# ## The ladder, per stage
# Median ms per image. `total` is timed around the whole inference, independently of the stages;
# `consumer.rle` is a consumer asking for every mask as COCO RLE, outside `total`. `speed-up` is the ratio
# against `stock` whose interval `lo`-`hi` (over `n` repeats: a 95% bootstrap interval from 5 repeats, the range
# of the per-repeat ratios below that) the verdict is read from, by the method page's rule.
#
# `accuracy` is the method page's accuracy rule on `Δ box AP` and `Δ mask AP`: each row's COCO AP minus
# `stock`'s on the same val images of the case's size ({glue:text}`lad_scored`), with a paired bootstrap
# interval over images, one untimed pass per distinct numerics (rows whose outputs are equal by construction
# share one). The first case scores every row; the others score `stock`, the path and the fewer-proposals row
# (empty where a row was not scored). `results` is the agreement diagnostic on the timed images, over the
# detections with score ≥ 0.3: *exact* when bit-identical, *preserves results* when at least 99% of them
# match both ways, matched box IoU averages at least 0.99 and mask IoU at least 0.95, else *changes results*.
# Under each table, every rung against the rung it was built on.

# %% tags=["nbval-ignore-output", "hide-input"]
rows = ch.rows()
book.show_table(lad.climbed.decisions[["built on", "pilot", "kept"]], full="The pilot's recorded passes")
accuracy = ch.rows("06_ladder_accuracy")
tables = lad.tables(ladder.main_rows(rows), ch.rows("06_ladder_equivalence"), cases, accuracy)
for case, t in tables.items():
    print(f"case {case} (input > model scale)")
    book.show_table(t, 2, columns=["runtime", "preprocess ran", S.TOTAL, "speed-up", "lo", "hi", "verdict", "Δ box AP",
                                   "accuracy"], full="Per stage, workload, accuracy, agreement")
    book.show_table(lad.verdicts(rows[rows["case"] == case]), columns=["built on", "vs the rung below", "kept"], full="Against stock, and the pilot")

# %% [markdown]
# Do the stages account for the time? The sum of the top-level stage medians against the independently timed
# `total` (the gap is timer overhead and Python glue between stages; a sum of per-stage medians need not equal
# the median total, so a small negative gap is possible):

# %% tags=["nbval-ignore-output", "hide-input"]
book.show_table(lad.per_case(ladder.main_rows(rows), cases, ms.stage_gap), 1)
print("total per image: median, p10, p90 over repeats, and n")
book.show_table(lad.per_case(ladder.main_rows(rows), cases, case_tables.total_spread), 1)

# %% tags=["hide-input"]
vs_stock = {case: stats.ratio_table(ladder.main_rows(rows[rows["case"] == case]), "stock", aa=ladder.AA)
            for case in tables}
_ = book.profile_figure({case: (t, vs_stock[case]) for case, t in tables.items()}, ladder.AA,
                        S.STAGES + (S.CONSUMER_RLE,), "against stock")

# %% [markdown] tags=["method"]
# ## How far can it go?
# Two bounds per stage of the path, at each case, from this run's rows only: (a) the least median cost any row of
# this case's sweep measured for the stage, among `stock` and the rows that keep accuracy by the rule (or give
# exactly stock's outputs) at the study's workload (`best row` names it; the two pre-processing halves come from
# one row); (b) the roofline floor, the larger of the stage's counted FLOPs over this machine's peak for the path's
# dtype (the highest of a matrix multiply and a convolution, each timed in this run) and the bytes it must move
# over the measured copy bandwidth (`roofline.stage_bytes`; FLOPs are
# counted for backbone, neck, RPN head and the RoI heads). `% of roof` is the floor over the path's time; where a
# measured row reaches or beats a floor (`beaten`), the peak is not what those kernels reach, and bound (b) is
# withheld (NaN). The speed-up bounds sum the stages on both sides.

# %% tags=["nbval-ignore-output", "hide-input"]
peaks = roofline.measure_peaks(ch.device.type)
ch.record_environment(roofline_peaks=peaks)
stage_bounds, bound_speedups = {}, {}
for case, (model, image) in built.items():
    stage_bounds[case] = lad.stage_bounds(model, image, tables[case], peaks)
    bound_speedups[case] = roofline.bound_speedups(stage_bounds[case])
    print(f"case {case}: path {lad.path}")
    book.show_table(stage_bounds[case], 1)
book.show_table(pd.DataFrame(bound_speedups).T, 2)

# %% [markdown] tags=["method"]
# ## Next to the seed
# The seed's RTX 3080 table (published) through the stage map in `data/reference/stage_map.csv` (its
# `pre-processing` includes decoding, its `backbone` the neck, its `roi_head` the mask stages): speed-up of
# each stage from the first row to the last, theirs and ours (ours from `legacy`, like theirs).

# %% tags=["hide-input"]
seed_rows = lad.seed_comparison(tables)
if seed_rows.empty:
    print("No case of this run is one the seed published (1333x800>1333x800, 3840x2304>3840x2304).")
else:
    book.show_table(seed_rows.set_index(["case", "seed stage"]), 2, columns=list(ladder.SEED_COLUMNS))

# %% tags=["nbval-ignore-output", "remove-cell"]
words.glue_all(ladder.findings(lad, rows, tables, stage_bounds, traded, accuracy))
ch.glue(lad_scored="; ".join(f"{c}: {int(n)} images" for c, n in accuracy.groupby("case")["images"].max().items()))
book.glue("lad_chart", book.ratio_figure(vs_stock, ladder.AA, marks={c: t["accuracy"].to_dict() for c, t in tables.items()}))
ch.glue(lad_low=lad.low, lad_engine=ms.environment.matrix_engine(str(ch.device)))

# %% [markdown]
# ## What to take away
#
# The path the climb kept, per case, held to the A/A floor by the verdict rule:
#
# {glue:md}`lad_headline`
#
# The climb at the first case, rung by rung, against the rung each was built on:
#
# {glue:md}`lad_findings`
#
# Where the path's time goes, `legacy` against `stock`, and the proposal cut (a workload change, reported apart
# from the path):
#
# {glue:md}`lad_more`

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output", "hide-input"]
ch.end()
