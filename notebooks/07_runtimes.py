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
# # Runtimes: what a CPU user would pick instead
#
# **In short** (generated from this run's rows; the method follows):
#
# {glue:md}`rt_versus`

# %% [markdown] tags=["method"]
# Someone deploying Mask R-CNN on a CPU will ask: should I just export the model to ONNX Runtime or OpenVINO?
# This chapter answers with one interleaved sweep per case, every row on the same model, weights, image and
# workload, against `stock` (mmdet as shipped) and held to the `stock (A/A)` noise floor. A case reads
# `<input size>><model scale>`: `3840x2304>1333x800` is a 3840x2304 image run through a model whose test
# pipeline resizes it to 1333x800; `3840x2304>3840x2304` runs the model at the image's own size. Two kinds of rows:
#
# | rows | what runs |
# |---|---|
# | `stock`, `stock (A/A)` | mmdet 3.3 in eager PyTorch, fp32 |
# | `torch auto (eager)`, `torch auto (compiled)` | the library's own levers (`Choices.auto`): bf16 autocast where the CPU has bf16 instructions, channels_last, raw masks, threaded RoIAlign; then TorchInductor for backbone and neck |
# | `ov fp32`, `ov bf16`, `ort fp32` | the staged pipeline with backbone, neck, RPN head and the RoI heads' convolutions and linears converted to OpenVINO or ONNX Runtime (`Choices(runtime=...)`); RoIAlign, NMS, box decoding and masks stay as in `stock` |
# | `ov auto (...)`, `ort auto (...)` | the same runtimes with the library's other levers on top |
# | `ov int8 (changes results)` | the same parts in OpenVINO int8: NNCF post-training quantization calibrated on train-split images at this case's size, never the timed or scored ones (what each part receives from them in fp32); the rest of each part in bf16 where the CPU has it |
# | `ov int8 auto (changes results)` | the same int8 parts with the library's other levers on top, like `ov auto` |
# | `mmdeploy → ...` | the whole model as a user deploys it: mmdeploy 1.3.1's end-to-end export, run in ONNX Runtime or OpenVINO, with mmdeploy's own pre-processing and full-image mask paste (stage `graph` is everything from backbone to mask logits) |
#
# OpenVINO's CPU plugin runs bf16 by default on a CPU with AVX-512 BF16 or AMX, so the fp32 rows set
# `INFERENCE_PRECISION_HINT=f32` explicitly. What each row costs before its first image (export, compile) is
# measured separately: a user pays it once per model and input shape.

# %% tags=["parameters", "hide-cell"]
device = "auto"
config = "mask-rcnn_r50_fpn_1x_coco"
checkpoint = None
cases = ["480x320>480x320"]
dets = 50
rpn_proposals = 300
n_images = 1
val_images = 4
val_large_images = 2
n_stream = 4
repeats = 3
sweep_budget_s = None
warmup = 1
threads = 2

# %% tags=["hide-cell"]
# %matplotlib inline
import mmdet_speedup as ms
from mmdet_speedup import book, roofline, stages as S, stats
from mmdet_speedup.study import cases as case_tables, runtimes as peers, words

ch = book.Chapter("07_runtimes", globals())
bf16 = ms.environment.cpu_has_bf16()  # bf16 rows only where the CPU has the instructions
STAGED = peers.staged_rows(ch.device, bf16)

# %% tags=["nbval-ignore-output", "hide-cell"]
done = {case: peers.run_case(ch, case, STAGED, bf16) for case in cases}

# %% [markdown] tags=["method"]
# ## Side by side
# Median ms per image per stage, the speed-up against `stock` with its interval over `n` repeats (paired by
# repeat; the method page says when it is a 95% bootstrap interval and when a range) and verdict held to the A/A
# floor, and each row's accuracy against `stock`: delta box and mask AP on the case's val images
# ({glue:text}`rt_scored`; one untimed pass per distinct numerics), with the method page's accuracy rule
# (`accuracy`). The agreement diagnostic beside it compares, on the timed image, the detections with
# score ≥ 0.3: matched both ways, box and mask IoU (`results`: exact, preserves results, changes results).

# %% tags=["nbval-ignore-output", "hide-input"]
rows, eq, acc = ch.rows(), ch.rows("07_runtimes_equivalence"), ch.rows("07_runtimes_accuracy")
order = [*STAGED, *[v for v in dict.fromkeys(rows["variant"]) if v not in STAGED]]
tables = case_tables.case_tables(rows, eq, cases, order, acc)
ch.glue(rt_scored="; ".join(f"{c}: {int(n)} images" for c, n in acc.groupby("case")["images"].max().items()))
for case, t in tables.items():
    print(f"case {case}: {done[case]['traded']}")
    book.show_table(t, 2, columns=["runtime", S.TOTAL, "speed-up", "lo", "hi", "verdict", "Δ box AP", "accuracy"],
                    full="Per stage, workload, accuracy, agreement")
    book.show_table(t[["matched_ref", "box_iou_mean", "mask_iou_mean"]].join(done[case]["first_call"]), 2,
                    columns=["matched_ref", "mask_iou_mean", "first-call s"], full="Agreement and first-call costs")

# %% tags=["hide-input"]
_ = book.profile_figure({case: (t, stats.ratio_table(rows[rows["case"] == case], peers.BASE, aa=peers.AA))
                         for case, t in tables.items()}, peers.AA, S.WITH_GRAPH, "against stock")

# %% [markdown] tags=["method"]
# ## How far from the machine's limit
# The counted stages (backbone, neck, RPN head: `torch.utils.flop_counter`'s FLOPs for this model and input) of
# each row, as a percentage of this machine's peak for the dtype the row computes in (fp32, bf16 or int8),
# measured by micro-benchmarks in this run and kept in its environment record: the highest of torch's 2048x2048
# matrix multiply and a 3x3 convolution timed in torch and in OpenVINO (`roofline.measure_peaks`), not the
# vendor's figure. The deployed graphs have no per-stage times and are left out. A runtime's own graph may fuse
# or skip work the counter sees, so a percentage is the counted work over the time, not a utilisation counter; a
# runtime that computes the counted convolutions in fewer operations (Winograd) can read above 100%.

# %% tags=["nbval-ignore-output", "hide-input"]
peaks = roofline.measure_peaks(ch.device.type)
ch.record_environment(roofline_peaks=peaks)
for case, t in tables.items():
    print(f"case {case}")
    book.show_table(peers.percent_of_peak(t, rows[rows["case"] == case], done[case]["flops"], peaks), 1)

# %% [markdown] tags=["method"]
# ## The library against the deployed model
# Per precision, the staged row that pastes full-image masks (the deployed graphs' output) with the lowest median
# against the deployed row with the lowest median at the same precision (lowest median is a label, not a
# ranking); the ratio is the deployed row's time over the staged row's.

# %% tags=["nbval-ignore-output", "hide-input"]
versus = {case: peers.versus_deployed(rows[rows["case"] == case]) for case in cases}
for case, v in versus.items():
    print(f"case {case}")
    book.show_table(v, 2)
ch.glue(rt_case0=cases[0], rt_export0=done[cases[0]]["export"]["export_s"])

# %% [markdown] tags=["method"]
# ## Serving many images: throughput mode
# The deployed graph in OpenVINO compiled for latency (one request in flight) against the same graph compiled with
# the `THROUGHPUT` hint (OpenVINO's optimal number of requests in flight, `requests`), end to end over a stream of
# `n_stream` images at the first case's input size: images per second, and the ratio with its interval, held to
# the floor of this sweep's own A/A row (the first latency row run twice).

# %% tags=["nbval-ignore-output", "hide-input"]
tp = peers.run_throughput(ch, cases[0], done[cases[0]]["export"], bf16, n_stream)
print(tp.attrs.get("repeats", ""))
book.show_table(tp.set_index("row"), 2, columns=["images/s", "requests", "ratio", "lo", "hi"])
words.glue_all(peers.findings(rows, cases, versus, tp, acc))
ch.glue(rt_acc_rule=words.accuracy_sentence(acc[acc["case"] == cases[0]]))

# %% [markdown]
# ## What to take away
#
# At {glue:text}`rt_case0`, every row against `stock`, end to end:
#
# {glue:md}`rt_findings`
#
# Each row's accuracy against `stock` at {glue:text}`rt_case0`:
#
# {glue:md}`rt_accuracy`
#
# {glue:text}`rt_acc_rule`
#
# The staged pipeline against the whole model deployed with mmdeploy, at each case and precision:
#
# {glue:md}`rt_versus`
#
# int8 against `ov bf16` on the converted stages (backbone to `roi_mask`): {glue:text}`rt_int8`; with the
# library's other levers on both sides (`ov int8 auto` against `ov auto (bf16)`): {glue:text}`rt_int8_auto`.
# Their accuracy against `stock` is in the table above.
#
# Serving a stream of images, throughput mode against latency mode on the same graph:
#
# {glue:md}`rt_throughput`
#
# mmdeploy's export of this model took {glue:text}`rt_export0:.0f` s. What it costs a user beyond that: mmdeploy
# 1.3.1 pins `protobuf<=3.20.2`, which onnx 1.23 cannot use, so it installs `--no-deps`
# (`scripts/setup_mmdeploy.sh`); on torch 2.14 its export needs two shims (`dynamo=False`, a restored
# `_cast_Long`); a static export fixes the input shape, and its graph differs from mmdet's test path by design
# (its RPN NMS suppresses across all levels, where mmdet's batched call suppresses within each level; zero-size
# proposals kept; one box per RoI: `deploy.py` lists them); its accuracy and agreement figures above compare its
# outputs with `stock`'s.

# %% [markdown]
# ## Environment of this run
# Recorded by the run itself (`data/results/environment/<run_id>.json`), not typed.

# %% tags=["nbval-ignore-output", "hide-input"]
ch.end()
