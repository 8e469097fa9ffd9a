"""One row of the runtimes chapter, built and run alone in this process at one size: time and memory after each
step. Shows which rows a large case can hold (``study.runtimes.LARGE_ROWS``, ``TOO_LARGE``); a row the kernel kills
for memory ends this process (exit 137), so run each row in its own process:

    .venv/bin/python scripts/probe_row_memory.py int8 --size 3840x2304

Rows: ``int8`` (``ov int8 auto``: NNCF calibration, quantization, first pass), ``ov-bf16`` (``ov auto (bf16)``),
``mmdeploy`` (mmdeploy's export, then the graph in OpenVINO bf16). Not a benchmark: one pass, printed.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import psutil
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("row", choices=("int8", "ov-bf16", "mmdeploy"))
    p.add_argument("--size", default="3840x2304")
    p.add_argument("--config", default="mask-rcnn_r50_fpn_1x_coco")
    a = p.parse_args()

    from mmdet_speedup.study import runtimes as peers
    from mmdet_speedup.book import default_images
    from mmdet_speedup.choices import Choices
    from mmdet_speedup.models import Workload, build_detector, parse_size
    from mmdet_speedup.pipeline import StagedPipeline, load_image
    from mmdet_speedup.profiler import prepare_inputs

    start, proc = time.time(), psutil.Process()

    def mark(step: str) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"[{a.row} {a.size}] {step}: {time.time() - start:.0f} s, rss {proc.memory_info().rss / 2**20:.0f} MB,"
              f" peak {peak:.0f} MB, available {psutil.virtual_memory().available / 2**20:.0f} MB", flush=True)

    model = build_detector(a.config, device="cpu", workload=Workload(scale=parse_size(a.size)))
    image = load_image(prepare_inputs(default_images(1), a.size)[0].data)
    mark("model built")
    if a.row == "int8":
        run = peers.int8_pipeline(model, [image], "cpu", peers.INT8_AUTO_CHOICES)
        mark("calibrated")
    elif a.row == "ov-bf16":
        run = StagedPipeline(model, Choices.auto(runtime="openvino", precision="bf16"), "cpu")
    else:
        from mmdet_speedup.deploy import DeployedModel, export_end2end

        tmp = tempfile.TemporaryDirectory(prefix="mmdeploy-")  # removed at exit with its 170 MB graph
        ex = export_end2end(model, image, Path(tmp.name) / "end2end.onnx")
        mark(f"exported ({ex.seconds:.0f} s)")
        run = DeployedModel(ex.path, "openvino", "bf16")
        mark("graph compiled")
    for step in ("first pass", "second pass"):
        run(image)
        mark(step)


if __name__ == "__main__":
    main()
