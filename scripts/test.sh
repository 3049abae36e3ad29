#!/usr/bin/env bash
# Install volseg with its test dependencies, lint, and run the test suite (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUTF8=1  # text files are UTF-8 whatever the machine locale
bash scripts/install.sh test
"$PY" -m ruff check volseg tests bench
"$PY" -m pytest -q -p no:cacheprovider tests "$@"
