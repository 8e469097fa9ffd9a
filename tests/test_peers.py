"""The runtimes chapter's rows (peers.py) on hand-made rows: row names, the staged-against-deployed comparison,
first-call costs, and an export failure that becomes error rows."""
from __future__ import annotations

import pandas as pd
import pytest

from mmdet_speedup import STOCK, runtimes
from mmdet_speedup.study import runtimes as peers
from mmdet_speedup import stages as S


def test_staged_rows_change_one_thing_at_a_time():
    rows = peers.staged_rows("cpu", bf16=True)
    assert list(rows)[:4] == [peers.BASE, peers.AA, peers.EAGER_BEST, peers.COMPILED_BEST]
    assert rows["ov fp32"] == STOCK.replace(runtime="openvino") and rows["ov bf16"].precision == "bf16"
    assert rows["ort fp32"] == STOCK.replace(runtime="onnxruntime") and "ort bf16" not in rows
    assert rows["ov auto (bf16)"].masks == "auto" and rows["ort auto (fp32)"].precision == "fp32"
    no_bf16 = peers.staged_rows("cpu", bf16=False)
    assert "ov bf16" not in no_bf16 and no_bf16[peers.EAGER_BEST].precision == "fp32"
    assert list(peers.staged_rows("cuda", bf16=True)) == [peers.BASE, peers.AA, peers.EAGER_BEST, peers.COMPILED_BEST]


def _rows(totals: dict[str, tuple[str, list[float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "precision": p, "stage": S.TOTAL, "repeat": r, "image": "a", "ms": ms,
                          "status": "ok"} for v, (p, ms_) in totals.items() for r, ms in enumerate(ms_)])


def test_versus_deployed_pairs_the_fastest_of_each_side_per_precision():
    noise = [1.0, 1.02, 0.98, 1.01, 0.99]
    rows = _rows({"stock": ("fp32", [100 * k for k in noise]),
                  "ort fp32": ("fp32", [80 * k for k in noise]),
                  f"{peers.DEPLOYED_PREFIX}ort fp32": ("fp32", [90 * k for k in noise]),
                  f"{peers.DEPLOYED_PREFIX}ov fp32": ("fp32", [70 * k for k in noise]),
                  "ov bf16": ("bf16", [30 * k for k in noise]),
                  f"{peers.DEPLOYED_PREFIX}ov bf16": ("bf16", [60 * k for k in noise]),
                  "torch auto (eager)": ("bf16", [50 * k for k in noise])})
    v = peers.versus_deployed(rows)
    assert v.loc["fp32", "staged (lowest median)"] == "ort fp32" and v.loc["fp32", "deployed (lowest median)"].endswith("ov fp32")
    assert v.loc["fp32", "ratio"] == pytest.approx(70 / 80) and v.loc["fp32", "verdict"] == "slower"
    assert v.loc["bf16", "ratio"] == pytest.approx(2.0) and v.loc["bf16", "verdict"] == "faster"
    only_staged = rows[~rows["variant"].str.startswith(peers.DEPLOYED_PREFIX)]
    assert peers.versus_deployed(only_staged).empty


def test_first_call_costs_of_staged_and_deployed_rows():
    class Staged(peers.StagedPipeline):
        def __init__(self, costs):  # no model: only what first_call_costs reads
            self._costs = costs

        def conversion_costs(self):
            return self._costs

    class Deployed:
        load_seconds = 2.0

    t = peers.first_call_costs({"ov fp32": Staged([{"seconds": 3.0, "rss_growth_mb": 10.0},
                                                   {"seconds": 1.0, "rss_growth_mb": 5.0}]),
                                "stock": Staged([]), "mmdeploy": Deployed()}, export_s=8.0)
    assert list(t.index) == ["ov fp32", "mmdeploy"]  # torch rows convert nothing
    assert t.loc["ov fp32", "first-call s"] == 4.0 and t.loc["ov fp32", "RSS growth (MiB)"] == 15.0
    assert t.loc["mmdeploy", "first-call s"] == 10.0


def test_a_failed_export_makes_error_rows_not_a_failed_chapter(monkeypatch, mask_rcnn, image):
    import mmdet_speedup.deploy as deploy

    def boom(*a, **k):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(deploy, "export_end2end", boom)
    rows, info = peers.deployed_rows(mask_rcnn, str(image), bf16=False)
    assert list(rows) == [f"{peers.DEPLOYED_PREFIX}ort fp32", f"{peers.DEPLOYED_PREFIX}ov fp32"]
    assert "exporter broke" in info["error"]
    with pytest.raises(RuntimeError, match="mmdeploy export failed: RuntimeError: exporter broke"):
        rows[f"{peers.DEPLOYED_PREFIX}ov fp32"].make()


def test_int8_auto_row_adds_the_library_levers_to_int8(mask_rcnn):
    c = peers.INT8_AUTO_CHOICES.resolve("cpu", mask_rcnn)
    assert (c.runtime, c.precision) == ("openvino", "int8")
    assert c.masks != peers.INT8_CHOICES.masks and c.roi_align != peers.INT8_CHOICES.roi_align  # raw masks, threaded RoIAlign
    assert peers.INT8_CHOICES.resolve("cpu", mask_rcnn).masks == "full"


def test_a_large_case_runs_only_the_large_rows_and_names_the_rest():
    staged = peers.staged_rows("cpu", bf16=True)
    deployed = {f"{peers.DEPLOYED_PREFIX}ort fp32": None, f"{peers.DEPLOYED_PREFIX}ov bf16": None, peers.INT8: None}
    s, d, left = peers.rows_for_case("1333x800", staged, deployed)
    assert (list(s), list(d), left) == (list(staged), list(deployed), [])
    s, d, left = peers.rows_for_case("3840x2304", staged, deployed)
    assert set(s) | set(d) <= set(peers.LARGE_ROWS) and peers.BASE in s and peers.AA in s
    assert list(d) == [f"{peers.DEPLOYED_PREFIX}ov bf16"]
    assert left == [label for label in (*staged, *deployed) if label not in peers.LARGE_ROWS]
    assert peers.COMPILED_BEST in left and peers.INT8 in left
    assert set(peers.LARGE_ROWS) <= {*staged, peers.INT8_AUTO, *(f"{peers.DEPLOYED_PREFIX}ov {p}" for p in
                                                                  ("fp32", "bf16"))}  # no stale names
    said = peers.left_out_sentence(left)
    assert peers.COMPILED_BEST in said.split("left out: ")[0] and said.count(peers.INT8) == 1
    assert f"{peers.INT8} left out: {peers.TOO_LARGE[peers.INT8]}" in said  # its own reason, not the shared rule


def test_percent_of_peak_holds_each_row_to_the_peak_of_its_own_dtype_and_leaves_out_the_deployed_graphs():
    deployed = f"{peers.DEPLOYED_PREFIX}ov bf16"
    table = pd.DataFrame({S.BACKBONE: [100.0, 50.0, 25.0, float("nan")], S.TOTAL: [300.0, 200.0, 100.0, 150.0]},
                         index=[peers.BASE, "ov auto (bf16)", peers.INT8_AUTO, deployed])
    rows = pd.DataFrame({"variant": list(table.index), "precision": ["fp32", "bf16", "int8", "bf16"]})
    peaks = {"matmul_gflops": {"float32": 1000.0, "bfloat16": 4000.0, "int8": 8000.0}}
    pct = peers.percent_of_peak(table, rows, {S.BACKBONE: 50e9}, peaks)
    assert list(pct.index) == [peers.BASE, "ov auto (bf16)", peers.INT8_AUTO]  # no per-stage time, no row
    # 50 GFLOP in 100 ms is 500 GFLOP/s: half the fp32 peak; in 50 ms a quarter of bf16's; in 25 ms of int8's
    assert pct[f"{S.BACKBONE} % of peak"].tolist() == pytest.approx([50.0, 25.0, 25.0])


def test_the_staged_against_deployed_verdict_is_held_to_the_sweeps_aa_floor():
    drift = [1.0, 1.3, 0.8, 1.2, 0.9, 1.1, 1.0]  # shared by every row: paired ratios stay narrow
    wobble = [1.0, 1.1, 0.9, 1.08, 0.93, 1.0, 1.06]
    rows = _rows({"stock": ("fp32", [100 * d for d in drift]),
                  "ort fp32": ("fp32", [96 * d for d in drift]),  # a steady 1.04x over the deployed row ...
                  f"{peers.DEPLOYED_PREFIX}ov fp32": ("fp32", [100 * d for d in drift])})
    assert peers.versus_deployed(rows).loc["fp32", "verdict"] == "faster"  # ... faster with no A/A in the sweep
    noisy = pd.concat([rows, _rows({peers.AA: ("fp32", [100 * d * w for d, w in zip(drift, wobble)])})])
    assert peers.versus_deployed(noisy).loc["fp32", "verdict"] == "no measurable difference"  # inside its floor
