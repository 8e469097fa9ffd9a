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
# # Reduced precision
#
# The seed ran the model under fp16 on an RTX 3080's TensorCores: its backbone went from 24.87 ms to
# 15.98 ms at 1333x800 (published figures). A CPU's counterpart is bf16 on its matrix engine: AMX tiles on
# Intel Sapphire Rapids, AVX-512 BF16 on AMD Zen 4. This run's CPU has {glue:text}`prec_engine`. The levers,
# each a stage choice of the same pipeline:
#
# - `fp32`, `fp16` (CUDA autocast), `bf16` (autocast on the CPU or CUDA);
# - `channels_last`: the memory layout oneDNN's and cuDNN's fast convolution kernels want;
# - `*-weights`: backbone and neck kept entirely in the reduced dtype, instead of autocast casting around
#   every BatchNorm;
# - BatchNorm folded into the preceding convolution (`foldbn`).
#
# Box decoding, NMS, RoIAlign inputs and mask paste stay fp32 (a naive autocast over the whole model crashes
# in mmcv's NMS on dtype); the tests check those dtype contracts with forward hooks.

# %% tags=["parameters"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
scale = "480x320"
input_size = "480x320"
dets = 50
rpn_proposals = 300
n_images = 1
repeats = 1
warmup = 1
threads = 2

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd

import mmdet_speedup as ms
from mmdet_speedup import book, stages as S

dev, rec = book.start("02_precision", device=device, config=config, checkpoint=checkpoint, scale=scale,
                      input_size=input_size, dets=dets, rpn_proposals=rpn_proposals, n_images=n_images,
                      repeats=repeats, warmup=warmup, threads=threads)
low = "fp16" if dev.type == "cuda" else "bf16"
C = ms.Choices
VARIANTS = {
    "fp32": C(),
    "fp32 +cl": C(channels_last=True),
    low: C(precision=low),
    f"{low} +cl": C(precision=low, channels_last=True),
    f"{low} +cl +foldbn": C(precision=low, channels_last=True, fold_bn=True),
    f"{low}-weights +cl": C(precision=f"{low}-weights", channels_last=True),
    f"{low}-weights +cl +foldbn": C(precision=f"{low}-weights", channels_last=True, fold_bn=True),
}

# %% tags=["nbval-ignore-output"]
model = ms.build_detector(config, checkpoint=checkpoint, device=str(dev),
                          workload=ms.Workload(scale=ms.models.parse_size(scale), dets_per_image=dets,
                                               rpn_proposals=rpn_proposals))
samples = ms.prepare_inputs(book.default_images(n_images), input_size)
prof = ms.Profiler(model, device=str(dev), recorder=rec, repeats=repeats, warmup=warmup)
_ = prof.run(VARIANTS, samples)

# %% [markdown]
# ## Per stage
# Median ms per image; the convolutional stages are the ones precision can touch.

# %%
rows = book.load_rows(rec)
table = ms.stage_table(rows).reindex(list(VARIANTS))
book.show_table(table)
book.stacked_stages(table, title=f"Mask R-CNN R-50-FPN, {input_size} input at {scale}, {dev.type}")
plt.show()

# %% [markdown]
# ## Agreement with fp32
# Same inputs, stock fp32 model as reference: both sides matched by IoU and label, then box IoU, score
# difference and mask IoU over matched pairs, the backbone features' relative error, and the largest
# mask-probability difference before the threshold. Random weights: this is agreement, not mAP.

# %% tags=["nbval-ignore-output"]
reports = []
for label, c in VARIANTS.items():
    try:
        r = ms.Predictor(model, c, dev).equivalence_report([s.data for s in samples])
        r.insert(0, "row", label)
        reports.append(r)
    except Exception as e:  # a failing variant is a row, not a crash
        reports.append(pd.DataFrame([{"row": label, "error": f"{type(e).__name__}: {e}"}]))
book.record_table(rec, "02_precision_equivalence", pd.concat(reports, ignore_index=True))

# %%
eq = book.load_rows(rec, name="02_precision_equivalence")
cols = ["matched_ref", "matched_test", "box_iou_mean", "score_diff_max", "mask_iou_mean", "feature_rel_err",
        "mask_prob_diff_max"]
agreement = eq.groupby("row", sort=False)[cols].mean().reindex(list(VARIANTS))
book.show_table(agreement, 4)

# %% tags=["nbval-ignore-output"]
# Which variant is fastest is a measurement, so this cell's glued values are not compared by nbval.
feat = table[S.BACKBONE] + table.get(S.NECK, 0)
best = feat.drop("fp32").idxmin()
book.glue("prec_low", low)
book.glue("prec_engine", ms.records.matrix_engine(str(dev)))
book.glue("prec_best", best)
book.glue("prec_feat_speedup_best", float(feat["fp32"] / feat[best]))
book.glue("prec_feat_speedup_autocast", float(feat["fp32"] / feat[low]))
book.glue("prec_feat_speedup_cl", float(feat["fp32"] / feat[f"{low} +cl"]))
book.glue("prec_total_speedup_best", float(table.loc["fp32", S.TOTAL] / table.loc[best, S.TOTAL]))
book.glue("prec_best_box_iou", float(agreement.loc[best, "box_iou_mean"]))
book.glue("prec_best_matched", float(min(agreement.loc[best, "matched_ref"], agreement.loc[best, "matched_test"])))
book.glue("prec_best_feat_err", float(agreement.loc[best, "feature_rel_err"]))

# %%
seed = book.seed_figures()
s = seed[(seed["system"] == "mmdet 2.19 (seed)") & (seed["stage"] == "backbone") & seed["variant"].isin(["inference", "inference_fp16"])]
s = s.pivot_table(index="scale", columns="variant", values="value")
s["seed backbone speed-up (published)"] = s["inference"] / s["inference_fp16"]
book.show_table(s, 2)
_ = book.glue("prec_seed_backbone", float(s.loc["1333x800", "seed backbone speed-up (published)"]))

# %% [markdown]
# ## What to take away
#
# - Backbone + neck: autocast {glue:text}`prec_low` alone is {glue:text}`prec_feat_speedup_autocast:.2f`x
#   fp32, with channels_last {glue:text}`prec_feat_speedup_cl:.2f`x, and the best row here
#   (**{glue:text}`prec_best`**) {glue:text}`prec_feat_speedup_best:.2f`x. The seed's fp16 backbone (with
#   the neck inside) was {glue:text}`prec_seed_backbone:.2f`x on its GPU (published figure).
# - On a CPU, reduced precision without channels_last buys little: oneDNN's bf16 convolutions want NHWC,
#   and autocast re-casts around every BatchNorm. Folding BatchNorm and keeping the whole backbone in the
#   reduced dtype remove most of what autocast leaves behind.
# - The whole model gains {glue:text}`prec_total_speedup_best:.2f`x: the RoI heads, NMS and RoIAlign
#   run in fp32 (RoIAlign on 1000 proposals is next in line, see the ladder).
# - Agreement of the best row with fp32: {glue:text}`prec_best_matched:.3f` of detections matched both
#   ways, box IoU {glue:text}`prec_best_box_iou:.4f`, backbone feature relative error
#   {glue:text}`prec_best_feat_err:.4f`. That is agreement with random weights, not mAP: give a real
#   checkpoint and COCO annotations to get AP.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output"]
book.environment_table(rec.run_id)
