"""Tidy CSV rows, appended as they are produced, and the environment record of every run."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

#: Bump when the meaning of a measurement changes, so old rows are never mixed with new ones unknowingly.
BENCHMARK_VERSION = "1.2"

COLUMNS: tuple[str, ...] = (
    "run_id", "timestamp", "git_sha", "benchmark_version", "notebook", "config", "variant",
    "preprocess", "precision", "channels_last", "masks", "device", "dtype", "threads",
    "input_size", "scale", "rpn_pre_nms", "dets_per_image", "stage", "repeat", "ms", "peak_mem_mb",
    "status", "message", "image", "fold_bn", "rpn_nms_in", "bbox_nms_in", "dets_out", "mask_bytes", "roi_align", "cpu_ms", "bytes_copied", "chosen", "images_per_s", "case", "sweep", "compile",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


RUN_OUTPUTS = ("book/executed", "data/results", "tests/nbval")


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
        sha = out.stdout.strip() or "unknown"
        # a study run rewrites its own outputs as it goes: they must not mark the code it ran as dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in RUN_OUTPUTS)], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def new_run_id(prefix: str = "") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    return f"{prefix}{stamp}-{uuid.uuid4().hex[:6]}"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("amx", "avx512_bf16", "avx512f")))
    except OSError:
        pass
    return []


def matrix_engine(device: str = "cpu") -> str:
    """What reduced precision runs on, in words: the hardware that decides whether bf16/fp16 pays."""
    if str(device).startswith("cuda"):
        return f"TensorCores ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "no CUDA device"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX tiles (amx_bf16)"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16 instructions (avx512_bf16) but no AMX tiles"
    return "no bf16 instructions (bf16 is emulated, expect no gain)"


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix math in hardware (AMX or AVX-512 BF16), as ``matrix_engine`` says."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_flags()))


def environment(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import cv2
    import mmcv
    import mmdet
    import mmengine
    import numpy
    import torchvision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "benchmark_version": BENCHMARK_VERSION,
        "git_sha": git_sha(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "hostname_hash": uuid.uuid5(uuid.NAMESPACE_DNS, platform.node()).hex[:8],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "cuda": torch.version.cuda if gpu else None,
        "versions": {
            "torch": torch.__version__, "torchvision": torchvision.__version__, "mmcv": mmcv.__version__,
            "mmdet": mmdet.__version__, "mmengine": mmengine.__version__, "numpy": numpy.__version__,
            "opencv": cv2.__version__,
        },
        "params": dict(params or {}),
    }


class Recorder:
    """Appends tidy rows to a CSV as they are measured: an interrupted sweep keeps what it measured."""

    def __init__(self, path: str | os.PathLike, *, notebook: str = "", run_id: str | None = None,
                 params: Mapping[str, Any] | None = None, env_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.notebook = notebook
        # the study runner names the run (MMDET_SPEEDUP_RUN_ID) so its ledger can mark a failed run's rows
        self.run_id = run_id or os.environ.get("MMDET_SPEEDUP_RUN_ID") or new_run_id()
        self.rows_written = 0
        self.git_sha = git_sha()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _set_aside_if_other_columns(self.path, COLUMNS)
        self.env = environment(params)
        env_dir = Path(env_dir) if env_dir else self.path.parent / "environment"
        env_dir.mkdir(parents=True, exist_ok=True)
        (env_dir / f"{self.run_id}.json").write_text(json.dumps({"run_id": self.run_id, "notebook": notebook,
                                                                  **self.env}, indent=2, default=str))

    def write(self, rows: Iterable[Mapping[str, Any]]) -> int:
        rows = list(rows)
        new = not self.path.exists() or self.path.stat().st_size == 0
        now = _dt.datetime.now().isoformat(timespec="seconds")
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            for r in rows:
                base = {"run_id": self.run_id, "timestamp": now, "git_sha": self.git_sha,
                        "benchmark_version": BENCHMARK_VERSION, "notebook": self.notebook, "status": "ok"}
                w.writerow({**base, **{k: v for k, v in r.items() if v is not None}})
            f.flush()
        self.rows_written += len(rows)
        return len(rows)


def _set_aside_if_other_columns(path: Path, columns: Iterable[str]) -> None:
    """Rows written under other columns (an older benchmark version) move to a side file, never lost or mixed."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if header != list(columns):
        old = path.with_name(f"{path.stem}.old-{_dt.datetime.now():%Y%m%dT%H%M%S}{path.suffix}")
        path.rename(old)
        print(f"records: {path.name} had other columns (an older benchmark version); moved to {old.name}")


def write_tidy(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> None:
    """Append rows to a CSV with its own columns (e.g. the NMS workbench, equivalence figures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns)
    _set_aside_if_other_columns(path, columns)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(dict(r))
