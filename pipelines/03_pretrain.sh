#!/usr/bin/env bash
# Stage 3: Barlow Twins pretraining of the encoder. NPROC=N: torchrun.
# Usage: pipelines/03_pretrain.sh [CONFIG] [extra volseg options, e.g. --set a.b=c]
set -euo pipefail
CONFIG="${1:-configs/demo.yaml}"
if [[ $# -gt 0 ]]; then shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
run_training_stage pretrain "$CONFIG" "$@"
