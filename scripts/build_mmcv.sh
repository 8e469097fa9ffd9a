#!/usr/bin/env bash
# Build (once) and install mmcv 2.1.0 from its sdist into the active venv.
# The wheel is cached outside the repo, keyed by mmcv, torch and CUDA versions,
# so a second clone (or CI on the same machine) reuses it in seconds.
set -euo pipefail
PY=${PY:-.venv/bin/python}; PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/mmdet-speedup
read -r TORCH CUDA < <("$PY" -c "import torch; print(torch.__version__.split('+')[0], (torch.version.cuda or 'none') if torch.cuda.is_available() else 'cpu')")
KEY="mmcv-${MMCV_VERSION}_torch-${TORCH}_cuda-${CUDA}"
WHEELDIR="$CACHE/$KEY"

if "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  echo "mmcv $MMCV_VERSION with ops already installed"; exit 0
fi
if ! ls "$WHEELDIR"/mmcv-*.whl >/dev/null 2>&1; then
  echo "=== Building mmcv $MMCV_VERSION from source ($KEY)."
  echo "=== This happens once per machine: about 14 minutes on 2 cores (CPU ops only), longer with CUDA ops."
  mkdir -p "$WHEELDIR"; WORK=$(mktemp -d)
  "$PY" -m pip download --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$WORK" -q
  tar -xzf "$WORK"/mmcv-*.tar.gz -C "$WORK"
  SRC=$(ls -d "$WORK"/mmcv-"$MMCV_VERSION")
  # torch 2.14 headers require C++20; mmcv forces -std=c++17 last on the compile line.
  sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC/setup.py"
  export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export CFLAGS="-Wsign-compare -DNDEBUG -g0 -fwrapv -O3 -Wall"
  if "$PY" -c "import torch,sys; sys.exit(not torch.cuda.is_available())" && command -v nvcc >/dev/null; then
    export FORCE_CUDA=1; echo "=== GPU and nvcc found: building CUDA ops too"
  fi
  LOG="$WHEELDIR/build.log"
  echo "=== compiling (log: $LOG); one dot per compiled file"
  if ! ( cd "$SRC" && "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WHEELDIR" . -v ) 2>&1 \
        | tee "$LOG" | grep --line-buffered -oE "^\s*\[[0-9]+/[0-9]+\]" | awk '{printf "%s ", $1; fflush()}'; then
    :
  fi
  echo
  if ! ls "$WHEELDIR"/mmcv-*.whl >/dev/null 2>&1; then
    echo "ERROR: mmcv build failed. Last lines of $LOG:" >&2; tail -n 25 "$LOG" >&2
    echo "Check: setuptools<81 in the venv, torch importable, g++ >= 10 (C++20). Remove $WHEELDIR and re-run." >&2
    exit 1
  fi
  rm -rf "$WORK"
fi
"$PY" -m pip install --no-deps -q "$WHEELDIR"/mmcv-*.whl
"$PY" -c "import mmcv.ops; print('mmcv', __import__('mmcv').__version__, 'ops OK')"
