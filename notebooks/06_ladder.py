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
# The seed's table, rebuilt: each row adds one optimization to the row above, per stage, with the speed-up
# against `stock` (mmdet 3.3's `test_step`, the baseline for every ratio), the workload each row ran, and its
# agreement with `stock`. Row names are fixed:
#
# | row | what changes |
# |---|---|
# | `legacy` | the mmdet 2.x path the seed started from: CPU float32 normalize, per-class full-size host masks |
# | `stock` | mmdet 3.3 as shipped |
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
equivalence_cases = ["640x480>480x320"]
dets = 50
rpn_proposals = 300
fewer_proposals = 100
n_images = 1
repeats = 1
warmup = 0
threads = 2

# %%
# %matplotlib inline
import matplotlib.pyplot as plt

import mmdet_speedup as ms
from mmdet_speedup import book, ladder, stages as S

ch = book.Chapter("06_ladder", globals())
lad = ladder.Ladder(ch.device, fewer_proposals)  # the rows above, for this device

# %% tags=["nbval-ignore-output"]
for case in cases:
    size, scale = ladder.split_case(case)
    samples, model = ch.samples(size), ch.model(scale=scale)
    fewer = lad.fewer_model(model)
    ch.profiler(model, consumer=True).run(lad.choices, samples, {"case": case})
    ch.profiler(fewer, consumer=True).run({lad.fewer: lad.choices[lad.last_same]}, samples, {"case": case})
    if case in equivalence_cases:
        ch.equivalence("06_ladder_equivalence", lad.predictors(model, fewer), [s.data for s in samples], case=case)

# %% [markdown]
# ## The ladder, per stage
# Median ms per image. `total` is timed around the whole inference, independently of the stages;
# `consumer.rle` is a consumer asking for every mask as COCO RLE, outside `total`.

# %%
tables = lad.tables(ch.rows(), ch.rows("06_ladder_equivalence"), cases)
for case, t in tables.items():
    print(f"case {case} (input > model scale)")
    book.show_table(t, 2)

# %% [markdown]
# Do the stages account for the time? The sum of the top-level stage medians against the independently timed
# `total` (the gap is timer overhead and Python glue between stages):

# %%
book.show_table(lad.per_case(ch.rows(), cases, ms.stage_gap), 1)
print("total per image: median, p10, p90 over repeats, and n")
book.show_table(lad.per_case(ch.rows(), cases, ladder.total_spread), 1)

# %%
_, axes = plt.subplots(len(cases), 1, figsize=(10, 3.6 * len(cases)), squeeze=False)
for ax, (case, t) in zip(axes[:, 0], tables.items()):
    book.stacked_stages(t, ax=ax, title=f"{case} (input > model scale)", stages=S.STAGES + (S.CONSUMER_RLE,))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## How far can it go? Amdahl over the profile
# No row touches decoding (`load`), the two NMS or the untimed glue between stages. If every stage a row
# speeds up took no time at all, the `stock` profile implies this bound; next to it, what the last
# result-preserving row reached.

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
first, final, row = tables[cases[0]], tables[cases[-1]], lad.last_same
legacy = ladder.legacy_vs_stock(tables)
ch.glue(lad_case0=cases[0], lad_case_last=cases[-1], lad_last_row=row, lad_low=lad.low,
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
# - At {glue:text}`lad_case0` the last result-preserving row ({glue:text}`lad_last_row`) is
#   {glue:text}`lad_speedup0:.2f`x faster end to end than `stock` ({glue:text}`lad_speedup0_rle:.2f`x when a
#   consumer RLE-encodes every mask), against an Amdahl bound of {glue:text}`lad_bound0:.1f`x over the
#   stages the rows touch; at {glue:text}`lad_case_last` it is {glue:text}`lad_speedup_last:.2f`x. The
#   seed's ladder gained {glue:text}`lad_seed_total:.2f`x at 1333x800 on an RTX 3080 (published).
# - `legacy` costs {glue:text}`lad_legacy_vs_stock0:.2f`x `stock` here: {glue:text}`lad_legacy_verdict`
#   (all cases: {glue:text}`lad_legacy_range`).
# - Agreement of that row with `stock`: {glue:text}`lad_matched0:.3f` of detections matched, box IoU
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
