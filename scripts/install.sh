#!/usr/bin/env bash
# Install volseg into the current Python environment (use a virtualenv if you like).
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh test     # the tool plus test dependencies (pytest, ruff)
# If torch is missing: on a machine without an NVIDIA GPU the CPU build is installed from
# PyTorch's CPU wheel index (small, fast); with a GPU, the default (CUDA) build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_VERSION="${VOLSEG_TORCH_VERSION:-2.13.0}"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found, installing torch==$TORCH_VERSION (CUDA build)"
    "$PY" -m pip install "torch==$TORCH_VERSION"
  else
    echo "install: no GPU found, installing torch==$TORCH_VERSION (CPU build)"
    if ! "$PY" -m pip install "torch==$TORCH_VERSION" --quiet \
      --index-url https://download.pytorch.org/whl/cpu --retries 0 --timeout 15 2>/dev/null; then
      echo "install: PyTorch's CPU index is unreachable; installing torch==$TORCH_VERSION from the default index"
      "$PY" -m pip install "torch==$TORCH_VERSION"
    fi
  fi
fi

if [ "${1:-}" = "test" ]; then
  "$PY" -m pip install -e ".[test]"
else
  "$PY" -m pip install -e .
fi
