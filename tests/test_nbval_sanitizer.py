"""tests/nbval_sanitize.cfg makes timing outputs comparable, but not structure-blind.

A notebook that prints a DataFrame of stage timings is stored with outputs whose numbers (and run id,
timestamp, path) differ from what the re-run produces: nbval must pass. The same notebook with one column
renamed in its stored outputs (`ms` -> `msec`) must fail. One kernel start per case.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"

pytest.importorskip("nbval")
pd = pytest.importorskip("pandas")
nbformat = pytest.importorskip("nbformat")

SOURCE = """\
import random, datetime, uuid, tempfile, os
import pandas as pd
stages = ["load", "backbone", "rpn", "total"]
df = pd.DataFrame({"stage": stages, "ms": [random.uniform(0.01, 5000.0) for _ in stages]})
run_id = datetime.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
print(f"run {run_id} at {datetime.datetime.now().isoformat(timespec='seconds')}")
print(f"wrote {os.path.join(tempfile.mkdtemp(), 'results.csv')}")
print(f"total {df.ms.iloc[-1]:.2f} ms")
print(df)
df"""


def _stored_outputs(values, column="ms"):
    """The outputs the cell would have produced with other numbers (and another run id, time, path)."""
    df = pd.DataFrame({"stage": ["load", "backbone", "rpn", "total"], column: values})
    text = (
        "run 20250101T000000-abc123 at 2025-01-01T00:00:00\n"
        "wrote /tmp/tmpq1w2e3r4/results.csv\n"
        f"total {values[-1]:.2f} ms\n"
        f"{df}\n"
    )
    return [
        nbformat.v4.new_output("stream", name="stdout", text=text),
        nbformat.v4.new_output(
            "execute_result",
            data={"text/plain": repr(df), "text/html": df._repr_html_()},
            execution_count=1,
        ),
    ]


def _write_notebook(path: Path, outputs) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(SOURCE, execution_count=1)
    cell.outputs = outputs
    nb.cells = [cell]
    nbformat.write(nb, path)
    return path


def _run_nbval(nb_path: Path) -> subprocess.CompletedProcess:
    ini = nb_path.parent / "pytest.ini"
    ini.write_text("[pytest]\n")
    cmd = [
        sys.executable, "-m", "pytest", "-q", "--nbval", "--nbval-current-env",
        "--nbval-sanitize-with", str(SANITIZE), "-p", "no:cacheprovider",
        "-c", str(ini), "--rootdir", str(nb_path.parent), str(nb_path),
    ]
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    return subprocess.run(cmd, cwd=nb_path.parent, capture_output=True, text=True, timeout=180, env=env)


def test_sanitizer_masks_numbers_but_not_columns(tmp_path):
    # Different magnitudes on purpose: the column widths and alignment differ from the re-run's.
    values = [0.5, 1234.5678, 42.0, 99999.125]

    same = _write_notebook(tmp_path / "same.ipynb", _stored_outputs(values))
    res = _run_nbval(same)
    assert res.returncode == 0, f"nbval should pass when only numbers differ:\n{res.stdout}\n{res.stderr}"

    renamed = _write_notebook(tmp_path / "renamed.ipynb", _stored_outputs(values, column="msec"))
    res = _run_nbval(renamed)
    assert res.returncode != 0, f"nbval should fail on a renamed column:\n{res.stdout}"
    assert "msec" in res.stdout
