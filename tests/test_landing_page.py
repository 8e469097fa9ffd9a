"""The landing page (scripts/landing_page.py): each chapter's glued headline pasted, never typed; a chapter whose
run predates its headline named with its run; the ladder's chart written beside the page."""
from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.support import load_script, png_bytes

landing_page = load_script("landing_page")

RUN = "20261201T100000-aaaaaa"


def _png() -> str:
    return base64.b64encode(png_bytes()).decode()


def _glue(key: str, data: dict) -> dict:
    return {"output_type": "display_data", "metadata": {"scrapbook": {"name": key, "mime_prefix": ""}}, "data": data}


def _notebook(path: Path, outputs: list[dict], printed: str = "") -> None:
    outputs = outputs + ([{"output_type": "stream", "name": "stdout", "text": [f"run {printed}\n"]}] if printed else [])
    cells = [{"cell_type": "code", "source": [], "metadata": {}, "execution_count": 1, "outputs": outputs}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_headlines_are_pasted_and_a_stale_chapter_is_named(tmp_path):
    executed, results = tmp_path / "executed", tmp_path / "results"
    (results / "environment").mkdir(parents=True)
    executed.mkdir()
    html = {"text/html": "<p>faster (2.1x, 95% CI 2.0-2.2x)</p>", "text/markdown": "faster", "text/plain": "x"}
    _notebook(executed / "06_ladder.ipynb", [_glue("lad_headline", html), _glue("lad_chart", {"image/png": _png()})])
    _notebook(executed / "02_precision.ipynb", [_glue("prec_headline", {"text/markdown": "old", "text/plain": "o"})],
              printed=RUN)  # glued before the headline had HTML: pasted it would show a repr
    (results / "environment" / f"{RUN}.json").write_text(json.dumps(
        {"run_id": RUN, "notebook": "02_precision", "benchmark_version": "2.0"}))
    out = tmp_path / "book" / "index.md"
    out.parent.mkdir()
    page = landing_page.render(executed, results, "2.1", out)
    assert "```{glue:any} lad_headline\n:doc: executed/06_ladder.ipynb\n```" in page
    assert (out.parent / "_landing" / "ladder.png").is_file() and "```{image} _landing/ladder.png" in page
    assert f"run `{RUN}` (benchmark version 2.0, the library's is 2.1)" in page
    assert "prec_headline" not in page
    assert "*Not run yet: `scripts/run_study.py study 05_loading`.*" in page
    assert "2.1x" not in page  # no number is typed: the headline's text stays in the notebook


def test_gpu_run_set_gets_a_section_and_its_headlines_beside_the_cpu_ones(tmp_path):
    import yaml

    gpu_pages = load_script("gpu_pages")
    root, results = tmp_path, tmp_path / "data" / "results"
    (results / "environment").mkdir(parents=True)
    for folder in ("executed", "executed-cuda"):
        (root / "book" / folder).mkdir(parents=True)
    (root / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "book/index", "chapters": [
        {"file": "book/executed/02_precision"}, {"file": "book/executed/03_masks"}, {"file": "book/results"}]}))
    assert gpu_pages.main(["--root", str(root)]) == 0
    assert not (root / "book" / "gpu.md").exists()  # no GPU chapters: the toc as it is
    assert yaml.safe_load((root / "_build" / "toc.yml").read_text())["chapters"][-1] == {"file": "book/results"}

    html = {"text/html": "<p>x</p>", "text/plain": "x"}
    for folder in ("executed", "executed-cuda"):
        _notebook(root / "book" / folder / "02_precision.ipynb", [_glue("prec_headline", html)])
    assert gpu_pages.main(["--root", str(root)]) == 0
    chapters = yaml.safe_load((root / "_build" / "toc.yml").read_text())["chapters"]
    assert chapters[2] == {"file": "book/gpu", "sections": [{"file": "book/executed-cuda/02_precision"}]}
    assert chapters[3] == {"file": "book/results"} and (root / "book" / "gpu.md").is_file()
    page = landing_page.render(root / "book" / "executed", results, "2.1", root / "book" / "index.md")
    assert ":doc: executed/02_precision.ipynb" in page and ":doc: executed-cuda/02_precision.ipynb" in page
