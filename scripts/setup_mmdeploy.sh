#!/usr/bin/env bash
# Adds mmdeploy 1.3.1 (the deployed peer row, src/mmdet_speedup/deploy.py) to .venv without touching the pinned stack.
#
# --no-deps: the wheel pins protobuf<=3.20.2, which onnx 1.23 (protobuf >= 4) cannot use, and lists grpcio,
# multiprocess and prettytable, which its ONNX export path never imports. What that path does import beyond the
# stack is aenum (backend/codebase registration). Afterwards `pip check` names those four and nothing else; torch,
# mmdet, mmcv, onnx, onnxruntime and openvino are unchanged. The export needs onnx; running the graph needs
# onnxruntime and/or openvino (requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install -q --disable-pip-version-check --no-deps "mmdeploy==1.3.1" "aenum==3.1.17"
"$PY" - <<'EOF'
import mmdeploy, onnx
from mmdeploy.apis.onnx import export  # noqa: F401  (the function deploy.export_end2end drives)
from mmdeploy.codebase import import_codebase
from mmdeploy.utils import Codebase
import_codebase(Codebase.MMDET)
print(f"=== mmdeploy {mmdeploy.__version__} ready (onnx {onnx.__version__})")
EOF
