"""Where a study's files are: found from the working directory, never from where the package is installed.

A study is the first directory at or above the working directory that holds the book's ``_toc.yml``
(papermill runs the chapters from ``notebooks/``, one level below it); elsewhere it is the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

MARKER = "_toc.yml"


def project_root() -> Path:
    here = Path.cwd().resolve()
    return next((d for d in (here, *here.parents) if (d / MARKER).is_file()), here)


def results_dir() -> Path:
    """``$MMDET_SPEEDUP_RESULTS`` (the study runner and nbval set it) or the project's ``data/results``."""
    return Path(os.environ.get("MMDET_SPEEDUP_RESULTS") or project_root() / "data" / "results")


def images_dir() -> Path:
    return project_root() / "data" / "images"


def reference_dir() -> Path:
    return project_root() / "data" / "reference"


def seed_figures():
    """Every figure the seeds published (``data/reference/seed_figures.csv``), as tidy rows with their source."""
    import pandas as pd

    return pd.read_csv(reference_dir() / "seed_figures.csv")


def sample_image() -> Path:
    """A photo shipped inside the package, so the CLI runs without a project around it."""
    return Path(__file__).with_name("data") / "coffee.jpg"
