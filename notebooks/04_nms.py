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
# # NMS: Detectron's C4 versus FPN question, answered by measurement
#
# **In short** (generated from this run's rows; the method follows):
#
# {glue:md}`nms_headline`

# %% [markdown] tags=["method"]
# A Detectron issue asked why the C4 RPN is slower than FPN when FPN does more convolution. The answer
# given: NMS is O(n^2), and C4 runs it over 12000 pre-NMS proposals on one level while FPN runs it over at
# most 2000 per level. mmdet does it differently from Detectron:
#
# - its C4 test config keeps `nms_pre=6000` on the one level, then `max_per_img=1000` proposals;
# - its FPN RPN takes the top 1000 *per level* and makes **one** batched NMS call over all levels (about 5,000
#   boxes at 1333x800) with the coordinate-offset trick: each level's boxes are shifted so they cannot overlap
#   another level's, so a box suppresses only boxes of its own level, in one call instead of one per level.
#
# This chapter measures the NMS kernels on synthetic boxes, then both architectures per stage, then sweeps
# the pre-NMS count (up to Detectron's 12000 at study size; the `c4_pre_nms` parameter).

# %% tags=["parameters", "hide-cell"]
device = "auto"
checkpoint = None
ns = [100, 300, 1000, 3000]
iou_thresholds = [0.7]
nms_repeats = 2
scale = "480x320"
input_size = "640x480"
c4_pre_nms = [300, 1000]
fpn_pre_nms = [100, 300]
rpn_proposals = 100
dets = 20
val_images = 4
repeats = 1
warmup = 0
threads = 2

# %% tags=["hide-cell"]
# %matplotlib inline
import matplotlib.pyplot as plt

import mmdet_speedup as ms
from mmdet_speedup import book, nms, stages as S
from mmdet_speedup.study import nms as chapter, words

ch = book.Chapter("04_nms", globals())

# %% [markdown] tags=["method"]
# ## 1. The kernels: time against n
# Uniform random boxes (most survive NMS) and clusters of jittered copies around 20 known objects (most are
# suppressed, like RPN proposals around objects). Class-agnostic `torchvision.ops.nms` and `mmcv.ops.nms`;
# for five classes (FPN levels) the offset trick (one call) against the per-class loop, and the two
# libraries' own `batched_nms`, which switch between those strategies at a size threshold.

# %% tags=["nbval-ignore-output", "hide-cell"]
_ = nms.sweep(ns, nms.IMPLEMENTATIONS, iou_thresholds, repeats=nms_repeats, warmup=1, device=ch.device,
              out_csv=ch.rec.path.with_name("04_nms_workbench.csv"), run_id=ch.run_id, num_classes=5)

# %% [markdown] tags=["method"]
# Under the chart: the log-log slope of time against n, fitted over the upper half of the sizes (1 = linear,
# 2 = quadratic), then the n from which the per-class loop is faster than the offset trick, per box set
# (None: not within the sweep).

# %% tags=["nbval-ignore-output", "hide-input"]
bench, thr = ch.rows("04_nms_workbench"), iou_thresholds[0]
chapter.plot_sweep(bench, thr)
plt.show()
slopes, cross = chapter.slope_table(bench, thr), chapter.crossovers(bench, thr)
book.show_table(slopes, 2)
cross

# %% [markdown] tags=["method"]
# ## 2. C4 versus FPN, per stage
# Faster and Mask R-CNN, R-50 C4 and R-50 FPN, mmdet's packaged configs at the same scale and detections per
# image: the C4 models with conditioned random weights (the trained weights do not fit them), the FPN models
# with the trained weights (Faster FPN takes the Mask R-CNN's box parts); the environment table names each. `rpn.nms` sits inside `rpn`, `roi_bbox.nms` inside `roi_bbox`.
# C4 has no `neck` row: its RoI head runs res5 on every RoI (up to 1000 boxes, then again on the mask RoIs)
# and its masks are 14x14.

# %% tags=["nbval-ignore-output", "hide-cell"]
CONFIGS = {"Faster C4": "faster-rcnn_r50-caffe_c4-1x_coco", "Faster FPN": "faster-rcnn_r50_fpn_1x_coco",
           "Mask C4": "mask-rcnn_r50-caffe-c4_1x_coco", "Mask FPN": "mask-rcnn_r50_fpn_1x_coco"}
samples = ch.samples(input_size, 1)
models = {name: ch.model(config) for name, config in CONFIGS.items()}
for name, model in models.items():
    ch.profiler(model).run({name: ms.STOCK}, samples, {"sweep": "arch"})
# FPN once more, in a sweep of its own like every configuration above: the noise floor of comparing two sweeps
_ = ch.profiler(models["Faster FPN"]).run({"Faster FPN (A/A)": ms.STOCK}, samples, {"sweep": "arch"})

# %% [markdown]
# Median ms per image per stage; `roi head` is the whole RoI head (boxes, masks and their post-processing),
# and the last columns are the work each did: the RPN's pre-NMS N, the boxes each NMS took in, detections.

# %% tags=["hide-input"]
t = chapter.stage_comparison(ch.rows().query("sweep == 'arch'"), list(CONFIGS))
book.show_table(t, 1, columns=[S.RPN, S.RPN_NMS, chapter.ROI_HEAD, S.TOTAL, "rpn_nms_in"], full="Every stage")
_ = book.stacked_stages(t, title=f"C4 versus FPN at {scale} ({ch.device.type}, fp32)")

# %% [markdown]
# C4's time over FPN's, per part of the pipeline:

# %% tags=["hide-input"]
ratio = chapter.c4_fpn_ratio(t)
book.show_table(ratio, 2)

# %% [markdown] tags=["method"]
# ## 3. The pre-NMS top-N sweep
# C4's single-level top-N (Detectron used 12000 at test time, mmdet 6000) and FPN's per-level top-N,
# on Faster R-CNN (the RPN is the same in Mask R-CNN). Then, on the synthetic clusters, what a smaller N costs
# in recall of the known objects.

# %% tags=["nbval-ignore-output", "hide-cell"]
fpn_pipes, fpn_own = chapter.pre_nms_pipelines(models["Faster FPN"], "Faster FPN", fpn_pre_nms, ch.device)
for name, values in (("Faster C4", c4_pre_nms), ("Faster FPN", fpn_pre_nms)):
    for n in values:
        ms.models.set_workload(models[name], rpn_pre_nms=n)
        ch.profiler(models[name]).run({f"{name} pre={n}": ms.STOCK}, samples, {"sweep": "pre_nms"})
ch.record("04_nms_recall", nms.recall_table([*c4_pre_nms, 100, 300, 1000, 2000, 6000, 12000]))

# %% [markdown]
# The medians and the boxes NMS took in (`nms_in`); then `rpn` and its `rpn.nms` against N, and the share of
# the 60 known objects still found when the top k of 12000 clustered boxes go through NMS.

# %% tags=["hide-input"]
pm, rc = chapter.pre_nms_medians(ch.rows().query("sweep == 'pre_nms'")), ch.rows("04_nms_recall")
book.show_table(chapter.pre_nms_table(pm), 1)
book.scaling_chart(pm, "rpn_pre_nms", "ms", "series", title="RPN time against pre-NMS N",
                   xlabel="pre-NMS top-N (C4: one level; FPN: per level)", ylabel="ms (median)")
_ = chapter.plot_recall(rc)

# %% [markdown] tags=["method"]
# What a smaller FPN pre-NMS N costs in accuracy: Faster FPN (the trained model's box parts) at each N against
# the config's own N, box AP on the val images, by the method page's accuracy rule (one untimed pass per N):

# %% tags=["nbval-ignore-output", "hide-cell"]
fpn_acc = ch.accuracy("04_nms_accuracy", fpn_pipes, reference=fpn_own, size=input_size)

# %% tags=["nbval-ignore-output", "hide-input"]
book.show_table(words.accuracy_table(fpn_acc, fpn_own), 3)

# %% [markdown]
# {glue:text}`nms_acc_rule`

# %% [markdown]
# Detectron's published model zoo (1x schedule, seconds per image on P100 GPUs: `inference_s_per_im` in its
# GPU code, `inference_extra_s` in its unoptimized CPU code):

# %% tags=["hide-input"]
dz = chapter.detectron_zoo()
book.show_table(dz, 3)

# %% tags=["nbval-ignore-output", "remove-cell"]
words.glue_all(chapter.findings(ch.rows(), slopes, cross, t, chapter.pre_nms_growth(pm, "Faster C4"), rc, chapter.zoo_c4_over_fpn(dz)))
ch.glue(nms_acc_rule=words.accuracy_sentence(fpn_acc))
words.glue_all({"nms_fpn_accuracy": words.Md(chapter.accuracy_findings(fpn_acc, fpn_own))})

# %% [markdown]
# ## What to take away
#
# The kernels, per box set (a slope of 1 is linear, 2 quadratic):
#
# {glue:md}`nms_kernels`
#
# C4 against FPN per part, FPN as the baseline (a ratio under 1 means C4 takes longer), with intervals over
# repeats (with fewer than 3 repeats there is no verdict), held to the A/A row's interval (`Faster FPN`
# profiled again in a sweep of its own, as each configuration is; the last line). Each configuration ran in a
# sweep of its own, so these comparisons are unpaired:
#
# {glue:md}`nms_arch`
#
# - Raising C4's pre-NMS N from {glue:text}`nms_c4_pre_lo` to {glue:text}`nms_c4_pre_hi` multiplies the
#   median of `rpn.nms` by {glue:text}`nms_c4_nms_growth:.1f`x here. On the synthetic clusters, top-1000 keeps
#   {glue:text}`nms_recall_1000:.2f` of the objects; what a cut N keeps on real images depends on how well
#   trained scores rank proposals. On the trained Faster FPN, each N against the config's own:
#
#   {glue:md}`nms_fpn_accuracy`
# - Both libraries' `batched_nms` switch strategy at a fixed size (torchvision at 1000 boxes on the CPU,
#   mmcv at 10000), see the workbench's docstring.
# - Detectron's published model zoo (end-to-end, 1x, its total a + b: GPU code plus CPU code) has C4 at {glue:text}`dz_faster_c4_over_fpn:.2f`x
#   FPN's inference time for Faster R-CNN and {glue:text}`dz_mask_c4_over_fpn:.2f`x for Mask R-CNN (published
#   figures): {glue:text}`nms_zoo_direction`.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output", "hide-input"]
ch.end()
