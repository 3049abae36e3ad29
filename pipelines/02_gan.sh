#!/usr/bin/env bash
# Stage 2: 3D GAN on healthy lungs, pseudo-masks for unlabeled COVID scans. NPROC=N: torchrun.
# Usage: pipelines/02_gan.sh [CONFIG] [extra volseg options, e.g. --set a.b=c]
set -euo pipefail
CONFIG="${1:-configs/demo.yaml}"
if [[ $# -gt 0 ]]; then shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
run_training_stage gan "$CONFIG" "$@"
