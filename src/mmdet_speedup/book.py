"""Helpers the chapters share: where results go, reading a run's rows back, seed figures, charts, glue.

Charts and glued numbers are computed from the CSV rows of the chapter's own run (by ``run_id``), never
from in-memory numbers the CSV does not hold.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from . import stages as S
from .records import REPO_ROOT, Recorder

IMAGES_DIR = REPO_ROOT / "data" / "images"
REFERENCE_DIR = REPO_ROOT / "data" / "reference"
#: Colours per stage, fixed so every chart in the book reads the same way.
STAGE_COLORS = {
    S.LOAD: "#8c8c8c", S.PREPROCESS: "#bdbdbd", S.DATA_PREPROCESSOR: "#d9d9d9", S.BACKBONE: "#1f77b4",
    S.NECK: "#6baed6", S.RPN: "#ff7f0e", S.ROI_BBOX: "#2ca02c", S.ROI_MASK: "#98df8a",
    S.MASK_POSTPROCESS: "#d62728", S.CONSUMER_RLE: "#ff9896",
}


def results_dir() -> Path:
    """``$MMDET_SPEEDUP_RESULTS`` (nbval points it at a temp folder) or ``data/results``."""
    return Path(os.environ.get("MMDET_SPEEDUP_RESULTS") or REPO_ROOT / "data" / "results")


def default_images(n: int | None = None) -> list[str]:
    paths = sorted(str(p) for p in IMAGES_DIR.glob("*.jpg"))
    return paths[:n] if n else paths


def start(notebook: str, **params: Any):
    """A chapter's set-up: thread count, device, and a recorder whose environment record holds ``params``.

    ``params`` must include ``device`` and ``threads``; the resolved device is what gets recorded. A parameter
    of the wrong type or value (papermill passes whatever it is given) stops the chapter here, in one line.
    Returns ``(device, recorder)`` and prints the run id the chapter's rows carry.
    """
    import warnings

    import torch

    from .checks import check_parameters
    from .timing import resolve_device

    check_parameters(params)
    warnings.filterwarnings("ignore", category=UserWarning)  # mmdet's "checkpoint is None" and friends
    torch.set_num_threads(int(params["threads"]))
    dev = resolve_device(params["device"])
    rec = recorder(notebook, {**params, "device": str(dev)})
    print("run", rec.run_id, "on", dev)
    return dev, rec


def recorder(notebook: str, params: Mapping[str, Any], name: str | None = None) -> Recorder:
    return Recorder(results_dir() / f"{name or notebook}.csv", notebook=notebook, params=params)


def unfinished_runs(results: Path | None = None) -> set[str]:
    """Run ids the study runner's ledger (``runs.csv``) marks failed or interrupted: their rows stay, unused."""
    path = (results or results_dir()) / "runs.csv"
    if not path.is_file():
        return set()
    runs = pd.read_csv(path)
    return set(runs.loc[runs["status"].isin(["failed", "interrupted"]), "run_id"])


def load_rows(recorder_or_path, run_id: str | None = None, name: str | None = None) -> pd.DataFrame:
    """The rows of one run, read back from the CSV (what the charts and the prose use).

    Without a run id: every run's rows except those of runs that failed or were interrupted.
    """
    if isinstance(recorder_or_path, Recorder):
        path = recorder_or_path.path if name is None else recorder_or_path.path.with_name(f"{name}.csv")
        run_id = run_id or recorder_or_path.run_id
    else:
        path = Path(recorder_or_path)
    df = pd.read_csv(path, keep_default_na=True, low_memory=False)
    if run_id:
        return df[df["run_id"] == run_id].reset_index(drop=True)
    return df[~df["run_id"].isin(unfinished_runs(Path(path).parent))].reset_index(drop=True)


def environment_table(run_id: str) -> pd.DataFrame:
    env = json.loads((results_dir() / "environment" / f"{run_id}.json").read_text())
    flat = {"run": env["run_id"], "git": env["git_sha"], "benchmark version": env["benchmark_version"],
            "when": env["timestamp"], "CPU": env["cpu_model"], "CPU cores": env["cpu_count"],
            "matrix ISA": " ".join(env["cpu_flags"]) or "-", "torch threads": env["torch_threads"],
            "GPU": env["gpu"] or "none", **{k: v for k, v in env["versions"].items()}}
    return pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=list(flat))


def seed_figures() -> pd.DataFrame:
    return pd.read_csv(REFERENCE_DIR / "seed_figures.csv")


def seed_table(scale: str = "1333x800", system: str = "mmdet 2.19 (seed)") -> pd.DataFrame:
    """The seed's RTX 3080 per-stage table (published, not measured here)."""
    df = seed_figures()
    df = df[(df["scale"] == scale) & (df["system"] == system)]
    t = df.pivot_table(index="variant", columns="stage", values="value", sort=False)
    return t


def glue(name: str, value: Any, display: bool = False) -> Any:
    """myst-nb glue; numpy scalars become Python floats (NumPy 2 reprs break ``{glue:text}`` formats)."""
    from myst_nb import glue as _glue

    if hasattr(value, "item") and not isinstance(value, (pd.DataFrame, pd.Series)):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _glue(name, value, display=display)
    return value


def stacked_stages(table: pd.DataFrame, ax=None, title: str = "", stages=S.STAGES, unit: str = "ms"):
    """Horizontal stacked bars: one bar per variant, one segment per stage."""
    import matplotlib.pyplot as plt

    cols = [s for s in stages if s in table.columns]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.55 * len(table) + 1.6))
    left = pd.Series(0.0, index=table.index)
    for s in cols:
        vals = table[s].fillna(0)
        ax.barh(table.index, vals, left=left, color=STAGE_COLORS.get(s), label=s, edgecolor="white", linewidth=0.5)
        left += vals
    ax.invert_yaxis()
    ax.set_xlabel(f"median {unit} per image")
    ax.set_title(title)
    ax.legend(ncol=min(len(cols), 5), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18 - 0.02 * len(table)),
              frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return ax


def show_table(df: pd.DataFrame, digits: int = 1):
    """Display rounded, never wrapped: a wrapped text table changes shape with the width of its numbers."""
    from IPython.display import display

    with pd.option_context("display.width", 10_000, "display.max_columns", None, "display.max_colwidth", 80):
        display(df.round(digits))


def record_table(rec: Recorder, name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Append a small tidy table (equivalence figures, throughput...) beside the chapter's rows, tagged by run."""
    from .records import write_tidy

    df = df.copy()
    df.insert(0, "run_id", rec.run_id)
    df.insert(1, "notebook", rec.notebook)
    df.insert(2, "git_sha", rec.git_sha)
    path = rec.path.with_name(f"{name}.csv")
    if path.exists():  # keep the file's columns; new columns go at the end of a fresh header
        old = pd.read_csv(path, nrows=0).columns.tolist()
        if set(df.columns) - set(old):
            full = pd.concat([pd.read_csv(path), df], ignore_index=True)
            full.to_csv(path, index=False)
            return df
        df = df.reindex(columns=old)
    write_tidy(path, df.to_dict("records"), df.columns)
    return df
