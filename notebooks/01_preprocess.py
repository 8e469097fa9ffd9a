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
# # Pre-processing and normalization
#
# The seed's first finding: in mmdet 2.x the CPU resized, normalized and padded every image in float32 and
# copied four bytes per pixel to the GPU, 13.45 ms of a 72.3 ms inference at 1333x800 and 128.4 ms of
# 569.9 ms at 3840x2304 on an RTX 3080 (published figures). mmdet 3.3 already moved normalize and pad into
# `DetDataPreprocessor`. This chapter measures three paths side by side:
#
# - `legacy`: the mmdet 2.x path: CPU resize (cv2), CPU float32 normalize and pad, float32 copy;
# - `stock`: mmdet 3.3: CPU resize (cv2), uint8 copy, normalize and pad in `DetDataPreprocessor`;
# - `device`: decode on the host, uint8 copy (pinned, non-blocking on CUDA), resize, colour order,
#   normalize and pad on the device with torch;
# - `auto`: whichever of the three is fastest for the device (on CUDA: `device`; elsewhere measured once
#   per input shape, interleaved, and moved off `stock` only by a win larger than timing noise).
#
# Stages compared: `preprocess` (host) + `data_preprocessor` (device step); `load` (JPEG decode) is shown
# apart because no variant changes it.

# %% tags=["parameters"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
scale = "480x320"
input_sizes = ["320x240", "640x480"]
seed_case = "640x480"  # also run the model's Resize at this input size (the seed's 3840x2304 case)
n_images = 2
repeats = 2
warmup = 0
threads = 2

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

import mmdet_speedup as ms
from mmdet_speedup import book
from mmdet_speedup.preprocess import compare_inputs

dev, rec = book.start("01_preprocess", device=device, config=config, checkpoint=checkpoint, scale=scale,
                      input_sizes=input_sizes, seed_case=seed_case, n_images=n_images, repeats=repeats,
                      warmup=warmup, threads=threads)
images = book.default_images(n_images)
VARIANTS = {v: ms.Choices(preprocess=v) for v in ("legacy", "stock", "device", "auto")}

# %% tags=["nbval-ignore-output"]
model = ms.build_detector(config, checkpoint=checkpoint, device=str(dev), workload=ms.Workload(scale=ms.models.parse_size(scale)))
cases = [(size, model) for size in input_sizes]
if seed_case:
    seed_model = ms.build_detector(config, checkpoint=checkpoint, device=str(dev),
                                   workload=ms.Workload(scale=ms.models.parse_size(seed_case)))
    cases.append((seed_case, seed_model))
for size, m in cases:
    prof = ms.Profiler(m, device=str(dev), recorder=rec, repeats=repeats, warmup=warmup)
    prof.run_preprocess(VARIANTS, ms.prepare_inputs(images, size))

# %% [markdown]
# ## What each path costs, per input size
# Median wall time per image of `preprocess + data_preprocessor` (decode excluded), the CPU time the
# process spent on it, and the bytes each path copies to the device.

# %% tags=["nbval-ignore-output"]
rows = book.load_rows(rec)
ok = rows[rows["status"] == "ok"].copy()
ok["case"] = ok["input_size"] + " > " + ok["scale"]
keys = ["case", "variant", "repeat", "image"]
wall = ok.pivot_table(index=keys, columns="stage", values="ms", aggfunc="sum")
cpu = ok.pivot_table(index=keys, columns="stage", values="cpu_ms", aggfunc="sum")
per = pd.DataFrame({"pre_ms": wall["preprocess"] + wall["data_preprocessor"],
                    "pre_cpu_ms": cpu["preprocess"] + cpu["data_preprocessor"], "load_ms": wall["load"]}).reset_index()
summary = per.groupby(["case", "variant"], sort=False)[["pre_ms", "pre_cpu_ms", "load_ms"]].median()
summary["MB copied"] = ok.groupby(["case", "variant"], sort=False)["bytes_copied"].median() / 2**20
chosen = ok[ok["variant"] == "auto"].groupby("case")["chosen"].agg(lambda s: s.mode().iat[0])
book.show_table(summary, 2)
print("auto picked:", chosen.to_dict())

# %%
CASES = [f"{s} > {scale}" for s in input_sizes] + ([f"{seed_case} > {seed_case}"] if seed_case else [])
wide = summary["pre_ms"].unstack("variant").reindex(CASES)
order = [c for c in ["legacy", "stock", "device", "auto"] if c in wide.columns]
wide = wide[order]
mpix = {c: eval(c.split(" > ")[0].replace("x", "*")) / 1e6 for c in wide.index}
usual = CASES[:len(input_sizes)]  # resized to the model's scale; the seed's case is in the table
fig, ax = plt.subplots(figsize=(7, 4))
for v in order:
    ax.plot([mpix[c] for c in usual], wide.loc[usual, v], marker="o", label=v)
ax.set_xscale("log"); ax.set_yscale("log")
ax.set_xlabel("input megapixels (the decoded photo)"); ax.set_ylabel("preprocess + data_preprocessor, ms (median)")
ax.set_title(f"Pre-processing cost on {dev.type}"); ax.grid(alpha=0.3, which="both"); ax.legend()
for c in usual:
    ax.annotate(c, (mpix[c], wide.loc[c].max()), fontsize=7, textcoords="offset points", xytext=(0, 6), ha="center")
plt.show()

# %% [markdown]
# ## Is `device` the same input?
# Same shapes and metainfo as `stock` are required; pixel values may differ because torch's bilinear resize
# (uint8, no antialias) rounds differently from cv2's fixed-point one. Differences in grey levels
# (one level is one unit of the 0-255 input):

# %%
img = ms.load_image(ms.prepare_inputs(images[:1], input_sizes[-1])[0].data)
diffs = pd.DataFrame([compare_inputs(model, img, v, dev) for v in ("legacy", "device")]).set_index("variant")
book.record_table(rec, "01_preprocess_inputs", diffs.reset_index())
book.show_table(diffs, 3)

# %% tags=["nbval-ignore-output"]
fastest = wide.idxmin(axis=1)
big = usual[-1]
book.glue("pre_big_case", big)
book.glue("pre_fastest_big", fastest[big])
book.glue("pre_legacy_over_stock_big", float(wide.loc[big, "legacy"] / wide.loc[big, "stock"]))
book.glue("pre_device_over_best_big", float(wide.loc[big, "device"] / wide.loc[big].drop("auto").min()))
book.glue("pre_auto_over_best_big", float(wide.loc[big, "auto"] / wide.loc[big].drop("auto").min()))
book.glue("pre_device_max_levels", float(diffs.loc["device", "max_levels"]))
book.glue("pre_device_mean_levels", float(diffs.loc["device", "mean_levels"]))
book.glue("pre_copy_ratio", float(summary.loc[(big, "legacy"), "MB copied"] / summary.loc[(big, "device"), "MB copied"]))
seed = book.seed_figures()
seed_pre = seed[(seed["stage"] == "pre-processing") & seed["variant"].isin(["inference_fp16", "inference_fp16_preprocess"])
                & (seed["system"] == "mmdet 2.19 (seed)")].pivot_table(index="scale", columns="variant", values="value")
seed_pre["seed speed-up (RTX 3080, published)"] = seed_pre["inference_fp16"] / seed_pre["inference_fp16_preprocess"]
book.show_table(seed_pre, 2)
_ = book.glue("pre_seed_ratio_4k", float(seed_pre.loc["3840x2304", "seed speed-up (RTX 3080, published)"]))

# %% [markdown]
# ## What to take away
#
# - At the largest case here ({glue:text}`pre_big_case`) the fastest path on this device is
#   **{glue:text}`pre_fastest_big`**; `legacy` costs {glue:text}`pre_legacy_over_stock_big:.2f`x what
#   `stock` costs, and `device` {glue:text}`pre_device_over_best_big:.2f`x the best of the three.
# - The ranking depends on the device. On a GPU, `device` leaves only decoding on the host and copies uint8,
#   {glue:text}`pre_copy_ratio:.1f`x fewer bytes than `legacy`'s float32 (the seed measured a
#   {glue:text}`pre_seed_ratio_4k:.1f`x speed-up of its pre-processing at 3840x2304 on an RTX 3080,
#   published figure). On a CPU there is no device to move work to, and cv2's SIMD resize and normalize
#   are hard to beat with torch: say so before porting the seed's trick to a CPU deployment.
# - `auto` measures once per input shape and keeps the winner (`stock` unless another path is clearly
#   faster); it costs
#   {glue:text}`pre_auto_over_best_big:.2f`x the best fixed choice here.
# - `device` is not bit-identical: its input differs from `stock`'s by at most
#   {glue:text}`pre_device_max_levels:.1f` grey levels (mean {glue:text}`pre_device_mean_levels:.3f`).
#   With random weights that is enough to move some mask boundaries (see the ladder's agreement columns);
#   agreement between random-weight models is not mAP.
# - Decoding (`load`) is the part no variant touches; at 3840x2304 it is the larger cost (table above).

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output"]
book.environment_table(rec.run_id)
