"""Helpers the chapters share: where results go, reading a run's rows back, seed figures, charts, glue.

Charts and glued numbers are computed from the CSV rows of the chapter's own run (by ``run_id``), never
from in-memory numbers the CSV does not hold.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from . import stages as S
from .cpu import cpu_label
from .project import images_dir, reference_dir, results_dir, seed_figures
from .records import Recorder, append_rows

#: Colours per stage, fixed so every chart in the book reads the same way.
STAGE_COLORS = {
    S.LOAD: "#8c8c8c", S.PREPROCESS: "#bdbdbd", S.DATA_PREPROCESSOR: "#d9d9d9", S.BACKBONE: "#1f77b4",
    S.NECK: "#6baed6", S.RPN: "#ff7f0e", S.ROI_BBOX: "#2ca02c", S.ROI_MASK: "#98df8a",
    S.MASK_POSTPROCESS: "#d62728", S.CONSUMER_RLE: "#ff9896", S.GRAPH: "#9467bd",
}


def default_images(n: int | None = None) -> list[str]:
    paths = sorted(str(p) for p in images_dir().glob("*.jpg"))
    return paths[:n] if n else paths


#: Names a notebook's globals hold besides its parameters (IPython's own), never parameters.
_NOT_PARAMETERS = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PARAMETER_TYPES = (str, int, float, bool, list, dict, tuple, type(None))


def parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """A chapter's parameters, read from its namespace right after the parameters cell (and papermill's)."""
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k not in _NOT_PARAMETERS
            and isinstance(v, _PARAMETER_TYPES)}


class Chapter:
    """One chapter's run: its parameters (listed once, in the parameters cell), device, recorder and the shared
    mechanics: building the model, the profiler and the inputs, reading its rows back, the seed's published
    figures, glue, and the end matter. ``Chapter(name, globals())`` right after the parameters cell.

    A parameter of the wrong type or value (papermill passes whatever it is given) stops the chapter here, in
    one line. ``device`` and ``threads`` are required; the resolved device is what gets recorded.
    """

    def __init__(self, name: str, namespace: Mapping[str, Any]) -> None:
        import warnings

        import torch

        from .checks import check_parameters
        from .timing import resolve_device

        self.name = name
        self.params = parameters(namespace)
        check_parameters(self.params)
        warnings.filterwarnings("ignore", category=UserWarning)  # mmdet's "checkpoint is None" and friends
        torch.set_num_threads(int(self.params["threads"]))
        self.device = resolve_device(self.params["device"])
        self.rec = recorder(name, {**self.params, "device": str(self.device)})
        print("run", self.rec.run_id, "on", self.device)

    @property
    def run_id(self) -> str:
        return self.rec.run_id

    @property
    def scratch(self) -> Path:
        """A folder for this run's large throw-away files (exported graphs), removed by ``end`` or, failing
        that, when the process exits."""
        if getattr(self, "_scratch", None) is None:
            import atexit
            import shutil
            import tempfile

            self._scratch = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
            atexit.register(shutil.rmtree, self._scratch, ignore_errors=True)
        return self._scratch

    def model(self, config: str | None = None, *, scale: str | None = None, dets: int | None = None,
              rpn_proposals: int | None = None, score_thr: float | None = None):
        """The chapter's detector: ``checkpoint`` where set, else the ``weights`` parameter (default ``auto``: the
        repository's trained weights where they fit the config, conditioned random ones elsewhere); each knob
        defaults to the parameter of the same name, else to the config's value."""
        from .models import Workload, build_detector, check_weights, config_path, parse_size

        p = self.params
        workload = Workload(scale=parse_size(scale or p.get("scale")), dets_per_image=dets or p.get("dets"),
                            rpn_proposals=rpn_proposals or p.get("rpn_proposals"),
                            score_thr=score_thr if score_thr is not None else p.get("score_thr"))
        config, weights = config or p["config"], p.get("weights", "auto")
        model = build_detector(config, checkpoint=p.get("checkpoint"), weights=weights, device=str(self.device),
                               workload=workload)
        used = self.__dict__.setdefault("_weights_used", {})
        name = config_path(config).stem
        if name not in used:  # the environment record names the weights each model of the run had
            used[name] = (f"checkpoint {Path(p['checkpoint']).name}" if p.get("checkpoint") else
                          "trained (data/weights/)" if check_weights(config, weights) else "conditioned random")
            self.record_environment(weights_used=used)
        return model

    def profiler(self, model, **kw):
        """A profiler that records into this chapter's rows, with its ``warmup`` and the study's repeat rule for the
        model's scale (``Repeats.for_scale``: exactly ``repeats`` passes up to 1333x800; above it at least 3, and
        fewer than ``repeats`` only where every interval is already narrow or the sweep reaches
        ``sweep_budget_s``). What each sweep traded: ``profiler.last_repeats``, in words ``repeats_sentence``."""
        from .profiler import Profiler, Repeats, workload_of

        p = self.params
        scale = workload_of(model)["scale"] or "1333x800"
        repeats = Repeats.for_scale(scale, int(p.get("repeats", 3)), budget_s=p.get("sweep_budget_s"))
        kw = {"repeats": repeats, "warmup": p.get("warmup", 1), "recorder": self.rec, **kw}
        return Profiler(model, device=str(self.device), **kw)

    def samples(self, size: str | None, n: int | None = None) -> list:
        """The first ``n`` (default ``n_images``) images the model is scored on, re-encoded at ``size`` (WxH):
        the generated val split at that size's case (a COCO folder's val2017 where ``coco`` is set), or the
        sample photos in ``data/images/`` with ``weights="conditioned"``."""
        from .profiler import prepare_inputs

        n = n or self.params.get("n_images")
        if self.params.get("weights") == "conditioned" and not self.params.get("coco"):
            return prepare_inputs(default_images(n), size)
        ann, img_dir = self.val_split(size, n)
        doc = json.loads(Path(ann).read_text())
        return prepare_inputs([str(Path(img_dir) / im["file_name"]) for im in doc["images"][:n]], size)

    def calibration_samples(self, size: str | None, n: int | None = None) -> list:
        """``n`` (default ``n_images``) images for int8 calibration, re-encoded at ``size``: from the train split,
        never from the images a row is timed or scored on."""
        return calibration_samples(size, n or self.params.get("n_images"))

    def val_split(self, size: str | None = None, n: int | None = None) -> tuple[Path, Path]:
        """The annotation file and image folder the chapter scores on: COCO val2017 where ``coco`` is set, else
        the generated val split of the case ``size`` belongs to (3840x2304 above 1333x800's area), its first
        ``n`` images (all where ``n`` is None); at a size that is not the split's own (a CI-size case), images of
        the same kind drawn at that size, so that a static deployed graph takes them as they are."""
        from .checks import coco_folder
        from .models import parse_size
        from .synth import SPLITS, generate, image_dir

        if self.params.get("coco"):
            return coco_folder(self.params["coco"])
        w, h = parse_size(size) or SPLITS["val"].size
        name = "val_3840x2304" if w * h > 1333 * 800 else "val"
        k = min(n, SPLITS[name].images) if n else None
        ann = generate(name, images=k, image_size=None if (w, h) == SPLITS[name].size else (w, h))
        return ann, image_dir(ann)

    def accuracy(self, name: str, pipelines: Mapping[str, Any], reference: str = "stock", *,
                 size: str | None = None, images: int | None = None, **extra) -> pd.DataFrame:
        """Each pipeline scored on the first ``images`` (default ``val_images``) of ``val_split(size)``, one
        untimed pass per numerics key (``accuracy.Scorer``), against ``reference``'s pass: delta box and mask
        AP with paired bootstrap intervals, recorded as ``name``; read back, one row per label.

        ``pipelines`` maps a row label to a function returning a ``StagedPipeline``, or a ``(callable, key,
        num_classes)`` triple for a pipeline of another kind (a deployed graph): one that fails (building,
        running or scoring) becomes an error row and the others go on; without a reference pass every row is.
        """
        import os

        from .accuracy import PASSES_ENV, Scorer

        n = images or self.params.get("val_images")
        ann, img_dir = self.val_split(size, n)
        key = (str(ann), n)
        scorers = self.__dict__.setdefault("_scorers", {})
        if key not in scorers:
            scorers[key] = Scorer(ann, img_dir, n, cache_dir=os.environ.get(PASSES_ENV), by=self.name)
        scorer = scorers[key]
        scored, rows = {}, []
        for label in [reference, *[k for k in pipelines if k != reference]]:
            try:
                made = pipelines[label]()
                scored[label] = scorer.score(label, *made) if isinstance(made, tuple) else scorer.score(label, made)
            except Exception as e:
                rows.append({"row": label, "images": len(scorer.images), "error": f"{type(e).__name__}: {e}"})
        ref = scored.get(reference)
        for label, s in scored.items():
            if ref is None:
                rows.append({"row": label, "images": len(scorer.images),
                             "error": f"the reference {reference!r} could not be scored"})
            else:
                rows.append(scorer.row(label, s, ref))
        self.record(name, pd.DataFrame(rows).assign(**extra))
        out = self.rows(name)
        for k, v in extra.items():
            out = out[out[k] == v]
        return out.drop_duplicates("row", keep="last").set_index("row").reindex(list(pipelines))

    def rows(self, name: str | None = None) -> pd.DataFrame:
        """This run's rows, read back from its CSV (``name``: a table recorded beside them)."""
        return load_rows(self.rec, name=name)

    def record_environment(self, **extra: Any) -> None:
        """Add measured facts about the machine (e.g. the roofline's peaks) to this run's environment record."""
        path = self.rec.path.parent / "environment" / f"{self.run_id}.json"
        env = json.loads(path.read_text())
        path.write_text(json.dumps({**env, **extra}, indent=2, default=str))

    def record(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        return record_table(self.rec, name, df)

    def equivalence(self, name: str, predictors: Mapping[str, Any], images: list, *, min_score: float = 0.0,
                    **extra) -> pd.DataFrame:
        """Each predictor's ``equivalence_report`` on ``images`` over the detections scoring at least
        ``min_score`` (a trained model's: ``accuracy.CONFIDENT``), recorded as ``name``; read back, one row per label.

        ``predictors`` maps a row label to a function returning a ``Predictor``: one that fails (building or
        checking) becomes an error row and the others go on.
        """
        reports = []
        for label, make in predictors.items():
            try:
                r = make().equivalence_report(images, min_score=min_score)
            except Exception as e:
                r = pd.DataFrame([{"error": f"{type(e).__name__}: {e}"}])
            reports.append(r.assign(row=label, **extra))
        self.record(name, pd.concat(reports, ignore_index=True))
        rows = self.rows(name)
        for key, value in extra.items():
            rows = rows[rows[key] == value]
        return rows.groupby("row", sort=False).mean(numeric_only=True).reindex(list(predictors))

    def glue(self, **values: Any) -> None:
        for name, value in values.items():
            glue(name, value)

    def seed_table(self, stage: str, before: str, after: str, system: str = "mmdet 2.19 (seed)") -> pd.DataFrame:
        """The seed's published speed-up of ``stage`` from variant ``before`` to ``after``, per scale (RTX 3080)."""
        df = seed_figures()
        df = df[(df["system"] == system) & (df["stage"] == stage) & df["variant"].isin([before, after])]
        t = df.pivot_table(index="scale", columns="variant", values="value")[[before, after]]
        t["seed speed-up (published)"] = t[before] / t[after]
        show_table(t, 2)
        return t

    def end(self) -> pd.DataFrame:
        """The end matter: the environment this run recorded (not typed). Removes the scratch folder."""
        import shutil

        if getattr(self, "_scratch", None) is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        return environment_table(self.run_id)


def calibration_samples(size: str | None, n: int) -> list:
    """The first ``n`` images of the generated train split, re-encoded at ``size`` (int8 calibration's inputs)."""
    from .profiler import prepare_inputs
    from .synth import SPLITS, generate, image_dir

    ann = generate("train", images=min(int(n), SPLITS["train"].images))
    doc = json.loads(Path(ann).read_text())
    return prepare_inputs([str(image_dir(ann) / im["file_name"]) for im in doc["images"][:n]], size)


def recorder(notebook: str, params: Mapping[str, Any], name: str | None = None) -> Recorder:
    return Recorder(results_dir() / f"{name or notebook}.csv", notebook=notebook, params=params)


def unfinished_runs(results: Path | None = None) -> set[str]:
    """Run ids the study runner's ledger (``runs.csv``) marks failed or interrupted: their rows stay, unused."""
    from .records import unfinished_runs

    return unfinished_runs(results or results_dir())


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
            "when": env["timestamp"], "CPU": cpu_label(env), "CPU cores": env["cpu_count"],
            "matrix ISA": " ".join(env["cpu_flags"]) or "-", "torch threads": env["torch_threads"],
            "GPU": env["gpu"] or "none", **{k: v for k, v in env["versions"].items()},
            **{f"weights of {k}": v for k, v in (env.get("weights_used") or {}).items()}}
    return pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=list(flat))


def glue(name: str, value: Any, display: bool = False) -> Any:
    """myst-nb glue; numpy scalars become Python scalars (NumPy 2 reprs break ``{glue:text}`` formats)."""
    from myst_nb import glue as _glue

    if hasattr(value, "item") and not isinstance(value, (pd.DataFrame, pd.Series)):
        value = value.item()
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


def scaling_chart(df: pd.DataFrame, x: str, y: str, hue: str, ax=None, title: str = "", xlabel: str | None = None,
                  ylabel: str | None = None, log: bool = True):
    """One line per ``hue`` of ``y`` against ``x`` (log-log by default): how a cost grows with the workload."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    # the median of the repeats at each point, with its 95% bootstrap interval as error bars
    sns.lineplot(data=df, x=x, y=y, hue=hue, marker="o", ax=ax, estimator="median", errorbar=("ci", 95),
                 err_style="bars", seed=0)
    if log:
        ax.set(xscale="log", yscale="log")
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel or y)
    ax.grid(alpha=0.3, which="both")
    return ax


def speedup_chart(table: pd.DataFrame, ax=None, title: str = "", aa: str | None = None,
                  marks: Mapping[str, str] | None = None):
    """A ``stats.ratio_table`` as horizontal bars: each row's ratio against the baseline with its 95% interval as
    error bars, a line at 1 (no change) and the A/A row's interval (``aa``) shaded as the noise floor; ``marks``
    (row -> text, e.g. the accuracy word) written beside each bar."""
    import matplotlib.pyplot as plt

    from .stats import error_bars

    t = table[table["text"] != "baseline"]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * len(t) + 1.4))
    colors = ["#4c72b0" if w == "faster" else "#c44e52" if w == "slower" else "#8c8c8c" for w in t["verdict"]]
    ax.barh([str(i) for i in t.index], t["ratio"], xerr=error_bars(t), color=colors, capsize=3,
            error_kw={"elinewidth": 1})
    ax.axvline(1.0, color="black", linewidth=0.8)
    for k, (label, hi) in enumerate(zip(t.index, t["hi"].fillna(t["ratio"]))):
        if marks and marks.get(label):
            ax.text(float(hi) * 1.02 + 0.02, k, marks[label], va="center", fontsize=7, color="#333333")
    if marks:
        ax.set_xlim(right=max(1.0, float(t["hi"].fillna(t["ratio"]).max())) * 1.45)
    if aa is not None and aa in table.index:
        ax.axvspan(table.loc[aa, "lo"], table.loc[aa, "hi"], color="#dddddd", zorder=0, label="A/A noise floor")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up against the baseline (its interval, method page); blue faster, red slower, "
                  "grey no measurable difference")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def ratio_figure(ratios: Mapping[str, pd.DataFrame], aa: str | None = None, what: str = "against stock",
                 marks: Mapping[str, Mapping[str, str]] | None = None):
    """One ``speedup_chart`` per title (title -> ``stats.ratio_table``), side by side, for pasting elsewhere (the
    landing page glues the ladder's); ``marks``: per title, the text beside each row's bar. Not shown: glue it,
    or display it."""
    import matplotlib.pyplot as plt

    n = max(len(t) for t in ratios.values())
    fig, axes = plt.subplots(1, len(ratios), figsize=(7 * len(ratios), 0.45 * n + 1.6), squeeze=False)
    for ax, (title, table) in zip(axes[0], ratios.items()):
        speedup_chart(table, ax=ax, title=f"{title}: speed-up {what}", aa=aa, marks=(marks or {}).get(title))
        ax.set_xlabel("speed-up (its interval, method page); blue faster, grey no measurable difference, red slower",
                      fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def profile_figure(panels: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], aa: str | None = None,
                   stages=S.STAGES, what: str = "against the baseline"):
    """One row of two charts per title in ``panels`` (title -> (``stage_table``, ``stats.ratio_table``)): where the
    time goes (``stacked_stages``) and each row's speed-up with its interval and the A/A floor (``speedup_chart``)."""
    import matplotlib.pyplot as plt

    n = max(len(t) for t, _ in panels.values())
    fig, axes = plt.subplots(len(panels), 2, figsize=(16, (0.45 * n + 1.8) * len(panels)), squeeze=False)
    for (ax, ax_r), (title, (table, ratios)) in zip(axes, panels.items()):
        stacked_stages(table, ax=ax, title=title, stages=stages)
        speedup_chart(ratios.reindex([r for r in table.index if r in ratios.index]), ax=ax_r, aa=aa,
                      title=f"{title}: speed-up {what}")
    fig.tight_layout()
    plt.show()
    return fig


def _whole(df: pd.DataFrame) -> pd.DataFrame:
    """Counts print as counts: a float column whose values are all whole numbers becomes an integer column."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if pd.api.types.is_float_dtype(col) and col.notna().any() and (col.dropna() % 1 == 0).all():
            out[c] = col.astype("Int64")
    return out


#: Columns in milliseconds besides the stages themselves.
MS_COLUMNS = ("total + rle", "median", "p10", "p90", "pre_ms", "pre_cpu_ms", "load_ms", "together", "floor_ms",
              "sum_of_stages", "roi head")


def with_units(df: pd.DataFrame) -> pd.DataFrame:
    """Headers with their unit: a stage (or another column in ms) reads ``backbone (ms)``; ``path ms`` reads
    ``path (ms)``."""
    def unit(c):
        if not isinstance(c, str) or c.endswith(")") or not pd.api.types.is_numeric_dtype(df[c]):
            return c
        if c in S.ALL or c in MS_COLUMNS:
            return f"{c.removesuffix('_ms')} (ms)"
        return f"{c[:-3]} (ms)" if c.endswith(" ms") else c
    return df.rename(columns=unit)


def show_table(df: pd.DataFrame, digits: int = 1, columns: Sequence[str] | None = None, full: str = ""):
    """Display rounded, never wrapped (a wrapped text table changes shape with the width of its numbers).

    ``columns``: show only those (the ones the text beside the table discusses); the whole table then follows,
    collapsed under ``full`` (its summary line), so a wide table never runs past the page.
    """
    from IPython.display import HTML, display

    shown = df if columns is None else df[[c for c in columns if c in df.columns]]
    with pd.option_context("display.width", 10_000, "display.max_columns", None, "display.max_colwidth", 80):
        display(with_units(_whole(shown.round(digits))))
        if columns is not None:
            html = with_units(_whole(df.round(digits))).to_html()
            display(HTML(f"<details><summary>{full or f'All {df.shape[1]} columns'}</summary>"
                         f"<div style=\"overflow-x:auto\">{html}</div></details>"))


def record_table(rec: Recorder, name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Append a small tidy table (equivalence figures, throughput...) beside the chapter's rows, tagged by run."""
    df = df.copy()
    df.insert(0, "run_id", rec.run_id)
    df.insert(1, "notebook", rec.notebook)
    df.insert(2, "git_sha", rec.git_sha)
    append_rows(rec.path.with_name(f"{name}.csv"), df.to_dict("records"))
    return df
