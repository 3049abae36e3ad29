#!/usr/bin/env bash
# Stage 4: 3D TransUNet fine-tuning on masks + pseudo-masks. NPROC=N: torchrun.
# Usage: pipelines/04_finetune.sh [CONFIG] [extra volseg options, e.g. --set a.b=c]
set -euo pipefail
CONFIG="${1:-configs/demo.yaml}"
if [[ $# -gt 0 ]]; then shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
run_training_stage finetune "$CONFIG" "$@"
