#!/usr/bin/env bash
# Execute the chapters with papermill.
#   scripts/run_study.sh study [names...]  study size (notebooks/params/<name>.yml) -> book/executed/, rows -> data/results/
#   scripts/run_study.sh ci [names...]     CI size (the parameters cells' defaults) -> tests/nbval/ reference copies,
#                                          rows -> a throw-away folder (never data/results/)
# Each chapter has a time budget (seconds, BUDGET_<name> or the default below): over it, the run stops with an error.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-study}; shift || true
export PATH="$PWD/.venv/bin:$PATH"
unset MPLBACKEND  # figures vanish from executed notebooks under Agg
declare -A BUDGET=([01_preprocess]=300 [02_precision]=400 [03_masks]=400 [04_nms]=900 [05_loading]=500 [06_ladder]=3000)
names=("$@")
if (( ${#names[@]} == 0 )); then
  for f in notebooks/0*.py; do names+=("$(basename "$f" .py)"); done
fi
case "$MODE" in
  study) outdir=book/executed ;;
  ci) outdir=tests/nbval; export MMDET_SPEEDUP_RESULTS=$(mktemp -d); trap 'rm -rf "$MMDET_SPEEDUP_RESULTS"' EXIT ;;
  *) echo "usage: $0 study|ci [names...]" >&2; exit 2 ;;
esac
mkdir -p "$outdir"
tmp=$(mktemp -d)
for name in "${names[@]}"; do
  src=notebooks/$name.py
  [[ -f $src ]] || { echo "no such chapter: $src" >&2; exit 2; }
  args=()
  if [[ $MODE == study && -f notebooks/params/$name.yml ]]; then args+=(-f "notebooks/params/$name.yml"); fi
  budget=${BUDGET[$name]:-600}
  [[ $MODE == ci ]] && budget=300
  echo "=== $name ($MODE, budget ${budget}s)"
  start=$(date +%s)
  jupytext --to ipynb -q -o "$tmp/$name.ipynb" "$src"
  timeout "$budget" papermill "$tmp/$name.ipynb" "$outdir/$name.ipynb" "${args[@]}" --cwd notebooks -k python3 \
    --no-progress-bar --log-level WARNING
  echo "=== $name done in $(( $(date +%s) - start ))s"
done
