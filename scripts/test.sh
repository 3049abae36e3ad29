#!/usr/bin/env bash
# Install volseg with its test dependencies, lint, and run the test suite (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUTF8=1  # text files are UTF-8 whatever the machine locale
bash scripts/install.sh test
# The HTML-report test opens report.html in a headless Chromium (it skips without one):
# installed from Debian when this runs as root with apt-get, best effort (~20 s).
if ! command -v chromium-headless-shell >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    chromium-headless-shell) >/dev/null 2>&1 || echo "chromium-headless-shell not installed"
fi
"$PY" -m ruff check volseg tests bench
"$PY" -m pytest -q -p no:cacheprovider tests "$@"
