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

# %% [markdown] tags=["method"]
# # The model: a Mask R-CNN trained here, on shapes the project draws
#
# Whether a faster pipeline keeps its accuracy can only be asked of a model that has some. No trained
# checkpoint can be downloaded where this study runs, so the project trains its own: mmdet's
# `mask-rcnn_r50_fpn_1x_coco`, the architecture the chapters time (ResNet-50, FPN, 80-class box and mask
# heads, the config's test settings), trained from scratch through mmengine's training loop on a data set
# the library generates (`mmdet_speedup.synth`). Six shape classes take the first six of the 80 labels, so
# every layer has the shape it has for COCO; the other 74 classes have no training examples and the
# evaluation scores the six. The chapters time this model on its val images and score each optimization's
# AP on them (each chapter's environment table names the weights its run used). The weights live in the
# repository (`data/weights/`, one safetensors file, fp16 with BatchNorm statistics in fp32), checked
# against their sha256 at every load; `make weights` trains them again.
#
# This page shows what the model was trained on, how the training went, and the AP it reaches on held-out
# images. It is **not COCO mAP**: a reader with mmdet's COCO checkpoint and COCO val2017 runs the study with
# `make book CHECKPOINT=... COCO=...` instead (README).

# %% tags=["parameters", "hide-cell"]
device = "auto"
threads = 2
train_images = 20
val_images = 3
val_large_images = 0
figure_images = 2
checkpoint = None
coco = None

# %% tags=["hide-cell"]
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd

from mmdet_speedup import book, synth, weights
from mmdet_speedup.study import model as model_page

ch = book.Chapter("00_model", globals())
record = weights.read_record(weights.default_path())
counts = {"train": train_images, "val": val_images, "val_3840x2304": val_large_images}
splits = {name: synth.generate(name, images=n) for name, n in counts.items() if n}

# %% [markdown] tags=["method"]
# ## The data
# Each image is a crop of a photo or texture (flipped, colour-jittered), with 5 to 40 shapes drawn on it at
# random: a disc (radial gradient), a square (checkerboard), a triangle (stripes), a star (flat, grainy), a
# ring (dots) and a cross (grid lines), each with random colours, size, rotation and aspect. Shapes overlap,
# hide each other and are cut by the border; each annotation is the visible part (COCO RLE), kept when at
# least 20% of the shape's part inside the image shows. The val splits' backgrounds come from images the
# train split never uses. Every image is made from its seed alone and checked against the committed
# manifest of digests (`src/mmdet_speedup/data/synth_manifest.json`); the images themselves are generated
# on demand and cached, never committed.

# %% tags=["hide-input"]
book.show_table(model_page.data_table(splits))
_, ax = plt.subplots(figsize=(7, 3.2), layout="tight")
model_page.size_histogram(splits, ax)

# %% [markdown]
# ## The training
# The recipe, as the weights' record holds it: crops of the full-size images (objects stay near the size
# they have at inference), BatchNorm trained (there are no pretrained statistics to freeze) and its
# statistics re-estimated over train crops before the weights were saved, AdamW with a linear warm-up and
# cosine decay, gradient clipping, 128 sampled RoIs per image, and backbone and neck under bf16 autocast
# where the CPU has bf16 matrix instructions (the heads stay fp32: mmcv's NMS refuses bf16). The loss below
# is the training log, kept beside the weights (`data/weights/*_curve.csv`); it was recorded when the
# weights were trained, not in this page's run.

# %% tags=["hide-input"]
curve = pd.read_csv(weights.default_path().with_name(weights.default_path().stem + "_curve.csv"))
book.show_table(model_page.recipe_table(record))
_, ax = plt.subplots(figsize=(7, 3.5), layout="tight")
model_page.curve_figure(curve, ax)

# %% [markdown]
# ## What it reaches on held-out images
# COCO AP (pycocotools; IoU 0.50:0.95, on the 0-1 scale) of the stock pipeline with the config's test
# settings (1000 proposals, score threshold 0.05, 100 detections per image) on the val splits, scoring the
# six shape classes. At 3840x2304 the model runs at that scale (the study's `3840x2304>3840x2304` case); its
# objects span up to half the image's height, beyond the sizes in the 1333x800 train split (see the
# histogram), and the split has 6 images.
# Small, medium and large are COCO's area ranges (below 32², to 96², above). With `checkpoint` and `coco`
# set, a row for that checkpoint on the first `val_images` images of COCO val2017 is added.

# %% tags=["nbval-ignore-output", "hide-cell"]
rows, dets = model_page.evaluate(splits, counts, ch.device)
if coco:  # a reader's COCO checkpoint and folder: its AP on COCO val2017 beside
    rows = pd.concat([rows, model_page.evaluate_coco(checkpoint, coco, val_images, ch.device)])
_ = ch.record("00_model_ap", rows)

# %% tags=["hide-input"]
ap = ch.rows("00_model_ap")
book.show_table(model_page.ap_table(ap), 3)

# %% [markdown]
# Val images with the detections that score above 0.5 (masks tinted, class and score on each box):

# %% tags=["hide-input"]
model_page.figure(splits["val"], dets, figure_images)

# %% tags=["remove-cell"]
v = ap.set_index("split").loc["val"]
hit, total = map(sum, zip(*(model_page.found_share(d, splits["val"], i) for i, d in dets.items())))
ch.glue(val_n=int(v["images"]), box_ap=float(v["bbox_AP"]), box_ap50=float(v["bbox_AP50"]),
        mask_ap=float(v["segm_AP"]), iters=int(record["iterations"]), found_hit=hit, found_total=total,
        floor_text=model_page.floor_text(v))

# %% [markdown]
# ## What to take away
# - On {glue:text}`val_n` held-out images at 1333x800 the trained model reaches box AP
#   {glue:text}`box_ap:.3f` (AP50 {glue:text}`box_ap50:.3f`) and mask AP {glue:text}`mask_ap:.3f`, after
#   {glue:text}`iters` iterations; on the first three it finds {glue:text}`found_hit` of their
#   {glue:text}`found_total` annotated objects with a detection of the right class (box IoU ≥ 0.5,
#   score > 0.5).
# - This AP belongs to this data set (six shape classes on photo backgrounds), not to COCO: it is
#   what the chapters hold each optimization to, and it says nothing about COCO mAP. Against this project's
#   floor for the model (box AP 0.30 and AP50 0.60 on the val split): {glue:text}`floor_text`.
# - A reader with a COCO checkpoint and COCO val2017 passes them (`make book CHECKPOINT=... COCO=...`,
#   README): this page then adds the checkpoint's AP on COCO.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output", "hide-input"]
ch.end()
