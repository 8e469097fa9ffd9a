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
# # Loading and compute overlap
#
# **In short** (generated from this run's rows; the method follows):
#
# {glue:md}`load_headline`

# %% [markdown] tags=["method"]
# mmdet's inference is serial: read and pre-process an image, then run the model, then the next image. The
# seed article's first trick: decode and pre-process the next images in a background thread (on CUDA in its
# own stream) into a bounded queue, so the model never waits; on a V100 it took Faster R-CNN from 46 to 35 ms
# per image (published). The library's `PrefetchReader` does that, yielding in order, with errors surfacing
# in the caller with the image's name.
#
# How much can it win? If loading (`load + preprocess + data_preprocessor`) is a fraction *f* of the serial
# time per image, perfect overlap gives at most 1 / (1 - f) -- and only if loading has a core of its own.
# This machine has two cores, and the model's convolutions already use both.

# %% tags=["parameters", "hide-cell"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
# each case: the model's scale, proposals kept by the RPN and detections per image
cases = [{"scale": "320x192", "rpn_proposals": 50, "dets": 10}]
input_size = "640x480"
n_stream = 6
passes = 1
depth = 4
threads = 2

# %% tags=["hide-cell"]
# %matplotlib inline
import mmdet_speedup as ms
from mmdet_speedup import book, loader
from mmdet_speedup.study import loading, words

ch = book.Chapter("05_loading", globals())
photos = ch.samples(input_size)
stream = [photos[i % len(photos)].data for i in range(n_stream)]

# %% [markdown] tags=["method"]
# The model runs with the choices `optimize` makes (`Choices.auto()`): loading matters more when compute is
# fast. Per case, the serial profile says where the serial time goes; then serial and overlapped passes over
# a stream of `n_stream` encoded JPEGs (the val images, repeated), which the reader decodes.

# %% tags=["nbval-ignore-output", "hide-cell"]
for case in cases:
    prof = ch.profiler(ch.model(**case), repeats=passes, warmup=1)
    prof.run({"serial stages": ms.Choices.auto()}, photos, {"sweep": "stages"})
    prof.run_loading(ms.Choices.auto(), stream, depth=depth, extra={"sweep": "loading"})

# %% [markdown] tags=["method"]
# Per model scale: loading's median ms per image and its share *f* of the serial total, the bound 1 / (1 - f),
# each variant's images per second and speed-up over serial, and how much of the bound the low-priority reader
# reached; the chart sets the two speed-ups beside the bound.

# %% tags=["hide-input"]
summary = loading.loading_summary(ch.rows())
book.show_table(summary, 3, columns=["loading share", loading.BOUND, loading.SPEEDUP, loading.SPEEDUP_EQUAL])
ax = summary[[loading.SPEEDUP, loading.SPEEDUP_EQUAL, loading.BOUND]].plot.bar(
    figsize=(7, 3.5), rot=0, grid=True, xlabel="model scale", ylabel="throughput ratio")
_ = ax.axhline(1, color="k", lw=0.8)

# %% tags=["nbval-ignore-output", "remove-cell"]
words.glue_all(loading.findings(ch.rows(), summary))

# %% [markdown]
# ## What to take away
#
# Each reader against `serial`, per model scale, with intervals over passes (with fewer than 3 passes there
# is no verdict), held to the A/A row's interval (`serial` timed a second time in the same sweep):
#
# {glue:md}`load_findings`

# %% [markdown] tags=["method"]
# - The bound assumes loading gets a core of its own. On a two-core CPU the reader's thread shares the cores
#   with the model's two threads; the library runs its reader at a low priority so that it takes only the
#   cycles the model leaves idle, and the `equal priority` row measures the alternative.
# - On a GPU the model runs on the device while the host decodes: the seed article's 46 -> 35 ms (V100,
#   published) is that case. Re-run this chapter with `-p device cuda` to measure it.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output", "hide-input"]
ch.end()
