#!/usr/bin/env bash
# Replay the committed CI-size reference notebooks (tests/nbval/*.ipynb) with nbval and compare every
# output, after masking numbers, whitespace, figures, run ids, timestamps, SHAs and paths
# (tests/nbval_sanitize.cfg). Structure still has to match: column names, stage names, row counts.
# Cells tagged `nbval-ignore-output` (timing prints) are run but not compared.
# The notebooks' result writes go to a throw-away folder (MMDET_SPEEDUP_RESULTS), never to data/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3

shopt -s nullglob
notebooks=(tests/nbval/*.ipynb)
if (( ${#notebooks[@]} == 0 )); then
    echo "nbval: no reference notebooks in tests/nbval/ yet; nothing to replay"
    exit 0
fi

MMDET_SPEEDUP_RESULTS=$(mktemp -d)
export MMDET_SPEEDUP_RESULTS
# No cache of conditioned models (170-300 MB each) on CI's small disk; the graphs peers export go with each kernel.
export MMDET_SPEEDUP_MODEL_CACHE=0
trap 'rm -rf "$MMDET_SPEEDUP_RESULTS"' EXIT
# Figures vanish from executed notebooks under MPLBACKEND=Agg.
unset MPLBACKEND

echo "nbval: replaying ${#notebooks[@]} notebook(s); results go to $MMDET_SPEEDUP_RESULTS"
"$PY" -m pytest -q --nbval --nbval-current-env \
    --nbval-sanitize-with tests/nbval_sanitize.cfg \
    -p no:cacheprovider "$@" "${notebooks[@]}"
