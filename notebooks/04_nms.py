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
# A Detectron issue asked why the C4 RPN is slower than FPN when FPN does more convolution. The answer
# given: NMS is O(n^2), and C4 runs it over 12000 pre-NMS proposals on one level while FPN runs it over at
# most 2000 per level. mmdet does it differently from Detectron:
#
# - its C4 test config keeps `nms_pre=6000` on the one level, then `max_per_img=1000` proposals;
# - its FPN RPN takes the top 1000 *per level* and runs **one** batched NMS over all levels (about 5,000
#   boxes at 1333x800) with the coordinate-offset trick (each level's boxes shifted so they cannot overlap
#   another level's), not one NMS per level.
#
# This chapter measures the NMS kernels on synthetic boxes, then both architectures per stage, then sweeps
# the pre-NMS count up to Detectron's 12000.

# %% tags=["parameters"]
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
repeats = 1
warmup = 0
threads = 2

# %%
# %matplotlib inline
import matplotlib.pyplot as plt

import mmdet_speedup as ms
from mmdet_speedup import book, nms

ch = book.Chapter("04_nms", globals())

# %% [markdown]
# ## 1. The kernels: time against n
# Uniform random boxes (most survive NMS) and clusters of jittered copies around 20 known objects (most are
# suppressed, like RPN proposals around objects). Class-agnostic `torchvision.ops.nms` and `mmcv.ops.nms`;
# for five classes (FPN levels) the offset trick (one call) against the per-class loop, and the two
# libraries' own `batched_nms`, which switch between those strategies at a size threshold.

# %% tags=["nbval-ignore-output"]
_ = nms.sweep(ns, nms.IMPLEMENTATIONS, iou_thresholds, repeats=nms_repeats, warmup=1, device=ch.device,
              out_csv=ch.rec.path.with_name("04_nms_workbench.csv"), run_id=ch.run_id, num_classes=5)

# %% [markdown]
# Under the chart: the log-log slope of time against n, fitted over the upper half of the sizes (1 = linear,
# 2 = quadratic), then the n from which the per-class loop is faster than the offset trick, per box set
# (None: not within the sweep).

# %% tags=["nbval-ignore-output"]
bench, thr = ch.rows("04_nms_workbench"), iou_thresholds[0]
nms.plot_sweep(bench, thr)
plt.show()
slopes, cross = nms.slope_table(bench, thr), nms.crossovers(bench, thr)
book.show_table(slopes, 2)
cross

# %% [markdown]
# ## 2. C4 versus FPN, per stage
# Faster and Mask R-CNN, R-50 C4 and R-50 FPN, mmdet's packaged configs with conditioned random weights, at
# the same scale and detections per image. `rpn.nms` sits inside `rpn`, `roi_bbox.nms` inside `roi_bbox`.
# C4 has no `neck` row: its RoI head runs res5 on every RoI (up to 1000 boxes, then again on the mask RoIs)
# and its masks are 14x14.

# %% tags=["nbval-ignore-output"]
CONFIGS = {"Faster C4": "faster-rcnn_r50-caffe_c4-1x_coco", "Faster FPN": "faster-rcnn_r50_fpn_1x_coco",
           "Mask C4": "mask-rcnn_r50-caffe-c4_1x_coco", "Mask FPN": "mask-rcnn_r50_fpn_1x_coco"}
samples = ch.samples(input_size, 1)
models = {name: ch.model(config) for name, config in CONFIGS.items()}
for name, model in models.items():
    ch.profiler(model).run({name: ms.STOCK}, samples, {"sweep": "arch"})

# %% [markdown]
# Median ms per image per stage; `roi head` is the whole RoI head (boxes, masks and their post-processing),
# and the last columns are the work each did: the RPN's pre-NMS N, the boxes each NMS took in, detections.

# %%
t = nms.stage_comparison(ch.rows().query("sweep == 'arch'"), list(CONFIGS))
book.show_table(t, 1)
_ = book.stacked_stages(t, title=f"C4 versus FPN at {scale} ({ch.device.type}, fp32)")

# %% [markdown]
# C4's time over FPN's, per part of the pipeline:

# %%
ratio = nms.c4_fpn_ratio(t)
book.show_table(ratio, 2)

# %% [markdown]
# ## 3. The pre-NMS top-N sweep
# C4's single-level top-N (Detectron used 12000 at test time, mmdet 6000) and FPN's per-level top-N,
# on Faster R-CNN (the RPN is the same in Mask R-CNN). Then, on the synthetic clusters, what a smaller N costs
# in recall of the known objects.

# %% tags=["nbval-ignore-output"]
for name, values in (("Faster C4", c4_pre_nms), ("Faster FPN", fpn_pre_nms)):
    for n in values:
        ms.models.set_workload(models[name], rpn_pre_nms=n)
        ch.profiler(models[name]).run({f"{name} pre={n}": ms.STOCK}, samples, {"sweep": "pre_nms"})
ch.record("04_nms_recall", nms.recall_table([*c4_pre_nms, 100, 300, 1000, 2000, 6000, 12000]))

# %% [markdown]
# The medians and the boxes NMS took in (`nms_in`); then `rpn` and its `rpn.nms` against N, and the share of
# the 60 known objects still found when the top k of 12000 clustered boxes go through NMS.

# %%
pm, rc = nms.pre_nms_medians(ch.rows().query("sweep == 'pre_nms'")), ch.rows("04_nms_recall")
book.show_table(nms.pre_nms_table(pm), 1)
book.scaling_chart(pm, "rpn_pre_nms", "ms", "series", title="RPN time against pre-NMS N",
                   xlabel="pre-NMS top-N (C4: one level; FPN: per level)", ylabel="ms (median)")
_ = nms.plot_recall(rc)

# %% [markdown]
# Detectron's published model zoo (1x schedule, seconds per image on P100 GPUs: `inference_s_per_im` in its
# GPU code, `inference_extra_s` in its unoptimized CPU code):

# %%
dz = nms.detectron_zoo()
book.show_table(dz, 3)

# %% tags=["nbval-ignore-output"]
top, top_impl = nms.steepest(slopes)
grow, zoo = nms.pre_nms_growth(pm, "Faster C4"), nms.zoo_c4_over_fpn(dz)
ch.glue(nms_slope_max=top, nms_slope_max_impl=top_impl, nms_slope_clustered_tv=slopes.loc["torchvision", "clustered"],
        nms_cross_uniform=str(cross["uniform"]), nms_c4_fpn_rpn=ratio.loc["rpn", "Faster"],
        nms_c4_fpn_rpn_nms=ratio.loc["rpn.nms", "Faster"], nms_c4_fpn_roi=ratio.loc["roi head", "Faster"],
        nms_c4_fpn_roi_mask=ratio.loc["roi head", "Mask"], nms_c4_fpn_total=ratio.loc["total", "Faster"],
        nms_c4_pre_lo=grow["lo"], nms_c4_pre_hi=grow["hi"], nms_c4_nms_growth=grow["growth"],
        nms_recall_1000=rc.set_index("k").loc[1000, "recall"], dz_faster_c4_over_fpn=zoo["Faster"],
        dz_mask_c4_over_fpn=zoo["Mask"])

# %% [markdown]
# ## What to take away
#
# - NMS is quadratic only when boxes survive: the steepest fitted slope here is
#   {glue:text}`nms_slope_max:.2f` ({glue:text}`nms_slope_max_impl`), while on clustered boxes, where each
#   kept box suppresses many, class-agnostic torchvision NMS grows with slope
#   {glue:text}`nms_slope_clustered_tv:.2f`. RPN proposals look like the clusters.
# - For batched NMS on this device the per-class loop beats the offset trick from about
#   {glue:text}`nms_cross_uniform` uniform boxes (None: not within the sweep); both libraries switch
#   strategy at a fixed size (torchvision at 1000 boxes on the CPU, mmcv at 10000), see the workbench's
#   docstring.
# - C4 versus FPN (Faster R-CNN, mmdet configs): C4's `rpn` costs {glue:text}`nms_c4_fpn_rpn:.2f`x FPN's and
#   its `rpn.nms` {glue:text}`nms_c4_fpn_rpn_nms:.2f`x; its RoI head {glue:text}`nms_c4_fpn_roi:.1f`x
#   ({glue:text}`nms_c4_fpn_roi_mask:.1f`x for Mask R-CNN); in total C4 is {glue:text}`nms_c4_fpn_total:.2f`x.
#   The res5 RoI head, not NMS, is most of C4's penalty in mmdet.
# - Raising C4's pre-NMS N from {glue:text}`nms_c4_pre_lo:.0f` to {glue:text}`nms_c4_pre_hi:.0f`
#   multiplies `rpn.nms` by {glue:text}`nms_c4_nms_growth:.1f`x here. On the synthetic clusters top-1000
#   keeps {glue:text}`nms_recall_1000:.2f` of the objects: cutting N is cheap in recall only when the
#   scores rank well, which random weights cannot tell us.
# - Detectron's published model zoo (end-to-end, 1x, its GPU) has C4 at {glue:text}`dz_faster_c4_over_fpn:.2f`x
#   FPN's inference time for Faster R-CNN and {glue:text}`dz_mask_c4_over_fpn:.2f`x for Mask R-CNN: the same
#   direction as here.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output"]
ch.end()
