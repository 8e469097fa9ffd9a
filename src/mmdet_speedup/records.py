"""Tidy CSV rows, appended as they are produced, and the environment record of every run."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


#: Bump when the meaning of a measurement changes, so old rows are never mixed with new ones unknowingly.
#: 2.0: weights v2 (calibrated BatchNorm, models.WEIGHTS_RECIPE), A/A rows and the ladder's climb.
#: 2.1: the book rewrite: findings generated from the rows (findings.py), int8 with the library's levers, 05 passes 3.
#: 2.2: OpenVINO traces a static-shape part once per weights on a crop (first-call costs), A/A rows in every chapter.
#: 2.3: the one verdict rule (A/A floor rows get no word, ranges under 5 repeats), sweep ids, the ladder's pilot
#: recorded.
BENCHMARK_VERSION = "3.0"

COLUMNS: tuple[str, ...] = (
    "run_id", "timestamp", "git_sha", "benchmark_version", "notebook", "config", "variant",
    "preprocess", "precision", "channels_last", "masks", "device", "dtype", "threads",
    "input_size", "scale", "rpn_pre_nms", "dets_per_image", "stage", "repeat", "ms", "peak_mem_mb",
    "status", "message", "image", "fold_bn", "rpn_nms_in", "bbox_nms_in", "dets_out", "mask_bytes", "roi_align", "cpu_ms", "bytes_copied", "chosen", "images_per_s", "case", "sweep", "compile",
    "gpu", "sweep_id",
)


def new_run_id(prefix: str = "") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    return f"{prefix}{stamp}-{uuid.uuid4().hex[:6]}"


class Recorder:
    """Appends tidy rows to a CSV as they are measured: an interrupted sweep keeps what it measured."""

    def __init__(self, path: str | os.PathLike, *, notebook: str = "", run_id: str | None = None,
                 params: Mapping[str, Any] | None = None, env_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.notebook = notebook
        # the study runner names the run (MMDET_SPEEDUP_RUN_ID) so its ledger can mark a failed run's rows
        self.run_id = run_id or os.environ.get("MMDET_SPEEDUP_RUN_ID") or new_run_id()
        self.rows_written = 0
        from .environment import environment, git_sha  # torch: only a recorder needs it, not the ledger

        self.git_sha = git_sha()
        self.env = {"benchmark_version": BENCHMARK_VERSION, **environment(params)}
        env_dir = Path(env_dir) if env_dir else self.path.parent / "environment"
        env_dir.mkdir(parents=True, exist_ok=True)
        path = env_dir / f"{self.run_id}.json"
        # a second recorder of the same run (a chapter's throughput table) keeps what the run added to the record
        # (``Chapter.record_environment``: the roofline's peaks), and the first recorder's notebook
        kept = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**kept, "run_id": self.run_id, "notebook": kept.get("notebook") or notebook,
                                    **self.env}, indent=2, default=str))

    def write(self, rows: Iterable[Mapping[str, Any]]) -> int:
        now = _dt.datetime.now().isoformat(timespec="seconds")
        base = {"run_id": self.run_id, "timestamp": now, "git_sha": self.git_sha,
                "benchmark_version": BENCHMARK_VERSION, "notebook": self.notebook, "status": "ok"}
        rows = [{**base, **{k: v for k, v in r.items() if v is not None}} for r in rows]
        for row in rows:  # a CUDA row names its GPU: a CPU row of the same machine must not
            if self.env.get("gpu") and str(row.get("device", "")).startswith("cuda"):
                row.setdefault("gpu", self.env["gpu"])
        n = append_rows(self.path, rows, COLUMNS)
        self.rows_written += n
        return n


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                columns: Sequence[str] | None = None) -> int:
    """Append rows to a CSV, the one writer of rows; returns how many were written.

    With a declared schema (``columns``) rows keep to it: keys outside it are dropped, and a file holding a
    column the schema no longer has is set aside (an incompatible change). Without one, the columns are the
    file's plus the rows' new keys. Either way a new column goes at the end of the file's header (the file is
    rewritten once) and the committed rows read as empty in it: adding a column never sets rows aside.
    """
    path = Path(path)
    rows = [dict(r) for r in rows]
    if not rows:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _header(path)
    if columns is not None and set(header) - set(columns):
        _set_aside(path)
        header = []
    wanted = list(columns) if columns is not None else [k for r in rows for k in r]
    full = list(dict.fromkeys([*header, *wanted]))
    if header and len(full) > len(header):
        _extend_header(path, header, full)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=full, extrasaction="ignore")
        if not header:
            w.writeheader()
        w.writerows(rows)
    return len(rows)


def _header(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _set_aside(path: Path) -> None:
    """Rows under columns the schema no longer has move to a side file: never lost, never mixed in."""
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    old = path.with_name(f"{path.stem}.old-{stamp}{path.suffix}")
    n = 1
    while old.exists():  # a rename onto an existing side file would lose it
        old = path.with_name(f"{path.stem}.old-{stamp}-{n}{path.suffix}")
        n += 1
    path.rename(old)
    print(f"records: {path.name} had columns the schema no longer has; moved to {old.name}")


def _extend_header(path: Path, header: list[str], full: list[str]) -> None:
    """Rewrite the file once under the longer header, atomically: an interrupt leaves the old file whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as dst, open(path, newline="") as src:
            reader, writer = csv.reader(src), csv.writer(dst)
            next(reader)
            writer.writerow(full)
            pad = [""] * (len(full) - len(header))
            writer.writerows(row + pad for row in reader)
        shutil.copymode(path, tmp)  # mkstemp's 0600 would make the committed CSV private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def unfinished_runs(results: str | os.PathLike) -> set[str]:
    """Run ids the study runner's ledger (``<results>/runs.csv``) marks failed or interrupted: their rows stay,
    unused."""
    path = Path(results) / "runs.csv"
    if not path.is_file():
        return set()
    with open(path, newline="") as f:
        return {r["run_id"] for r in csv.DictReader(f) if r.get("status") in ("failed", "interrupted")}
