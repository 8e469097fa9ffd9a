"""OpenVINO's first call per input shape: tracing the backbone at each shape against tracing it once and reshaping
(a benchmark, not a test).

    python benchmarks/openvino_trace.py [--quick] [--out rows.csv]

Mask R-CNN R-50-FPN's backbone, conditioned random weights, as ``runtimes.RuntimeModule`` runs it in OpenVINO
(bf16 hint). Four first calls, each from an empty cache: at the small size; at the large size after the small one
(the trace is reused and reshaped); at the large size alone, traced at that size; and at the large size alone traced
on a crop (``runtimes.TRACE_SIDE``, what the library does). The first three trace at the input's own size. Then
the small size's compiled model from its own trace against one reshaped from a trace at the large size, timed in
alternating rounds.
Prints the table; with --out, appends the tidy rows (stage ``backbone``) and records the environment beside them.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

import mmdet_speedup as ms
from mmdet_speedup import runtimes as R
from mmdet_speedup.timing import benchmark, summarize


def first_call(model, x: torch.Tensor) -> dict:
    m = R.RuntimeModule(model.backbone, "openvino", "bf16", "backbone")
    with torch.no_grad():
        m(x)
    return m.conversions[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats: checks the script runs")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    (sw, sh), (lw, lh), reps = ((160, 96), (320, 192), 2) if a.quick else ((1344, 800), (3840, 2304), 5)
    rec = ms.Recorder(a.out or tempfile.mktemp(suffix=".csv"), notebook="benchmark", params=vars(a))
    print(f"run {rec.run_id} ({ms.environment.cpu_model()}), threads {torch.get_num_threads()}")
    model = ms.build_detector("mask-rcnn_r50_fpn_1x_coco", device="cpu",
                              workload=ms.Workload(scale=(lw, lh), dets_per_image=100))
    gen = torch.Generator().manual_seed(0)
    small, large = torch.randn(1, 3, sh, sw, generator=gen), torch.randn(1, 3, lh, lw, generator=gen)
    rows = []
    side, R.TRACE_SIDE = R.TRACE_SIDE, 1 << 30  # trace at the input's own size unless a row says otherwise

    def add(variant: str, size: torch.Tensor, c: dict, what: str) -> None:
        rows.append({"variant": variant, "input_size": f"{size.shape[3]}x{size.shape[2]}", "stage": "backbone",
                     "ms": c["seconds"] * 1e3, "message": what, "repeat": 0})
        print(f"{variant:<40} {c['seconds']:7.2f} s (trace {c['export_s']:.2f} s, compile {c['compile_s']:.2f} s)")

    R.clear_cache()
    add("first call, traced here", small, first_call(model, small), "first call")
    add("first call, trace reused and reshaped", large, first_call(model, large), "first call")
    R.clear_cache()
    add("first call, traced here", large, first_call(model, large), "first call")
    R.TRACE_SIDE = side
    R.clear_cache()
    add(f"first call, traced on a {side}-pixel crop", large, first_call(model, large), "first call")
    R.TRACE_SIDE = 1 << 30

    def compiled_at_small(after: torch.Tensor | None) -> R.Compiled:
        R.clear_cache()
        m = R.RuntimeModule(model.backbone, "openvino", "bf16", "backbone")
        with torch.no_grad():
            if after is not None:
                m(after)  # traced here; the small size then reshapes this trace
            m(small)
        return m.compiled(small)

    compiled = {"traced at its own shape": compiled_at_small(None), "reshaped from the large trace": compiled_at_small(large)}
    arrays = [small.numpy()]
    for rep in range(3):  # alternating rounds: drift lands on both alike
        for variant, c in compiled.items():
            for k, t in enumerate(benchmark(lambda c=c: c.run(arrays), warmup=1, repeats=reps)):
                rows.append({"variant": variant, "input_size": f"{sw}x{sh}", "stage": "backbone", "ms": t,
                             "message": "inference", "repeat": rep * reps + k})
    for variant in compiled:
        print(f"{variant:<40} {summarize([r['ms'] for r in rows if r['variant'] == variant])}")
    rec.write(rows)


if __name__ == "__main__":
    main()
