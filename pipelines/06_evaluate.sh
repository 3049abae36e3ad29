#!/usr/bin/env bash
# Stage 6: metrics, plots and report for the test split (<run_dir>/evaluate).
# Usage: pipelines/06_evaluate.sh [CONFIG] [extra volseg options, e.g. --set a.b=c]
set -euo pipefail
CONFIG="${1:-configs/demo.yaml}"
if [[ $# -gt 0 ]]; then shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
run_stage evaluate "$CONFIG" "$@"
