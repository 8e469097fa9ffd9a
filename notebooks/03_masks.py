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

# %% tags=["parameters"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
scale = "480x320"
input_sizes = ["320x240", "640x480"]
dets_list = [10, 40]
dets_for_sizes = 40
input_for_dets = "640x480"
rpn_proposals = 300
n_images = 1
repeats = 1
warmup = 0
threads = 2

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

import mmdet_speedup as ms
from mmdet_speedup import book, stages as S
from mmdet_speedup.models import set_workload

dev, rec = book.start("03_masks", device=device, config=config, checkpoint=checkpoint, scale=scale,
                      input_sizes=input_sizes, dets_list=dets_list, dets_for_sizes=dets_for_sizes,
                      input_for_dets=input_for_dets, rpn_proposals=rpn_proposals, n_images=n_images,
                      repeats=repeats, warmup=warmup, threads=threads)
MASKS = {v: v for v in ("full", "legacy", "box", "raw")}
images = book.default_images(n_images)

# %% tags=["nbval-ignore-output"]
model = ms.build_detector(config, checkpoint=checkpoint, device=str(dev),
                          workload=ms.Workload(scale=ms.models.parse_size(scale), dets_per_image=dets_for_sizes,
                                               rpn_proposals=rpn_proposals))
prof = ms.Profiler(model, device=str(dev), recorder=rec, repeats=repeats, warmup=warmup)
for size in input_sizes:
    prof.run_masks(MASKS, ms.prepare_inputs(images, size), extra={"sweep": "size"})
for n in dets_list:
    set_workload(model, dets_per_image=n)
    prof.run_masks(MASKS, ms.prepare_inputs(images, input_for_dets), extra={"sweep": "dets"})

# %%
rows = book.load_rows(rec)
ok = rows[rows["status"] == "ok"]
agg = (ok.groupby(["input_size", "dets_per_image", "variant", "stage"])
       .agg(ms=("ms", "median"), mask_mb=("mask_bytes", lambda b: b.median() / 2**20), dets=("dets_out", "median"))
       .reset_index())
post = agg[agg["stage"] == S.MASK_POSTPROCESS]
rle = agg[agg["stage"] == S.CONSUMER_RLE]
mpix = lambda s: eval(s.replace("x", "*")) / 1e6

fig, axes = plt.subplots(1, 3, figsize=(14, 4))
by_size = post[post["dets_per_image"] == dets_for_sizes].copy()
by_size["megapixels"] = by_size["input_size"].map(mpix)
sns.lineplot(data=by_size, x="megapixels", y="ms", hue="variant", marker="o", ax=axes[0])
axes[0].set(xscale="log", yscale="log", title=f"mask_postprocess vs image size ({dets_for_sizes} dets)",
            ylabel="ms (median)")
by_dets = post[post["input_size"] == input_for_dets]
sns.lineplot(data=by_dets, x="dets", y="ms", hue="variant", marker="o", ax=axes[1])
axes[1].set(xscale="log", yscale="log", title=f"mask_postprocess vs detections ({input_for_dets})", ylabel="ms (median)")
sns.barplot(data=by_size, x="input_size", y="mask_mb", hue="variant", ax=axes[2])
axes[2].set(yscale="log", title="memory held by the results", ylabel="MB")
for ax in axes:
    ax.grid(alpha=0.3, which="both")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The consumer's bill
# `raw` defers the paste; a consumer that wants every mask as COCO RLE pays it then. Median ms per image
# of `mask_postprocess`, of the RLE consumer, and of both together:

# %%
big = input_sizes[-1]
both = (pd.concat([post.assign(part="mask_postprocess"), rle.assign(part="consumer.rle")])
        .query("input_size == @big and dets_per_image == @dets_for_sizes")
        .pivot_table(index="variant", columns="part", values="ms"))
both["together"] = both.sum(axis=1)
both = both.reindex(list(MASKS))
book.show_table(both, 2)

# %%
p = both["mask_postprocess"]
book.glue("mask_big", big)
book.glue("mask_dets", dets_for_sizes)
book.glue("mask_raw_vs_legacy", float(p["legacy"] / p["raw"]))
book.glue("mask_raw_vs_full", float(p["full"] / p["raw"]))
book.glue("mask_box_vs_full", float(p["full"] / p["box"]))
book.glue("mask_raw_rle_vs_full_rle", float(both.loc["full", "together"] / both.loc["raw", "together"]))
mem = by_size[by_size["input_size"] == big].set_index("variant")["mask_mb"]
book.glue("mask_mem_full_mb", float(mem["full"]))
book.glue("mask_mem_raw_mb", float(mem["raw"]))
book.glue("mask_mem_box_mb", float(mem["box"]))
seed = book.seed_figures()
s = seed[(seed["system"] == "mmdet 2.19 (seed)") & (seed["stage"] == "mask post-processing")
         & seed["variant"].isin(["inference_fp16_preprocess", "inference_raw_mask"])]
s = s.pivot_table(index="scale", columns="variant", values="value")
s["seed speed-up (published)"] = s["inference_fp16_preprocess"] / s["inference_raw_mask"]
book.show_table(s, 2)
_ = book.glue("mask_seed_4k", float(s.loc["3840x2304", "seed speed-up (published)"]))

# %% [markdown]
# ## What to take away
#
# - At {glue:text}`mask_big` with {glue:text}`mask_dets` detections, `raw` post-processing is
#   {glue:text}`mask_raw_vs_legacy:.0f`x faster than `legacy` and {glue:text}`mask_raw_vs_full:.0f`x faster
#   than `full` (the seed saw {glue:text}`mask_seed_4k:.0f`x on its GPU, published figure); `box` is
#   {glue:text}`mask_box_vs_full:.1f`x faster than `full`.
# - Memory follows the same rule: full masks hold {glue:text}`mask_mem_full_mb:.0f` MB per image here,
#   box-local ones {glue:text}`mask_mem_box_mb:.1f` MB, raw ones {glue:text}`mask_mem_raw_mb:.2f` MB.
# - `raw` moves the cost, it does not remove it: a consumer that RLE-encodes every instance pays the paste
#   later. With that consumer, `full` + RLE costs {glue:text}`mask_raw_rle_vs_full_rle:.2f`x what `raw` +
#   RLE costs (the lazy masks encode RLE from the box-local paste and never build an image-sized array).
#   Ask what your consumer needs: boxes and scores only (tracking, counting) never pay the paste at all.
# - Full-image paste scales with image area x detections; box-local paste with box area; raw with neither.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output"]
book.environment_table(rec.run_id)
