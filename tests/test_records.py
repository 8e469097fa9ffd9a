"""The one writer of rows and its header policy, and where a project's files are found. No models built."""
from __future__ import annotations

import json
import os

import cv2
import pandas as pd
import pytest

from mmdet_speedup import book, project
from mmdet_speedup.cpu import cpu_identity, cpu_label
from mmdet_speedup.environment import git_sha
from mmdet_speedup.records import COLUMNS, Recorder, append_rows


def _side_files(path):
    return sorted(path.parent.glob(f"{path.stem}.old-*{path.suffix}"))


def test_new_column_extends_the_header_and_keeps_committed_rows(tmp_path):
    path = tmp_path / "rows.csv"
    append_rows(path, [{"run_id": "old", "ms": 1.0}], ("run_id", "ms"))
    append_rows(path, [{"run_id": "new", "ms": 2.0, "gpu": "H100"}], ("run_id", "ms", "gpu"))
    assert _side_files(path) == []
    df = pd.read_csv(path)
    assert df.columns.tolist() == ["run_id", "ms", "gpu"]
    assert df["run_id"].tolist() == ["old", "new"] and df["ms"].tolist() == [1.0, 2.0]
    assert pd.isna(df.loc[0, "gpu"]) and df.loc[1, "gpu"] == "H100"


def test_schema_column_added_to_a_committed_recorder_file(tmp_path):
    """What adding a column to ``COLUMNS`` does to a file in data/results/: the file grows, its rows stay."""
    path = tmp_path / "rows.csv"
    committed = [c for c in COLUMNS if c != "compile"]
    append_rows(path, [{"run_id": "old", "stage": "total", "ms": 1.0}], committed)
    Recorder(path, notebook="test", run_id="new").write([{"stage": "total", "ms": 2.0, "compile": True}])
    assert _side_files(path) == []
    df = pd.read_csv(path)
    assert df.columns.tolist() == [*committed, "compile"]
    assert df["run_id"].tolist() == ["old", "new"]
    assert pd.isna(df.loc[0, "compile"]) and bool(df.loc[1, "compile"])


def test_incompatible_header_is_set_aside_not_lost(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    path.write_text("run_id,retired\nold,1\n")
    append_rows(path, [{"run_id": "new", "ms": 2.0}], ("run_id", "ms"))
    (old,) = _side_files(path)
    assert old.read_text() == "run_id,retired\nold,1\n"
    assert pd.read_csv(path).to_dict("records") == [{"run_id": "new", "ms": 2.0}]
    assert old.name in capsys.readouterr().out


def test_interrupted_rewrite_leaves_the_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    append_rows(path, [{"a": 1}], ("a",))
    before = path.read_bytes()

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        append_rows(path, [{"a": 2, "b": 3}], ("a", "b"))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["rows.csv"]


def test_free_form_table_takes_new_keys_in_first_seen_order(tmp_path):
    path = tmp_path / "table.csv"
    append_rows(path, [{"x": 1, "y": 2}])
    append_rows(path, [{"x": 3, "z": 4}, {"w": 5, "x": 6}])
    df = pd.read_csv(path)
    assert df.columns.tolist() == ["x", "y", "z", "w"]
    assert df["x"].tolist() == [1, 3, 6]
    assert df["y"].isna().tolist() == [False, True, True] and df["z"].isna().tolist() == [True, False, True]


def test_record_table_extends_its_file(tmp_path):
    rec = Recorder(tmp_path / "chapter.csv", notebook="test")
    book.record_table(rec, "chapter_table", pd.DataFrame({"variant": ["a"], "iou": [1.0]}))
    book.record_table(rec, "chapter_table", pd.DataFrame({"variant": ["b"], "iou": [0.9], "case": ["big"]}))
    df = pd.read_csv(tmp_path / "chapter_table.csv")
    assert df.columns.tolist() == ["run_id", "notebook", "git_sha", "variant", "iou", "case"]
    assert df["variant"].tolist() == ["a", "b"] and df["case"].isna().tolist() == [True, False]
    assert _side_files(tmp_path / "chapter_table.csv") == []


def test_two_recorders_share_one_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MMDET_SPEEDUP_RUN_ID", raising=False)  # else both would carry the runner's id
    path = tmp_path / "rows.csv"
    first, second = Recorder(path, notebook="a"), Recorder(path, notebook="b")
    first.write([{"stage": "total", "ms": 1.0}])
    second.write([{"stage": "total", "ms": 2.0}, {"stage": "total", "ms": 3.0}])
    first.write([{"stage": "total", "ms": 4.0}])
    df = pd.read_csv(path)
    assert df.columns.tolist() == list(COLUMNS)
    assert df["run_id"].tolist() == [first.run_id, second.run_id, second.run_id, first.run_id]
    assert df["ms"].tolist() == [1.0, 2.0, 3.0, 4.0] and (first.rows_written, second.rows_written) == (2, 2)


def test_project_root_is_found_upward_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "_toc.yml").write_text("")
    nested = tmp_path / "notebooks" / "deeper"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    root = tmp_path.resolve()
    assert project.project_root() == root
    assert project.images_dir() == root / "data" / "images"
    assert project.reference_dir() == root / "data" / "reference"


def test_project_root_without_a_book_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert project.project_root() == tmp_path.resolve()


def test_results_dir_honours_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMDET_SPEEDUP_RESULTS", raising=False)
    assert project.results_dir() == tmp_path.resolve() / "data" / "results"
    monkeypatch.setenv("MMDET_SPEEDUP_RESULTS", str(tmp_path / "elsewhere"))
    assert project.results_dir() == tmp_path / "elsewhere"


def test_sample_image_ships_with_the_package():
    img = cv2.imread(str(project.sample_image()))
    assert img is not None and img.ndim == 3 and img.shape[2] == 3


def test_git_sha_outside_a_repository_is_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp either
    assert git_sha() == "unknown"


def test_a_second_recorder_of_a_run_keeps_what_the_run_added_to_its_environment_record(tmp_path):
    first = Recorder(tmp_path / "rows.csv", notebook="07_runtimes", run_id="r1")
    env = tmp_path / "environment" / "r1.json"
    env.write_text(json.dumps({**json.loads(env.read_text()), "roofline_peaks": {"float32": 191.0}}))
    Recorder(tmp_path / "07_runtimes_throughput.csv", notebook="other", run_id="r1")
    record = json.loads(env.read_text())
    assert record["roofline_peaks"] == {"float32": 191.0} and record["notebook"] == "07_runtimes"
    assert record["benchmark_version"] == first.env["benchmark_version"]


_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
model name\t: {name}
stepping\t: 1
flags\t\t: fpu sse2 {flags}

processor\t: 1
vendor_id\t: SomethingElse
cpu family\t: 99
"""


@pytest.mark.parametrize("vendor, family, model, flags, uarch", [
    ("AuthenticAMD", 26, 2, "avx512f avx512_bf16", "Zen 5"),
    ("AuthenticAMD", 25, 17, "avx512f avx512_bf16", "Zen 4"),
    ("AuthenticAMD", 25, 1, "avx2", "Zen 3"),
    ("GenuineIntel", 6, 143, "amx_bf16 avx512f", "Sapphire Rapids"),
    ("GenuineIntel", 6, 999, "avx2", None),
])
def test_the_environment_record_names_the_cpu_generation_a_model_name_hides(vendor, family, model, flags, uarch):
    text = _CPUINFO.format(vendor=vendor, family=family, model=model, name="AMD EPYC", flags=flags)
    ident = cpu_identity(text)
    assert ident == {"vendor": vendor, "family": family, "model": model, "stepping": 1, "uarch": uarch}
    label = cpu_label({"cpu_model": "AMD EPYC", "cpu_id": ident})
    assert label == f"AMD EPYC ({uarch or f'family {family} model {model}'})"
    assert cpu_label({"cpu_model": "AMD EPYC"}) == "AMD EPYC"  # a record from before the field
    assert cpu_identity("no such fields") == {}


def test_a_new_environment_record_carries_the_cpu_identity(tmp_path):
    env = Recorder(tmp_path / "rows.csv", notebook="x", run_id="r2").env
    assert env["cpu_id"] == cpu_identity()
