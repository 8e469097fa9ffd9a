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
# # Mask post-processing: full-image paste versus raw or box-local masks
#
# **In short** (generated from this run's rows; the method follows):
#
# {glue:md}`mask_headline`

# %% [markdown] tags=["method"]
# Mask R-CNN's mask head predicts a 28x28 probability map per detection (14x14 on C4 models). Turning it
# into an image-sized binary mask ("paste") costs time and memory proportional to *image area times
# detections*: the seed measured 15.7 ms at 1333x800 and 173.7 ms at 3840x2304 on an RTX 3080, and
# replacing it with raw masks brought that to 1.7 and 3.0 ms (published figures). The variants, all from the
# same mask logits:
#
# - `full`: mmdet 3.3's own `FCNMaskHead` paste, unchanged (on the CPU mmdet pastes box-local into an
#   N x H x W bool tensor; on CUDA full-image `grid_sample` in chunks);
# - `legacy`: mmdet 2.x's output, per class a list of full-size host arrays;
# - `box`: each mask pasted only inside its box, kept with its offset;
# - `raw`: the probabilities and boxes; paste later, lazily (`paste(i)`, `to_full()`, `to_rle()`).
#
# `raw` is not allowed to hide its cost: a consumer that asks for the COCO RLE of every instance is timed
# too (`consumer.rle`). Only `mask_postprocess` is timed here, on logits captured once per case.
#
# The workload: the trained model on val images, with the box head's score threshold at `score_thr` (0 here,
# against the config's 0.05) so that every image fills the detections cap the sweep sets (`dets`), as a model
# on a crowded image would. No variant changes a number: pasted back, `box` and `raw` equal `full` (the
# tests check it), so every variant has `full`'s accuracy, and the ladder scores `+raw masks` beside its
# speed.

# %% tags=["parameters", "hide-cell"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
scale = "480x320"
input_sizes = ["320x240", "640x480"]
dets_list = [10, 40]
dets_for_sizes = 40
input_for_dets = "640x480"
rpn_proposals = 300
score_thr = 0.0
n_images = 1
repeats = 1
warmup = 0
threads = 2

# %% tags=["hide-cell"]
# %matplotlib inline
import matplotlib.pyplot as plt

from mmdet_speedup import book, masks, models
from mmdet_speedup.study import masks as chapter, words
from mmdet_speedup.stats import aa_of

ch = book.Chapter("03_masks", globals())
AA = aa_of("full")  # `full` again in the same sweep: its interval is the noise floor
MASKS = {**{v: v for v in masks.MASK_VARIANTS}, AA: "full"}

# %% tags=["nbval-ignore-output", "hide-cell"]
prof = ch.profiler(ch.model(dets=dets_for_sizes))
for size in input_sizes:
    prof.run_masks(MASKS, ch.samples(size), extra={"sweep": "size"})
for n in dets_list:
    models.set_workload(prof.model, dets_per_image=n)
    prof.run_masks(MASKS, ch.samples(input_for_dets), extra={"sweep": "dets"})

# %% [markdown]
# The rows, summarized by `masks.sweep_summary` per sweep (the sizes sweep, and the detections sweep for the
# middle chart): medians per input size, detections and variant (over images and repeats) of each stage's ms, of the MiB the results hold (their `nbytes()`) and of the detections out.
# Below, `mask_postprocess` against image area and against detections, and the memory held against image area
# (`full` and `legacy` both hold N x H x W booleans: their memory lines coincide).

# %% tags=["hide-input"]
summary = chapter.sweep_summary(ch.rows().query("variant != @AA and sweep == 'size'"))
by_dets = chapter.sweep_summary(ch.rows().query("variant != @AA and sweep == 'dets'"))
by_size = summary[summary["dets_per_image"] == dets_for_sizes]
_, axes = plt.subplots(1, 3, figsize=(14, 4), layout="tight")
book.scaling_chart(by_size, "megapixels", "mask_postprocess", "variant", axes[0], ylabel="ms (median)",
                   title=f"mask_postprocess vs image size ({dets_for_sizes} dets)")
book.scaling_chart(by_dets[by_dets["input_size"] == input_for_dets], "dets", "mask_postprocess", "variant", axes[1],
                   title=f"mask_postprocess vs detections ({input_for_dets})", ylabel="ms (median)")
_ = book.scaling_chart(by_size, "megapixels", "MiB held", "variant", axes[2], title="memory held by the results")

# %% [markdown]
# ## The consumer's bill
# `raw` defers the paste; a consumer that wants every mask as COCO RLE pays it then. Median ms per image
# of `mask_postprocess`, of the RLE consumer, and of both together:

# %% tags=["hide-input"]
big = input_sizes[-1]
book.show_table(chapter.consumer_bill(summary, big, dets_for_sizes), 2)

# %% tags=["remove-cell"]
seed = ch.seed_table("mask post-processing", "inference_fp16_preprocess", "inference_raw_mask")
words.glue_all(chapter.sentences(ch.rows(), big))
ch.glue(mask_big=big, mask_dets=dets_for_sizes, mask_seed_4k=seed.loc["3840x2304", "seed speed-up (published)"],
        **{f"mask_{k}": v for k, v in chapter.findings(summary, big, dets_for_sizes).items() if k.startswith("mem")})

# %% [markdown]
# ## What to take away
#
# At {glue:text}`mask_big` with {glue:text}`mask_dets` detections, with intervals over repeats (with fewer
# than 3 repeats there is no verdict), each verdict held to the A/A row's interval (`full` profiled a
# second time in the same sweep; the last line):
#
# {glue:md}`mask_findings`
#
# - The seed measured {glue:text}`mask_seed_4k:.0f`x for raw masks against mmdet 2.x's paste at 3840x2304 on
#   its GPU (published figure; its baseline is our `legacy`).
# - Memory the results hold per image here: full masks {glue:text}`mask_mem_full_mb:.0f` MiB, box-local ones
#   {glue:text}`mask_mem_box_mb:.1f` MiB, raw ones {glue:text}`mask_mem_raw_mb:.2f` MiB.
# - `raw` moves the cost of the paste to whoever asks for it: the RLE row above is that bill (the lazy masks
#   encode RLE from the box-local paste and never build an image-sized array). A consumer that needs boxes
#   and scores only (tracking, counting) never pays it.
# - By construction, a full-image paste writes H x W pixels per detection, a box-local paste its box's area,
#   raw masks neither; the charts show how each grows with image size and detections here.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output", "hide-input"]
ch.end()
