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
# **In short** (generated from this run's rows; the method follows):
#
# {glue:md}`prec_headline`

# %% [markdown] tags=["method"]
# The seed ran the model under fp16 on an RTX 3080's TensorCores: its backbone went from 24.87 ms to
# 15.98 ms at 1333x800 (published figures). A CPU's counterpart is bf16 on its matrix engine: AMX tiles on
# Intel Sapphire Rapids, AVX-512 BF16 on AMD Zen 4. This run's hardware has {glue:text}`prec_engine`. The
# chapter names {glue:text}`prec_low` instead of asking for "auto" (which keeps fp32 on a CPU without bf16
# instructions), so it is measured even where the hardware lacks it. The levers, each a stage choice of the
# same pipeline:
#
# - `fp32`, `fp16` (CUDA autocast), `bf16` (autocast on the CPU or CUDA);
# - `channels_last` (`+cl` in a row's name): the memory layout oneDNN's and cuDNN's fast convolution kernels
#   want;
# - `*-weights`: backbone and neck kept entirely in the reduced dtype, instead of autocast casting around
#   every BatchNorm;
# - BatchNorm folded into the preceding convolution (`+foldbn` in a row's name).
#
# Box decoding, NMS, RoIAlign inputs and mask paste stay fp32 (a naive autocast over the whole model crashes
# in mmcv's NMS on dtype); the tests check those dtype contracts with forward hooks.

# %% tags=["parameters", "hide-cell"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
scale = "480x320"
input_size = "480x320"
dets = 50
rpn_proposals = 300
n_images = 1
val_images = 4
repeats = 3
warmup = 1
threads = 2

# %% tags=["hide-cell"]
# %matplotlib inline
from functools import partial

import mmdet_speedup as ms
from mmdet_speedup import book, roofline, stages as S, stats
from mmdet_speedup.study import precision, words

ch = book.Chapter("02_precision", globals())
low = ms.precision.studied(ch.device)  # named, not "auto": studied even where the hardware lacks it
C, cl = ms.Choices, partial(ms.Choices, channels_last=True)
VARIANTS = {"fp32": C(), "fp32 (A/A)": C(), "fp32 +cl": cl(), low: C(precision=low), f"{low} +cl": cl(precision=low),
            f"{low} +cl +foldbn": cl(precision=low, fold_bn=True), f"{low}-weights +cl": cl(precision=f"{low}-weights"),
            f"{low}-weights +cl +foldbn": cl(precision=f"{low}-weights", fold_bn=True)}

# %% tags=["nbval-ignore-output", "hide-cell"]
model, samples = ch.model(), ch.samples(input_size)
prof = ch.profiler(model)
_ = prof.run(VARIANTS, samples)
ch.glue(prec_repeats=words.repeats_sentence(prof.last_repeats))
acc = ch.accuracy("02_precision_accuracy", {label: partial(ms.StagedPipeline, model, c, ch.device)
                                            for label, c in VARIANTS.items()}, reference="fp32", size=input_size)

# %% [markdown]
# ## Per stage
# Median ms per image over {glue:text}`prec_repeats`; the convolutional stages are the ones precision can touch.

# %% tags=["nbval-ignore-output", "hide-input"]
table = ms.stage_table(ch.rows()).reindex(list(VARIANTS))
book.show_table(table, columns=[S.BACKBONE, S.NECK, S.RPN, S.ROI_BBOX, S.ROI_MASK, S.TOTAL], full="Every stage")
ratios = stats.ratio_table(ch.rows(), "fp32", stages=(S.BACKBONE, S.NECK), aa="fp32 (A/A)")
book.show_table(ratios.drop(columns="text").assign(accuracy=words.accuracy_of(acc, "fp32")), 2)
_ = book.profile_figure({f"{input_size} at {scale}, {ch.device.type}": (table, ratios)}, aa="fp32 (A/A)",
                        what="of backbone + neck against fp32")

# %% [markdown] tags=["method"]
# `fp32 (A/A)` is `fp32` run a second time in the same sweep: the interval of its ratio is this run's noise
# floor, which every verdict must clear (the method page's rule). The second table gives each row's backbone +
# neck speed-up over `fp32` with its interval (paired by repeat) and verdict, and its accuracy against `fp32`
# by the method page's accuracy rule (the section on accuracy below shows the AP behind it).
#
# ## How far from the machine's limit
# FLOPs counted for this model and input (`torch.utils.flop_counter`: backbone, neck, RPN head), over the
# matrix-multiply peak of the dtype each row computes in, measured on this machine by a micro-benchmark and
# recorded in the run's environment record.

# %% tags=["nbval-ignore-output", "hide-input"]
peaks = roofline.measure_peaks(ch.device.type)
ch.record_environment(roofline_peaks=peaks)
flops = roofline.stage_flops(ms.StagedPipeline(model, device=ch.device), samples[0].data)
print("GFLOP per stage:", ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()), "| peak GFLOP/s:",
      ", ".join(f"{d} {roofline.peak_for(peaks, d, 'conv'):.0f}" for d in peaks["matmul_gflops"]))
book.show_table(roofline.percent_table(table, flops, peaks, {v: c.precision for v, c in VARIANTS.items()}), 1)

# %% [markdown] tags=["method"]
# ## Accuracy against fp32
# Each row's COCO AP on the first {glue:text}`prec_val_n` images of the val split (the trained model's held-out
# images), scored by one untimed pass per distinct numerics (rows whose outputs are equal by construction share
# one), against `fp32`'s pass on the same images:

# %% tags=["nbval-ignore-output", "hide-input"]
book.show_table(words.accuracy_table(acc, "fp32"), 3)

# %% [markdown]
# {glue:text}`prec_acc_rule`

# %% [markdown] tags=["method"]
# ## Agreement with fp32
# A diagnostic beside AP, on the timed images: the stock fp32 model as reference, both sides matched by IoU and
# label over the detections with score ≥ 0.3, then box IoU, score difference and mask IoU over matched
# pairs, the backbone features' relative error, and the largest mask-probability difference before the
# threshold. A variant that fails to build or run is an error row, and the others go on.

# %% tags=["nbval-ignore-output", "hide-cell"]
eq = ch.equivalence("02_precision_equivalence", {label: partial(ms.Predictor, model, c, ch.device)
                                                 for label, c in VARIANTS.items()}, [s.data for s in samples],
                    min_score=ms.accuracy.CONFIDENT)

# %% tags=["nbval-ignore-output", "hide-input"]
book.show_table(eq[["matched_ref", "matched_test", "box_iou_mean", "score_diff_max", "mask_iou_mean", "feature_rel_err",
                    "mask_prob_diff_max"]], 3, columns=["matched_ref", "box_iou_mean", "mask_iou_mean", "feature_rel_err"])

# %% tags=["nbval-ignore-output", "remove-cell"]
words.glue_all(precision.findings(ch.rows(), ratios, eq, low, acc))
ch.glue(prec_low=low, prec_engine=ms.environment.matrix_engine(str(ch.device)), prec_val_n=int(acc["images"].max()),
        prec_acc_rule=words.accuracy_sentence(acc))

# %% tags=["remove-cell"]
seed = ch.seed_table("backbone", "inference", "inference_fp16")
ch.glue(prec_seed_backbone=seed.loc["1333x800", "seed speed-up (published)"])

# %% [markdown]
# ## What to take away
#
# Every row against `fp32`, backbone + neck, held to the A/A floor:
#
# {glue:md}`prec_findings`
#
# Each lever on top of the one before:
#
# {glue:md}`prec_steps`
#
# - The seed's fp16 backbone (with the neck inside) was {glue:text}`prec_seed_backbone:.2f`x on its GPU
#   (published figure, a different machine: compare ratios only).
# - Accuracy of `{glue:text}`prec_pick`` against fp32: {glue:md}`prec_pick_accuracy`
# - Agreement of `{glue:text}`prec_pick`` with fp32 on the timed images: {glue:text}`prec_pick_matched:.3f` of
#   the detections with score ≥ 0.3 matched both ways, box IoU {glue:text}`prec_pick_box_iou:.4f`, backbone
#   feature relative error {glue:text}`prec_pick_feat_err:.4f`.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output", "hide-input"]
ch.end()
