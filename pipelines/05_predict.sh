#!/usr/bin/env bash
# Stage 5: predict the test split with the fine-tuned model (<run_dir>/predict).
# Usage: pipelines/05_predict.sh [CONFIG] [extra volseg options, e.g. --set a.b=c]
set -euo pipefail
CONFIG="${1:-configs/demo.yaml}"
if [[ $# -gt 0 ]]; then shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
run_stage predict "$CONFIG" "$@"
