"""The main commands on a slow or failing machine, cascade detectors and refusals, interrupts and bad input.

Every run here writes rows and notebooks to a temporary folder, never to data/results/ or book/executed/.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO

RUNNER = REPO / "scripts" / "run_study.py"
CHAPTER = "01_preprocess"  # the quickest chapter at CI size
MODEL_PAGE = "00_model"


def _default_sigint():  # a background shell ignores SIGINT and children inherit that; a terminal would not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _runner(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


@pytest.fixture
def book_dir(tmp_path):
    """A folder of executed notebooks holding a previous copy of the chapter, and a results folder."""
    out = tmp_path / "book" / "executed"
    out.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "nbval" / f"{CHAPTER}.ipynb", out / f"{CHAPTER}.ipynb")
    return out, tmp_path / "results"


def _status(out: Path) -> dict:
    return json.loads((out / "status.json").read_text())[CHAPTER]


# -- the study runner ---------------------------------------------------------------------------------------
def test_over_budget_finishes_and_is_reported(book_dir):
    out, results = book_dir
    before = (out / f"{CHAPTER}.ipynb").read_bytes()
    r = _runner("quick", CHAPTER, "--out", str(out), "--results", str(results), "--budget", "1",
                env={"CEILING_FACTOR": "1000"})
    assert r.returncode == 0, r.stderr
    s = _status(out)
    assert s["status"] == "over budget" and s["seconds"] > 1
    assert f"{CHAPTER} took {s['seconds']:.0f} s, budget 1 s" in r.stdout
    assert "chapter" in r.stdout and "budget" in r.stdout and "status" in r.stdout  # the summary table
    assert (out / f"{CHAPTER}.ipynb").read_bytes() != before  # the new run replaced the old copy
    ledger = pd.read_csv(results / "runs.csv")
    assert list(ledger["status"]) == ["over budget"] and ledger["run_id"][0] == s["run_id"]
    rows = pd.read_csv(results / f"{CHAPTER}.csv")
    assert set(rows["run_id"]) == {s["run_id"]}  # the runner names the run its rows carry


def test_ceiling_stops_a_chapter_as_a_failure(book_dir):
    out, results = book_dir
    before = (out / f"{CHAPTER}.ipynb").read_bytes()
    r = _runner("quick", CHAPTER, "--out", str(out), "--results", str(results), "--budget", "2",
                env={"CEILING_FACTOR": "2"})
    assert r.returncode == 1
    s = _status(out)
    assert s["status"] == "failed" and "ceiling of 4 s" in s["message"]
    assert (out / f"{CHAPTER}.ipynb").read_bytes() == before
    assert "1 chapter(s) failed" in r.stderr


def _mini_book(root: Path, out: Path) -> Path:
    """A book of one chapter over ``out`` (the project's config, pages and status extension)."""
    (root / "book").mkdir(exist_ok=True)
    (root / "scripts").mkdir(exist_ok=True)
    shutil.copy(REPO / "_config.yml", root)
    shutil.copy(REPO / "book" / "intro.md", root / "book")
    shutil.copy(REPO / "book" / "method.md", root / "book")
    shutil.copy(REPO / "scripts" / "chapter_status.py", root / "scripts")
    (root / "vendor").symlink_to(REPO / "vendor")  # MathJax, vendored by `make html`
    shutil.copy(REPO / "tests" / "nbval" / f"{MODEL_PAGE}.ipynb", out)  # intro and method link to it
    rel = out.relative_to(root).as_posix()
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/method\n"
                                   f"  - file: {rel}/{MODEL_PAGE}\n  - file: {rel}/{CHAPTER}\n")
    return root


def test_failed_chapter_keeps_the_previous_copy_and_the_book_builds(book_dir, tmp_path):
    out, results = book_dir
    before = (out / f"{CHAPTER}.ipynb").read_bytes()
    r = _runner("quick", CHAPTER, "--out", str(out), "--results", str(results), "-p", "threads", "0")
    assert r.returncode == 1
    s = _status(out)
    assert s["status"] == "failed"
    assert s["message"] == "InputError: parameter threads: threads must be positive, got 0"
    assert s["rerun"].endswith(f"run_study.py quick {CHAPTER} -p threads 0")
    assert s["rebuild"] == "bash scripts/build_html.sh quick"
    assert (out / f"{CHAPTER}.ipynb").read_bytes() == before
    assert (REPO / s["failed_copy"]).is_file() and not list(out.parent.rglob("*.failed.ipynb"))
    assert pd.read_csv(results / "runs.csv")["status"].tolist() == ["failed"]

    root = _mini_book(tmp_path, out)
    jb = Path(sys.executable).parent / "jupyter-book"
    b = subprocess.run([str(jb), "build", str(root), "-W", "-n", "--keep-going", "--builder", "html"],
                       capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    page = (root / "_build" / "html" / out.relative_to(root) / f"{CHAPTER}.html").read_text()
    assert "The last run of this chapter failed" in page and "threads must be positive" in page
    assert "run_study.py" in page and "chapter-failed" in page
    intro = (root / "_build" / "html" / "book" / "intro.html").read_text()
    assert "chapter-failed" not in intro


def test_a_chapter_that_never_succeeded_gets_a_placeholder_page(tmp_path):
    out = tmp_path / "executed"
    r = _runner("quick", CHAPTER, "--out", str(out), "--results", str(tmp_path / "rows"), "-p", "repeats", "0")
    assert r.returncode == 1
    nb = json.loads((out / f"{CHAPTER}.ipynb").read_text())
    assert "no successful run" in "".join(nb["cells"][0]["source"])


@pytest.mark.parametrize("args, message", [
    (["-p", "repeats", "abc"], "parameter repeats must be int like its default 2, got str 'abc'"),
    (["-p", "input_sizes", "640x480"], "parameter input_sizes must be list"),
    (["-p", "no_such", "1"], "no chapter has parameter(s) no_such"),
])
def test_runner_checks_parameter_types_before_any_work(tmp_path, args, message):
    r = _runner("quick", CHAPTER, "--out", str(tmp_path / "out"), "--results", str(tmp_path / "rows"), *args,
                timeout=120)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "rows").exists()


def test_interrupting_the_runner_names_the_chapter_and_keeps_the_copy(book_dir):
    out, results = book_dir
    before = (out / f"{CHAPTER}.ipynb").read_bytes()
    p = subprocess.Popen([sys.executable, str(RUNNER), "quick", CHAPTER, "--out", str(out), "--results", str(results)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                         preexec_fn=_default_sigint)
    line = p.stdout.readline()
    while line and not line.startswith(f"=== {CHAPTER}"):
        line = p.stdout.readline()
    time.sleep(3)  # papermill and its kernel are up
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130
    assert f"interrupted in {CHAPTER}" in err and "is unchanged" in err
    assert (out / f"{CHAPTER}.ipynb").read_bytes() == before
    assert _status(out)["status"] == "interrupted"
    assert pd.read_csv(results / "runs.csv")["status"].tolist() == ["interrupted"]


def test_rows_of_unfinished_runs_are_kept_but_not_read_back(tmp_path):
    from mmdet_speedup import book

    pd.DataFrame({"run_id": ["good", "bad", "good"], "ms": [1.0, 99.0, 2.0]}).to_csv(tmp_path / "x.csv", index=False)
    pd.DataFrame({"run_id": ["good", "bad"], "status": ["ok", "failed"]}).to_csv(tmp_path / "runs.csv", index=False)
    assert book.load_rows(tmp_path / "x.csv")["ms"].tolist() == [1.0, 2.0]
    assert len(pd.read_csv(tmp_path / "x.csv")) == 3  # still in the file


# -- a chapter's parameters given straight to papermill ------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    ({"threads": "abc"}, "threads must be an integer"),
    ({"threads": -1}, "threads must be positive"),
    ({"repeats": 1.5}, "repeats must be an integer"),
    ({"warmup": -1}, "warmup must be >= 0"),
    ({"scale": "0x0"}, "positive WxH"),
    ({"input_sizes": "640x480"}, "non-empty list"),
    ({"cases": ["1333x800"]}, "cases entries look like"),
    ({"device": "gpu"}, "unknown device"),
    ({"checkpoint": "/nonexistent.pth"}, "checkpoint not found"),
    ({"config": 3}, "parameter config: must be a config name or path, got 3"),
])
def test_chapter_parameters_are_checked(params, message):
    from mmdet_speedup import book
    from mmdet_speedup.checks import InputError

    with pytest.raises(InputError, match=message):
        book.Chapter("x", {"device": "cpu", "threads": 2, **params})


# -- the CLI ------------------------------------------------------------------------------------------------
def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mmdet_speedup", "profile", *args], capture_output=True,
                          text=True, timeout=timeout)


def _bad_inputs(tmp: Path) -> list:
    (tmp / "dir").mkdir(exist_ok=True)
    (tmp / "not.pth").write_text("hello")
    return [
        (["--scale", "0x0"], "positive WxH"), (["--scale=-5x3"], "positive WxH"),
        (["--scale", "-5x3"], "a value that starts with '-' is written --option=VALUE"), (["--scale", "abc"], "WxH"),
        (["--input-size", "0x0"], "positive WxH"), (["--scale", ","], "scale is empty"),
        (["--threads", "0"], "threads must be positive"), (["--threads", "-2"], "threads must be positive"),
        (["--repeats", "0"], "repeats must be positive"), (["--warmup", "-1"], "warmup must be >= 0"),
        (["--dets", "0"], "dets must be positive"), (["--precision", "fp8"], "unknown precision"),
        (["--image", str(tmp / "dir")], "is a directory"), (["--image"], "expected at least one argument"),
        (["--image", str(tmp / "not.pth")], "could not decode"),
        (["--checkpoint", str(tmp / "not.pth")], "not a PyTorch checkpoint"),
        (["--checkpoint", str(tmp / "dir")], "is a directory"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 needs CUDA"),
        (["--out", str(tmp / "dir")], "is a directory"),
    ]


def test_cli_bad_input_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "rows.csv"
    for args, message in _bad_inputs(tmp_path):
        r = _cli("mask-rcnn_r50_fpn_1x_coco", *args, *([] if "--out" in args else ["--out", str(out)]), timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, r.stderr)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, (args, r.stderr)
        assert not out.exists(), args  # nothing ran


def test_cli_hides_internal_errors_unless_asked(monkeypatch, capsys):
    from mmdet_speedup import cli

    def boom(args, state):
        raise KeyError("internal detail")

    monkeypatch.setattr(cli, "profile", boom)
    assert cli.main(["profile", "mask-rcnn_r50_fpn_1x_coco"]) == 3
    err = capsys.readouterr().err
    assert "internal detail" not in err and "unexpected KeyError" in err and "--traceback" in err
    with pytest.raises(KeyError, match="internal detail"):
        cli.main(["profile", "mask-rcnn_r50_fpn_1x_coco", "--traceback"])


def test_cli_interrupt_says_what_it_kept(image, tmp_path):
    out = tmp_path / "rows.csv"
    p = subprocess.Popen([sys.executable, "-m", "mmdet_speedup", "profile", "mask-rcnn_r50_fpn_1x_coco", "--image",
                          str(image), "--scale", "320x224", "--dets", "10", "--repeats", "200", "--warmup", "0",
                          "--device", "cpu", "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 300
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(line) == 1, err
    rows = pd.read_csv(out)
    assert line[0] == (f"interrupted: {len(rows)} rows written to {out} under run id {rows['run_id'].iloc[0]}")


# -- cascade detectors and refusals -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("config", ["cascade-mask-rcnn_r50_fpn_1x_coco", "cascade-rcnn_r50_fpn_1x_coco"])
def test_cascade_is_profiled_per_stage_and_matches_mmdet(config, image, tmp_path):
    import mmdet_speedup as ms
    from mmdet_speedup import stages as S

    model = ms.build_detector(config, device="cpu", workload=ms.Workload(scale=(320, 224), dets_per_image=20,
                                                                         rpn_proposals=100))
    ref, got = ms.stock_test_step(model, image), ms.StagedPipeline(model, ms.STOCK, "cpu")(image)
    assert len(ref) > 0 and ms.identical(ref, got)
    rows = ms.Profiler(model, device="cpu", repeats=1, warmup=0).run(
        {"stock": ms.STOCK, "raw": ms.STOCK.replace(masks="raw")} if "mask" in config else {"stock": ms.STOCK},
        ms.prepare_inputs([image]))
    assert (rows["status"] == "ok").all(), rows.get("message")
    stages = set(rows["stage"])
    assert {S.cascade_stage(S.ROI_BBOX, i) for i in range(3)} <= stages
    assert ({S.cascade_stage(S.ROI_MASK, i) for i in range(3)} <= stages) == ("mask" in config)
    t = ms.stage_table(rows)
    nested = t[[S.cascade_stage(S.ROI_BBOX, i) for i in range(3)]].sum(axis=1)
    assert (nested <= t[S.ROI_BBOX]).all()  # nested inside roi_bbox, not added to it
    assert rows["dets_out"].max() > 0


@pytest.mark.slow
def test_cascade_cli_profile(image, tmp_path):
    out = tmp_path / "rows.csv"
    r = _cli("cascade-mask-rcnn_r50_fpn_1x_coco", "--image", str(image), "--scale", "320x224", "--dets", "10",
             "--repeats", "1", "--warmup", "0", "--device", "cpu", "--masks", "full,raw", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "roi_mask.stage3" in r.stdout and (pd.read_csv(out)["status"] == "ok").all()


@pytest.mark.parametrize("config, names", [
    ("htc_r50_fpn_1x_coco", ["HybridTaskCascade", "HybridTaskCascadeRoIHead", "semantic"]),
    ("sparse-rcnn_r50_fpn_1x_coco", ["SparseRCNN", "query-based", "EmbeddingRPNHead"]),
    ("queryinst_r50_fpn_1x_coco", ["QueryInst", "query-based"]),
    ("point-rend_r50-caffe_fpn_ms-1x_coco", ["PointRend", "PointRendRoIHead"]),
    ("ms-rcnn_r50-caffe_fpn_1x_coco", ["MaskScoringRCNN", "MaskScoringRoIHead"]),
    ("grid-rcnn_r50_fpn_gn-head_1x_coco", ["GridRCNN", "GridRoIHead"]),
    ("dh-faster-rcnn_r50_fpn_1x_coco", ["DoubleHeadRoIHead"]),
    ("sabl-faster-rcnn_r50_fpn_1x_coco", ["SABLHead"]),
    ("tridentnet_r50-caffe_1x_coco", ["TridentFasterRCNN"]),
    ("panoptic-fpn_r50_fpn_1x_coco", ["PanopticFPN", "predict"]),
    ("scnet_r50_fpn_1x_coco", ["SCNet"]),
    ("retinanet_r50-caffe_fpn_1x_coco", ["RetinaNet", "not a two-stage detector"]),
])
def test_unsplittable_detectors_are_refused_in_one_line(config, names):
    from mmdet_speedup import UnsupportedModelError
    from mmdet_speedup.models import load_config

    with pytest.raises(UnsupportedModelError) as e:
        load_config(config)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_refusal_reaches_the_cli_in_one_line():
    r = _cli("sparse-rcnn_r50_fpn_1x_coco", timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: SparseRCNN is query-based: its EmbeddingRPNHead learns a fixed set of proposal boxes, so there is "
        "no RPN stage to split")


def test_a_built_model_is_refused_too(mask_rcnn):
    import copy

    from mmdet_speedup import STOCK, StagedPipeline, UnsupportedModelError

    m = copy.copy(mask_rcnn)
    m.__class__ = type("MyDetector", (type(mask_rcnn),), {"predict": lambda self, *a, **k: None})
    with pytest.raises(UnsupportedModelError, match="MyDetector overrides predict"):
        StagedPipeline(m, STOCK, "cpu")
