"""The study runner's device switch (``run_study.py --device``, ``make book DEVICE=...``), without any notebook run.

``run_chapter`` is replaced by a stand-in that records what it was handed; everything around it (parameter
checks, output folders, status.json, the ledger) is the runner's own code, pointed at temporary folders.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from .conftest import REPO

CHAPTERS = ["01_preprocess", "02_precision"]


@pytest.fixture
def rs(monkeypatch):
    spec = importlib.util.spec_from_file_location("run_study_under_test", REPO / "scripts" / "run_study.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def runner(rs, tmp_path, monkeypatch):
    """The runner with its folders under ``tmp_path`` and a ``run_chapter`` that only records its arguments."""
    monkeypatch.setattr(rs, "OUT", {"study": tmp_path / "book" / "executed",
                                    "quick": tmp_path / "_build" / "quick" / "book" / "executed",
                                    "ci": tmp_path / "tests" / "nbval"})
    handed = []

    def run_chapter(chapter, size, out_dir, results, params, budget, rerun, device=None):
        handed.append(dict(chapter=chapter, out_dir=out_dir, results=results, params=params, rerun=rerun,
                           device=device))
        (out_dir / f"{chapter}.ipynb").write_text("{}")
        return rs.Outcome(chapter, "ok", 1.0, budget, f"run-{chapter}", "now", size, rerun=rerun,
                          device=device or "")

    monkeypatch.setattr(rs, "run_chapter", run_chapter)
    rs.handed = handed
    return rs


def gpu(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)


# -- arguments and folders --------------------------------------------------------------------------------------
def test_device_argument_choices(rs, capsys):
    with pytest.raises(SystemExit) as e:
        rs.main(["quick", "--device", "tpu"])
    assert e.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    assert rs.DEVICES == ("cpu", "cuda", "auto")


def test_output_folder_per_device(rs):
    for size in ("study", "quick"):
        assert rs.out_dir_for(size, None) == rs.out_dir_for(size, "cpu") == rs.OUT[size]
    assert rs.out_dir_for("study", "cuda") == REPO / "book" / "executed-cuda"
    assert rs.out_dir_for("quick", "cuda") == REPO / "_build" / "quick" / "book" / "executed-cuda"
    with pytest.raises(rs.ParameterError, match="no ci size"):
        rs.out_dir_for("ci", "cuda")


def test_resolve_device(rs, monkeypatch):
    gpu(monkeypatch, False)
    assert rs.resolve_device(None) is None and rs.resolve_device("cpu") == "cpu"
    assert rs.resolve_device("auto") == "cpu"
    with pytest.raises(rs.ParameterError, match="torch sees no CUDA device"):
        rs.resolve_device("cuda")
    with pytest.raises(rs.ParameterError, match="device must be one of"):
        rs.resolve_device("gpu")
    gpu(monkeypatch, True)
    assert rs.resolve_device("auto") == rs.resolve_device("cuda") == "cuda"


def test_every_chapter_has_the_device_parameter(rs):
    for chapter in rs.book_order():
        assert rs.defaults(chapter).get("device") == "auto", chapter


# -- the run sets -----------------------------------------------------------------------------------------------
def test_cuda_run_injects_device_into_its_own_run_set(runner, monkeypatch, tmp_path, capsys):
    gpu(monkeypatch, True)
    cpu_set = runner.OUT["quick"]
    assert runner.main(["quick", *CHAPTERS, "--device", "cuda"]) == 0
    cuda_set = tmp_path / "_build" / "quick" / "book" / "executed-cuda"
    assert [h["chapter"] for h in runner.handed] == CHAPTERS
    for h in runner.handed:
        assert h["params"]["device"] == "cuda" and h["device"] == "cuda"
        assert h["out_dir"] == cuda_set and h["results"] == tmp_path / "_build" / "quick" / "results"
        assert h["rerun"].endswith(f"run_study.py quick {h['chapter']} --device cuda")
    status = json.loads((cuda_set / "status.json").read_text())
    assert sorted(status) == CHAPTERS and {s["device"] for s in status.values()} == {"cuda"}
    assert not cpu_set.exists()  # the CPU run set is left alone
    ledger = pd.read_csv(tmp_path / "_build" / "quick" / "results" / "runs.csv")
    assert list(ledger["device"]) == ["cuda", "cuda"]
    assert "(quick on cuda)" in capsys.readouterr().out


def test_study_cuda_rows_go_to_the_same_results(runner, monkeypatch, tmp_path):
    gpu(monkeypatch, True)
    monkeypatch.setattr(runner, "ROOT", tmp_path)  # the study's rows folder is ROOT/data/results
    assert runner.main(["study", CHAPTERS[0], "--device", "cuda"]) == 0
    (h,) = runner.handed
    assert h["out_dir"] == tmp_path / "book" / "executed-cuda" and h["results"] == tmp_path / "data" / "results"
    study = yaml.safe_load((REPO / "notebooks" / "params" / f"{CHAPTERS[0]}.yml").read_text())
    assert h["params"] == {**study, "device": "cuda"}  # the study's parameters, and the device
    assert (tmp_path / "data" / "results" / "runs.csv").is_file()


def test_cuda_without_a_gpu_stops_before_any_work(runner, monkeypatch, capsys):
    gpu(monkeypatch, False)
    assert runner.main(["quick", *CHAPTERS, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: --device cuda: torch sees no CUDA device (install a CUDA build "
                                        "of torch and torchvision, and check nvidia-smi)"]
    assert runner.handed == [] and not runner.OUT["quick"].parent.exists()


def test_p_device_cuda_is_the_cuda_run_set(runner, monkeypatch, tmp_path):
    gpu(monkeypatch, True)
    assert runner.main(["quick", CHAPTERS[0], "-p", "device", "cuda"]) == 0
    (h,) = runner.handed
    assert h["out_dir"].name == "executed-cuda" and h["params"]["device"] == "cuda"


def test_cpu_default_unchanged(runner, monkeypatch, tmp_path):
    gpu(monkeypatch, True)  # even with a GPU, no --device leaves the chapters their own default
    assert runner.main(["quick", CHAPTERS[0]]) == 0
    (h,) = runner.handed
    assert h["out_dir"] == runner.OUT["quick"] and "device" not in h["params"] and h["device"] is None
    assert h["rerun"].endswith(f"run_study.py quick {CHAPTERS[0]}")
    assert json.loads((runner.OUT["quick"] / "status.json").read_text())[CHAPTERS[0]]["device"] == ""


def test_device_cpu_and_auto_without_gpu_are_the_cpu_run_set(runner, monkeypatch):
    gpu(monkeypatch, False)
    for device in ("cpu", "auto"):
        runner.handed.clear()
        assert runner.main(["quick", CHAPTERS[0], "--device", device]) == 0
        (h,) = runner.handed
        assert h["out_dir"] == runner.OUT["quick"] and h["params"]["device"] == "cpu"


def test_ci_size_refuses_cuda(runner, monkeypatch, capsys):
    gpu(monkeypatch, True)
    assert runner.main(["ci", CHAPTERS[0], "--device", "cuda"]) == 2
    assert "nbval references are the CPU run's" in capsys.readouterr().err and runner.handed == []


# -- the real command line and make ---------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_command_line_cuda_without_gpu(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "run_study.py"), "quick", CHAPTERS[0], "--device",
                        "cuda", "--results", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "torch sees no CUDA device" in r.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target, size", [("book", "study"), ("study", "study"), ("book SIZE=ci", "quick")])
def test_make_passes_device(target, size):
    def dry(*extra):
        r = subprocess.run(["make", "-n", *target.split(), *extra], capture_output=True, text=True, cwd=REPO,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stdout.splitlines() if "scripts/run_study.py" in ln]

    (default,) = dry()
    (cuda,) = dry("DEVICE=cuda")
    assert f"run_study.py {size}" in default and "--device cpu" in default
    assert "--device cuda" in cuda


# -- the rows ---------------------------------------------------------------------------------------------------
def test_cuda_rows_name_the_gpu_cpu_rows_do_not(tmp_path):
    from mmdet_speedup.records import COLUMNS, Recorder

    rec = Recorder(tmp_path / "rows.csv", notebook="test", run_id="r")
    rec.env["gpu"] = "NVIDIA H100 80GB HBM3"  # what environment() reads from torch on a GPU machine
    rec.write([{"device": "cuda", "stage": "total", "ms": 1.0}, {"device": "cpu", "stage": "total", "ms": 2.0}])
    df = pd.read_csv(tmp_path / "rows.csv")
    assert df.columns.tolist() == list(COLUMNS) and "gpu" in COLUMNS
    assert df.loc[0, "gpu"] == "NVIDIA H100 80GB HBM3" and pd.isna(df.loc[1, "gpu"])
    env = json.loads((tmp_path / "environment" / "r.json").read_text())
    assert {"gpu", "mmcv_cuda_ops", "ops_fallback"} <= set(env)


def test_options_before_or_after_the_chapters(rs, capsys):
    for argv in (["study", "--device", "cpu", "no_such_chapter"], ["study", "no_such_chapter", "--device", "cpu"]):
        assert rs.main(argv) == 2
        assert "no such chapter: notebooks/no_such_chapter.py" in capsys.readouterr().err


def test_injected_parameters_cell_is_collapsed(rs, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["injected-parameters"]}),
                                         nbformat.v4.new_code_cell("y = 2")])
    path = tmp_path / "c.ipynb"
    nbformat.write(nb, path)
    rs.hide_injected(path)
    rs.hide_injected(path)  # idempotent
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].metadata.tags == ["injected-parameters", "hide-cell"]
    assert cells[1].metadata.get("tags", []) == []
