#!/usr/bin/env bash
# Every stage in order through the numbered scripts (NPROC=N runs training under torchrun).
# Up-to-date stages are skipped, so it is safe to run again after an interruption.
# Usage: pipelines/run_all.sh [CONFIG] [extra volseg options]
set -euo pipefail
CONFIG="${1:-configs/demo.yaml}"
if [[ $# -gt 0 ]]; then shift; fi
here="$(dirname "${BASH_SOURCE[0]}")"
for script in 01_prepare 02_gan 03_pretrain 04_finetune 05_predict 06_evaluate; do
  "$here/$script.sh" "$CONFIG" "$@"
done
