#!/usr/bin/env bash
# Build the book's HTML offline, warnings as errors.
#   scripts/build_html.sh          the study's book (book/executed/) -> _build/html
#   scripts/build_html.sh quick    the quick look (_build/quick/book/executed/) -> _build/quick/_build/html
# The quick look is its own small source tree (the book's pages and config, the CI-size executed notebooks),
# so nothing of the study's book/executed/ is read or written.
# Either way the results page (book/results.md, git-ignored) is first written from that book's own run records.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/vendor_mathjax.sh >/dev/null
JB=.venv/bin/jupyter-book
if [[ ${1:-} == quick ]]; then
  root=_build/quick
  [[ -d $root/book/executed ]] || { echo "no quick look yet: run 'make book SIZE=ci'" >&2; exit 2; }
  mkdir -p "$root/scripts"
  cp _config.yml _toc.yml "$root/"
  cp book/*.md "$root/book/"
  cp scripts/chapter_status.py "$root/scripts/"
  ln -sfn "$PWD/vendor" "$root/vendor"
  # the quick look's own runs: its status.json and rows, not the study's
  .venv/bin/python scripts/results_page.py --executed "$root/book/executed" --results "$root/results" \
    --out "$root/book/results.md"
  .venv/bin/python scripts/landing_page.py --executed "$root/book/executed" --results "$root/results" \
    --out "$root/book/index.md"
else
  root=.
  .venv/bin/python scripts/results_page.py  # book/results.md, git-ignored: written fresh every build
  .venv/bin/python scripts/landing_page.py  # book/index.md, the same
fi
# the table of contents, with the GPU run set's section where book/executed-cuda/ has chapters
results=$([[ $root == . ]] && echo data/results || echo "$root/results")
.venv/bin/python scripts/gpu_pages.py --root "$root" --results "$results" --out "$root/_build/toc.yml"
rm -rf "$root/_build/html" "$root/_build/.doctrees"  # no stale pages or cached pages from an earlier build
"$JB" build "$root" --toc "$(cd "$root" && pwd)/_build/toc.yml" -W -n --keep-going --builder html
echo "book: $root/_build/html/index.html"
