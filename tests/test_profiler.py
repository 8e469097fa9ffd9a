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


@pytest.fixture(scope="module")
def ticked(mask_rcnn, image, tmp_path_factory):
    """One recorded profile of the stock Mask R-CNN on one 640x480 input, two repeats, timed by a ``TickClock``."""
    path = tmp_path_factory.mktemp("ticked") / "rows.csv"
    prof = Profiler(mask_rcnn, device="cpu", recorder=Recorder(path, notebook="test"), repeats=2, warmup=0,
                    clock=TickClock())
    df = prof.run({"stock": STOCK}, prepare_inputs([image], "640x480"))
    with open(path) as f:
        return df, list(csv.DictReader(f))


def test_stage_names_defined_once(ticked):
    """The names a profiled run records are ``stages``' own (each defined once), top-level ones in pipeline order,
    every nested one inside the parent ``stages`` gives it."""
    df, _ = ticked
    assert len(set(S.ALL)) == len(S.ALL)
    recorded = list(dict.fromkeys(df["stage"]))  # in the order the timer closed them
    assert set(recorded) <= set(S.ALL), set(recorded) - set(S.ALL)
    assert [s for s in recorded if s in S.STAGES] == list(S.STAGES)  # FPN with masks: every stage, in order
    nested = [s for s in recorded if s in S.NESTED]
    assert nested == [S.RPN_NMS, S.ROI_BBOX_NMS]
    for n in nested:  # closed just before its parent: it ran inside it
        assert S.NESTED[n] == S.parent(n) and recorded[recorded.index(n) + 1] == S.NESTED[n]
    assert recorded[-1] == S.TOTAL


def test_csv_schema_has_required_columns(ticked):
    """The rows the profiler writes carry every column the study reads, filled in (``message`` only on errors)."""
    df, rows = ticked
    assert len(rows) == len(df) and list(rows[0]) == list(COLUMNS)
    for r in rows:
        assert r["status"] == "ok" and r["message"] == ""
        empty = [c for c in REQUIRED if c != "message" and r[c] == ""]
        assert not empty, (r["stage"], empty)
    assert {r["stage"] for r in rows} == set(df["stage"]) and {r["repeat"] for r in rows} == {"0", "1"}
    assert rows[0]["input_size"] == "640x480" and rows[0]["scale"] == "480x320" and rows[0]["dets_per_image"] == "60"
    assert all(0 < int(r["dets_out"]) <= 60 and int(r["rpn_nms_in"]) > int(r["bbox_nms_in"]) > 0 for r in rows)


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


def test_stage_accounting_with_injected_clock(ticked):
    """A TickClock advances 1 s per read, so a stage's ms counts the reads inside it: its own two edges (1000 ms)
    and two more per stage nested in it; ``total`` also gets one tick per edge between its parts."""
    df, _ = ticked
    for rep in (0, 1):
        one = df[df["repeat"] == rep].set_index("stage")["ms"]
        assert one[S.RPN_NMS] == one[S.ROI_BBOX_NMS] == 1000.0  # one NMS call each, nothing timed inside
        assert one[S.RPN] == one[S.ROI_BBOX] == 3000.0  # its own edges and its NMS's
        plain = [s for s in S.STAGES if s not in (S.RPN, S.ROI_BBOX)]
        assert (one[plain] == 1000.0).all(), one[plain]
        # 9 top-level stages and 2 nested: 22 reads inside total, so 23 ticks between total's own two
        assert one[S.TOTAL] == 23000.0 == one[list(S.STAGES)].sum() + 1000 * (len(S.STAGES) + 1)


def test_nested_stages_kept_out_of_the_sum(ticked):
    df, _ = ticked
    gap = stage_gap(df).loc["stock"]
    assert gap["sum_of_stages"] == 13000.0  # 7 plain stages x 1 s + rpn and roi_bbox x 3 s; their NMS not again
    assert gap["total"] == 23000.0 and gap["gap_pct"] == pytest.approx(100 * 10 / 23)
    t = stage_table(df)
    assert t.loc["stock", S.RPN_NMS] == 1000.0 and list(t.columns) == [c for c in S.ALL if c in set(df["stage"])]


def test_c4_has_no_neck_row(image):
    from mmdet_speedup import Workload, build_detector

    m = build_detector("faster-rcnn_r50-caffe_c4-1x_coco", device="cpu",
                       workload=Workload(scale=(320, 224), dets_per_image=20, rpn_pre_nms=600, rpn_proposals=100))
    df = Profiler(m, device="cpu", repeats=1, warmup=0).run({"c4": STOCK}, prepare_inputs([image]))
    assert "neck" not in set(df["stage"]) and "backbone" in set(df["stage"])
    assert "roi_mask" not in set(df["stage"])


def test_failed_variant_becomes_error_row_and_sweep_goes_on(mask_rcnn, image, tmp_path):
    """A variant that cannot be built (fp16 on the CPU) and variants that fail on an input (undecodable bytes)
    each become one error row naming the cause; the rest is still measured, and everything is written."""
    from mmdet_speedup.profiler import Sample

    rec = Recorder(tmp_path / "rows.csv", notebook="test")
    prof = Profiler(mask_rcnn, device="cpu", recorder=rec, repeats=2, warmup=0, clock=TickClock())
    good = prepare_inputs([image], "320x240")[0]
    df = prof.run({"fp16": Choices(precision="fp16"), "stock": STOCK}, [good])
    err = df[df["status"] == "error"]
    assert list(err["variant"]) == ["fp16"] and "fp16 needs CUDA" in err["message"].iloc[0]
    assert err["stage"].iloc[0] == S.TOTAL and err["repeat"].iloc[0] == -1 and err["ms"].isna().all()
    ok = df[df["variant"] == "stock"]
    assert (ok["status"] == "ok").all() and sorted(set(ok["repeat"])) == [0, 1]
    assert (ok.groupby("repeat")["stage"].apply(set) == set(S.STAGES) | {S.TOTAL, S.RPN_NMS, S.ROI_BBOX_NMS}).all()
    written = pd.read_csv(tmp_path / "rows.csv")
    assert len(written) == len(df) and list(written["status"]).count("error") == 1
    assert "fp16 needs CUDA" in written.loc[written["status"] == "error", "message"].iloc[0]

    bad = Sample("broken.jpg", b"not a jpeg", (1, 1))
    df = prof.run({"stock": STOCK, "legacy": Choices(preprocess="legacy")}, [good, bad])
    err = df[df["status"] == "error"]
    assert sorted(err["variant"]) == ["legacy", "stock"] and set(err["image"]) == {"broken.jpg"}
    assert err["message"].str.contains("could not decode").all()
    # each failed on the bad input of its first repeat and left the sweep; the good input before it was kept
    ok = df[df["status"] == "ok"]
    assert set(ok["image"]) == {good.name} and set(ok["repeat"]) == {0} and set(ok["variant"]) == {"stock", "legacy"}


def test_a_variant_short_of_memory_becomes_an_error_row_before_it_runs(mask_rcnn, image, monkeypatch):
    """With ``min_free_mb``, a variant whose first pass would start with less memory available is an error row
    that says so; one that finds enough runs; the sweep goes on either way."""
    import psutil
    from collections import namedtuple

    free = iter([10_000, 100])  # MB available before each variant's first pass
    vm = namedtuple("vm", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm(next(free) * 2**20))
    prof = Profiler(mask_rcnn, device="cpu", repeats=2, warmup=1, clock=TickClock(), min_free_mb=5000)
    good = prepare_inputs([image], "320x240")[0]
    df = prof.run({"stock": STOCK, "legacy": Choices(preprocess="legacy")}, [good])
    err = df[df["status"] == "error"]
    assert list(err["variant"]) == ["legacy"] and "100 MB available" in err["message"].iloc[0]
    assert set(df.loc[df["status"] == "ok", "variant"]) == {"stock"}
    assert set(df.loc[df["status"] == "ok", "repeat"]) == {0, 1}  # checked once, on the first pass only


def test_stage_table_is_per_image():
    """Per repeat, a stage's ms summed over the images; the median over repeats; divided by the image count.
    Error rows are left out; a nested stage gets its own column but stays out of ``stage_gap``'s sum."""
    per_image = {"a": {"backbone": 10.0, "rpn": 4.0, "rpn.nms": 3.0, "total": 20.0},
                 "b": {"backbone": 30.0, "rpn": 6.0, "rpn.nms": 5.0, "total": 50.0}}
    rows = [dict(variant="v", stage=st, repeat=rep, ms=ms * f, image=img, status="ok")
            for rep, f in enumerate((1, 2, 6)) for img, stages in per_image.items() for st, ms in stages.items()]
    rows += [dict(variant="w", stage=st, repeat=rep, ms=ms, image="a", status="ok")
             for rep in (0, 1) for st, ms in (("backbone", 7.0), ("total", 9.0))]
    rows.append(dict(variant="v", stage="total", repeat=-1, ms=float("nan"), image="a", status="error"))
    df = pd.DataFrame(rows)
    t = stage_table(df)
    # backbone: image sums 40, 80, 240 per repeat -> median 80 -> 40 per image (a mean would give 60)
    assert t.loc["v", "backbone"] == 40.0 and t.loc["v", "rpn"] == 10.0 and t.loc["v", "rpn.nms"] == 8.0
    assert t.loc["v", "total"] == 70.0 and t.loc["w", "backbone"] == 7.0 and t.loc["w", "total"] == 9.0
    assert list(t.columns) == ["backbone", "rpn", "total", "rpn.nms"]  # pipeline order, nested after total
    assert pd.isna(t.loc["w", "rpn"])
    gap = stage_gap(df)
    assert gap.loc["v", "sum_of_stages"] == 50.0  # backbone + rpn, not rpn.nms
    assert gap.loc["v", "gap_pct"] == pytest.approx(100 * 20 / 70) and gap.loc["w", "sum_of_stages"] == 7.0


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
    path.write_text("run_id,retired\nold,1.0\n")  # a column COLUMNS no longer has
    rec = Recorder(path, notebook="test")
    rec.write([{"variant": "v", "stage": "total", "ms": 2.0}])
    old = list(tmp_path.glob("rows.old-*.csv"))
    assert len(old) == 1 and old[0].read_text() == "run_id,retired\nold,1.0\n"  # nothing lost
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)


def test_chapter_reads_its_parameters_once_and_records_them(tmp_path, monkeypatch, capsys):
    import json

    import torch

    from mmdet_speedup import book

    monkeypatch.setenv("MMDET_SPEEDUP_RESULTS", str(tmp_path))
    namespace = {"__name__": "__main__", "In": [], "get_ipython": print, "torch": torch, "_private": 1,
                 "device": "auto", "threads": 1, "scale": "480x320", "input_sizes": ["320x240"], "checkpoint": None}
    before = torch.get_num_threads()
    try:
        ch = book.Chapter("99_test", namespace)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert ch.device.type in ("cpu", "cuda") and ch.rec.path == tmp_path / "99_test.csv"
    env = json.loads((tmp_path / "environment" / f"{ch.run_id}.json").read_text())
    assert env["params"] == {"device": str(ch.device), "threads": 1, "scale": "480x320",
                             "input_sizes": ["320x240"], "checkpoint": None}
    assert ch.run_id in capsys.readouterr().out
    with pytest.raises(KeyError):
        book.Chapter("99_test", {"device": "cpu"})  # threads is required
    scratch = ch.scratch
    (scratch / "graph.onnx").write_bytes(b"170 MB")
    assert ch.scratch == scratch and scratch.is_dir()
    ch.end()  # the end matter takes the run's throw-away files with it
    assert not scratch.exists()


def test_git_sha_ignores_the_run_outputs_but_not_code(tmp_path, monkeypatch):
    import subprocess

    from mmdet_speedup.environment import git_sha

    def git(*a):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True,
                       capture_output=True)

    for rel in ("src.py", "book/executed/01.ipynb", "data/results/01.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "x")
    monkeypatch.chdir(tmp_path)  # no _toc.yml above it: the project is the working directory
    clean = git_sha()
    assert clean != "unknown" and not clean.endswith("-dirty")
    (tmp_path / "book/executed/01.ipynb").write_text("b")
    (tmp_path / "data/results/01.csv").write_text("b")
    assert git_sha() == clean
    (tmp_path / "src.py").write_text("b")
    assert git_sha() == clean + "-dirty"
