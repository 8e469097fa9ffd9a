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
# The seed's table, rebuilt: each rung adds one optimization to the best path below it, per stage, with the
# speed-up against `stock` (mmdet 3.3's `test_step`, the baseline for every ratio) and its 95% interval, the
# workload each row ran, and its agreement with `stock`. A rung is kept only if a short pilot pass finds it
# faster than the rung it was built on; a rung that is slower or shows no measurable difference stays in the
# table, marked, and the rungs above build on the better of the two. Row names are fixed:
#
# | row | what changes |
# |---|---|
# | `legacy` | the mmdet 2.x path the seed started from: CPU float32 normalize, per-class full-size host masks |
# | `stock` | mmdet 3.3 as shipped |
# | `stock (A/A)` | `stock` again, in the same sweep: its interval is the noise floor every verdict is held to |
# | `+precision` | fp16 (GPU) or bf16 (CPU) autocast with channels_last |
# | `+auto preprocess` | the fastest pre-processing path for the device |
# | `+raw masks` | 28x28 probabilities and boxes, pasted lazily; the RLE consumer column shows what a consumer pays |
# | `+torchvision RoIAlign` | torchvision's RoIAlign kernel in the RoI extractors (CPU; same output) |
# | `+threaded RoIAlign` | the same kernel over interleaved slices of the RoIs, one per thread (CPU; same output) |
# | `+fold BN` | BatchNorm folded into the convolutions |
# | `+bf16 weights` / `+fp16 weights` | backbone and neck kept entirely in the reduced dtype |
# | `+compile` | backbone and neck through TorchInductor (fused convolution, add and ReLU; compiled on warm-up) |
# | `+300 proposals` | **changes results**: the RPN keeps 300 proposals instead of 1000 |
#
# Three cases: a 1333x800 input at 1333x800, a 3840x2304 input resized to 1333x800 (the usual deployment),
# and the seed's case of running the model at 3840x2304.
#
# `+precision` names its precision instead of asking for "auto": on this run {glue:text}`lad_low`, on
# {glue:text}`lad_engine`. The row is measured even where the hardware lacks it (`Choices.auto()` would then
# keep fp32), so on such a machine the rows from `+precision` down pay for emulation.

# %% tags=["parameters"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
cases = ["640x480>480x320"]
pilot_repeats = 3
dets = 50
rpn_proposals = 300
fewer_proposals = 100
n_images = 1
repeats = 3
warmup = 0
threads = 2

# %%
# %matplotlib inline
import matplotlib.pyplot as plt

import mmdet_speedup as ms
from mmdet_speedup import book, ladder, stages as S, stats

ch = book.Chapter("06_ladder", globals())
lad = ladder.Ladder(ch.device, fewer_proposals)  # the rows above, for this device

# %% tags=["nbval-ignore-output"]
for case in cases:
    size, scale = ladder.split_case(case)
    samples, model = ch.samples(size), ch.model(scale=scale)
    if lad.climbed is None:  # the path is decided once, on the first case, by a pilot that records nothing
        lad.climb(ladder.pilot_with(ms.Profiler(model, device=ch.device, repeats=pilot_repeats), samples))
    fewer = lad.fewer_model(model)
    ch.profiler(model, consumer=True).run(lad.choices, samples, {"case": case})
    ch.profiler(fewer, consumer=True).run({lad.fewer: lad.choices[lad.path]}, samples, {"case": case})
    ch.equivalence("06_ladder_equivalence", lad.predictors(model, fewer), [s.data for s in samples], case=case)

# %% [markdown]
# ## The ladder, per stage
# Median ms per image. `total` is timed around the whole inference, independently of the stages;
# `consumer.rle` is a consumer asking for every mask as COCO RLE, outside `total`. `lo` and `hi` bound the
# speed-up's 95% interval over `n` repeats (bootstrap, paired by repeat); a verdict inside the A/A row's
# interval is "no measurable difference". A row *preserves results* when at least 99% of detections match
# both ways, matched box IoU averages at least 0.99 and mask IoU at least 0.95; *exact* when bit-identical;
# otherwise it *changes results*. Under each table, every rung against the rung it was built on.

# %% tags=["nbval-ignore-output"]
rows = ch.rows()
tables = lad.tables(rows, ch.rows("06_ladder_equivalence"), cases)
for case, t in tables.items():
    print(f"case {case} (input > model scale)")
    book.show_table(t, 2)
    book.show_table(lad.verdicts(rows[rows["case"] == case]))

# %% [markdown]
# Do the stages account for the time? The sum of the top-level stage medians against the independently timed
# `total` (the gap is timer overhead and Python glue between stages):

# %% tags=["nbval-ignore-output"]
book.show_table(lad.per_case(rows, cases, ms.stage_gap), 1)
print("total per image: median, p10, p90 over repeats, and n")
book.show_table(lad.per_case(rows, cases, ladder.total_spread), 1)

# %%
_, axes = plt.subplots(len(cases), 1, figsize=(10, 3.6 * len(cases)), squeeze=False)
for ax, (case, t) in zip(axes[:, 0], tables.items()):
    book.stacked_stages(t, ax=ax, title=f"{case} (input > model scale)", stages=S.STAGES + (S.CONSUMER_RLE,))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## How far can it go? Amdahl over the profile
# No row touches decoding (`load`), the two NMS or the untimed glue between stages. If every stage a row
# speeds up took no time at all, the `stock` profile implies this bound; next to it, what the path reached.

# %%
bounds = lad.bounds(tables)
book.show_table(bounds, 2)

# %% [markdown]
# ## Next to the seed
# The seed's RTX 3080 table (published) through the stage map in `data/reference/stage_map.csv` (its
# `pre-processing` includes decoding, its `backbone` the neck, its `roi_head` the mask stages): speed-up of
# each stage from the first row to the last, theirs and ours (ours from `legacy`, like theirs).

# %%
book.show_table(lad.seed_comparison(tables), 2)

# %% tags=["nbval-ignore-output"]
first, final, row = tables[cases[0]], tables[cases[-1]], lad.path
legacy, first_rows = ladder.legacy_vs_stock(tables), rows[rows["case"] == cases[0]]
stats.glue_markdown("lad_findings", lad.findings(first_rows))
ch.glue(lad_path_verdict=lad.verdicts(first_rows).loc[row, "vs stock"] if row != "stock" else "the baseline itself",
        lad_path_results=first.loc[row, "results"] or "not checked", lad_case0=cases[0], lad_case_last=cases[-1], lad_last_row=row, lad_low=lad.low,
        lad_engine=ms.environment.matrix_engine(str(ch.device)), lad_speedup0=first.loc[row, "speed-up"],
        lad_speedup_last=final.loc[row, "speed-up"], lad_speedup0_rle=first.loc[row, "speed-up with rle"],
        lad_bound0=bounds.loc[cases[0], "Amdahl bound"], lad_fewer0=first.loc[lad.fewer, "speed-up"],
        lad_box_iou0=first.loc[row, "box_iou_mean"], lad_matched0=first.loc[row, "matched_ref"],
        lad_fewer_matched0=first.loc[lad.fewer, "matched_ref"], lad_biggest_left=ladder.biggest_stage(first.loc[row]),
        lad_legacy_vs_stock0=legacy.iloc[0], lad_legacy_verdict=ladder.legacy_verdict(legacy.iloc[0]),
        lad_legacy_range=ladder.ratios_in_words(legacy), lad_seed_total=ladder.seed_speedups().loc["1333x800", "total"])

# %% [markdown]
# ## What to take away
#
# - At {glue:text}`lad_case0` the path the climb kept ends at **{glue:text}`lad_last_row`**: against `stock`
#   end to end it is {glue:text}`lad_path_verdict` ({glue:text}`lad_speedup0_rle:.2f`x when a consumer
#   RLE-encodes every mask); its agreement with `stock`: {glue:text}`lad_path_results`. The Amdahl bound
#   over the stages the rows touch is {glue:text}`lad_bound0:.1f`x; at {glue:text}`lad_case_last` it is {glue:text}`lad_speedup_last:.2f`x. The
#   seed's ladder gained {glue:text}`lad_seed_total:.2f`x at 1333x800 on an RTX 3080 (published).
# - `legacy` costs {glue:text}`lad_legacy_vs_stock0:.2f`x `stock` here: {glue:text}`lad_legacy_verdict`
#   (all cases: {glue:text}`lad_legacy_range`).
# - The climb at {glue:text}`lad_case0`, rung by rung:
#
# {glue:md}`lad_findings`
#
# - Agreement of the path with `stock`: {glue:text}`lad_matched0:.3f` of detections matched, box IoU
#   {glue:text}`lad_box_iou0:.4f` (random weights: agreement, not mAP).
# - What is left is mostly **{glue:text}`lad_biggest_left`**. Cutting proposals to the number the row
#   name says buys {glue:text}`lad_fewer0:.2f`x in total but changes results (only
#   {glue:text}`lad_fewer_matched0:.2f` of `stock`'s detections survive with these weights): a recall
#   trade-off to be measured with a real checkpoint, not a free lunch.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output"]
ch.end()
