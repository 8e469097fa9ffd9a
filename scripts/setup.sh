#!/usr/bin/env bash
# Bootstraps .venv with the pinned stack, mmcv (cached wheel), the package, and the local MathJax.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "=== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "=== installing pinned dependencies (first time: a few minutes; torch is large)"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
bash scripts/build_mmcv.sh
bash scripts/setup_mmdeploy.sh  # the deployed peer (chapter on runtimes); --no-deps, see the script
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
bash scripts/vendor_mathjax.sh
echo "=== set-up done"
