#!/usr/bin/env bash
# Stage 1: datalist with patient-level splits, lung masks, preprocessing cache.
# Usage: pipelines/01_prepare.sh [CONFIG] [extra volseg options, e.g. --set a.b=c]
set -euo pipefail
CONFIG="${1:-configs/demo.yaml}"
if [[ $# -gt 0 ]]; then shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
run_stage prepare "$CONFIG" "$@"
