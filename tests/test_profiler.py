import csv

import pandas as pd
import pytest

from mmdet_speedup import stages as S
from mmdet_speedup.pipeline import STOCK, Choices, StagedPipeline
from mmdet_speedup.profiler import Profiler, prepare_inputs, stage_gap, stage_table
from mmdet_speedup.records import COLUMNS, Recorder
from mmdet_speedup.timing import StageTimer, summarize

from .conftest import TickClock

REQUIRED = ("run_id timestamp git_sha benchmark_version notebook config variant preprocess precision channels_last "
            "masks device dtype threads input_size scale rpn_pre_nms dets_per_image stage repeat ms peak_mem_mb "
            "status message rpn_nms_in bbox_nms_in dets_out").split()


def test_stage_names_defined_once():
    assert len(set(S.ALL)) == len(S.ALL)
    assert S.STAGES[0] == "load" and S.STAGES[-1] == "mask_postprocess"
    assert all(S.parent(n) in S.STAGES for n in S.NESTED)


def test_csv_schema_has_required_columns():
    assert set(REQUIRED) <= set(COLUMNS)


def test_summary_percentiles():
    s = summarize(list(range(1, 11)))
    assert s.n == 10 and s.median == 5.5 and s.p10 == pytest.approx(1.9) and s.p90 == pytest.approx(9.1)


def test_timer_nested_and_clock():
    t = StageTimer("cpu", clock=TickClock(), record_function=False)
    with t.stage("rpn"):
        with t.stage("rpn.nms"):
            pass
    assert t.ms() == {"rpn.nms": 1000.0, "rpn": 3000.0}


def test_profiled_path_returns_same_detections(mask_rcnn, image, stock_dets):
    from mmdet_speedup import identical

    pipe = StagedPipeline(mask_rcnn, STOCK, "cpu")
    plain = pipe(image)
    timed = pipe(image, StageTimer("cpu"))
    assert identical(plain, stock_dets), "staged stock path differs from model.test_step"
    assert identical(timed, stock_dets), "profiling changed the result"
    assert len(stock_dets) >= 50 and plain.counts["rpn_nms_in"] > 0 and plain.counts["bbox_nms_in"] > 0


def test_stage_accounting_with_injected_clock(mask_rcnn, image, tmp_path):
    samples = prepare_inputs([image], "640x480")
    rec = Recorder(tmp_path / "rows.csv", notebook="test")
    prof = Profiler(mask_rcnn, device="cpu", recorder=rec, repeats=2, warmup=0, clock=TickClock())
    df = prof.run({"stock": STOCK}, samples)
    one = df[df["repeat"] == 0].set_index("stage")["ms"]
    top = [s for s in S.STAGES if s in one.index]
    assert top == list(S.STAGES)  # FPN: every stage present, in order
    # each top-level stage is two clock reads apart unless it holds a nested stage (two reads more)
    assert one["rpn"] == one["rpn.nms"] + 2000 and one["roi_bbox"] == one["roi_bbox.nms"] + 2000
    # total is its own pair of reads around everything: parts + one tick per gap between them
    assert one["total"] == one[top].sum() + 1000 * (len(top) + 1)
    gap = stage_gap(df)
    assert gap.loc["stock", "sum_of_stages"] == pytest.approx(one[top].sum())
    with open(tmp_path / "rows.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(df) and set(rows[0]) == set(COLUMNS)
    assert {r["stage"] for r in rows} == set(top) | {"total", "rpn.nms", "roi_bbox.nms"}
    assert rows[0]["input_size"] == "640x480" and rows[0]["scale"] == "480x320"


def test_c4_has_no_neck_row(image):
    from mmdet_speedup import Workload, build_detector

    m = build_detector("faster-rcnn_r50-caffe_c4-1x_coco", device="cpu",
                       workload=Workload(scale=(320, 224), dets_per_image=20, rpn_pre_nms=600, rpn_proposals=100))
    df = Profiler(m, device="cpu", repeats=1, warmup=0).run({"c4": STOCK}, prepare_inputs([image]))
    assert "neck" not in set(df["stage"]) and "backbone" in set(df["stage"])
    assert "roi_mask" not in set(df["stage"])


def test_failed_variant_becomes_error_row_and_sweep_goes_on(mask_rcnn, image, tmp_path):
    rec = Recorder(tmp_path / "rows.csv", notebook="test")
    prof = Profiler(mask_rcnn, device="cpu", recorder=rec, repeats=1, warmup=0)
    bad = Choices(precision="bf16-weights")
    prof.pipeline = lambda c, _orig=prof.pipeline: (_ for _ in ()).throw(RuntimeError("boom")) if c is bad else _orig(c)
    df = prof.run({"bad": bad, "stock": STOCK}, prepare_inputs([image], "320x240"))
    err = df[df["status"] == "error"]
    assert list(err["variant"]) == ["bad"] and "boom" in err["message"].iloc[0]
    assert (df[df["variant"] == "stock"]["status"] == "ok").all()
    written = pd.read_csv(tmp_path / "rows.csv")
    assert set(written["variant"]) == {"bad", "stock"} and (written["status"] == "error").sum() == 1


def test_stage_table_is_per_image():
    rows = []
    for img in ("a", "b"):
        for rep in (0, 1):
            rows += [dict(variant="v", stage="backbone", repeat=rep, ms=10.0, image=img, status="ok"),
                     dict(variant="v", stage="total", repeat=rep, ms=12.0, image=img, status="ok")]
    t = stage_table(pd.DataFrame(rows))
    assert t.loc["v", "backbone"] == 10.0 and t.loc["v", "total"] == 12.0


def test_peak_memory_sees_an_allocation_and_resets():
    from mmdet_speedup.timing import PeakMemory

    import mmap

    with PeakMemory("cpu") as big:
        buf = mmap.mmap(-1, 64 * 2**20)  # fresh pages: a malloc could reuse pages already resident
        for i in range(0, len(buf), 4096):
            buf[i] = 1
        buf.close()
    with PeakMemory("cpu") as small:
        pass
    if not big.reset:
        pytest.skip("/proc/self/clear_refs refused: the high-water mark cannot be reset here")
    assert big.peak_mb >= 60 and small.peak_mb < 20


def test_recorder_sets_aside_rows_with_other_columns(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("run_id,ms\nold,1.0\n")
    rec = Recorder(path, notebook="test")
    rec.write([{"variant": "v", "stage": "total", "ms": 2.0}])
    old = list(tmp_path.glob("rows.old-*.csv"))
    assert len(old) == 1 and old[0].read_text() == "run_id,ms\nold,1.0\n"  # nothing lost
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)


def test_book_start_records_resolved_device_and_params(tmp_path, monkeypatch, capsys):
    import json

    import torch

    from mmdet_speedup import book

    monkeypatch.setenv("MMDET_SPEEDUP_RESULTS", str(tmp_path))
    before = torch.get_num_threads()
    try:
        dev, rec = book.start("99_test", device="auto", threads=1, scale="480x320")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert dev.type in ("cpu", "cuda") and rec.path == tmp_path / "99_test.csv"
    env = json.loads((tmp_path / "environment" / f"{rec.run_id}.json").read_text())
    assert env["params"] == {"device": str(dev), "threads": 1, "scale": "480x320"}
    assert rec.run_id in capsys.readouterr().out
    with pytest.raises(KeyError):
        book.start("99_test", device="cpu")  # threads is required


def test_git_sha_ignores_the_run_outputs_but_not_code(tmp_path, monkeypatch):
    import subprocess

    from mmdet_speedup import records

    def git(*a):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True,
                       capture_output=True)

    for rel in ("src.py", "book/executed/01.ipynb", "data/results/01.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "x")
    monkeypatch.setattr(records, "REPO_ROOT", tmp_path)
    clean = records.git_sha()
    assert clean != "unknown" and not clean.endswith("-dirty")
    (tmp_path / "book/executed/01.ipynb").write_text("b")
    (tmp_path / "data/results/01.csv").write_text("b")
    assert records.git_sha() == clean
    (tmp_path / "src.py").write_text("b")
    assert records.git_sha() == clean + "-dirty"
