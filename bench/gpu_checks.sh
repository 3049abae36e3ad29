#!/usr/bin/env bash
# Every GPU measurement the open speed issues ask for, in one run sized for a short lease
# (about 8 minutes on one H100/H200 after the install): the training step and the
# fine-tuning data path (issue 19: network alone vs fed by the stage's loader, compile and
# channels-last, share of the bf16 matmul ceiling), the normalisation options of the
# default network (issue 19), and predict end to end against the MONAI reference (issue 18).
#
#   bash bench/gpu_checks.sh OUT_DIR            # on the GPU machine, after scripts/install.sh
#   QUICK=1 bash bench/gpu_checks.sh OUT_DIR    # a CPU smoke run of the same steps, tiny sizes
#   STEPS="train norm" bash bench/gpu_checks.sh OUT_DIR   # some of the steps (train, norm, predict)
#
# At most 200 + 2 x 90 + 180 s of steps; a device call is limited to 600 s, so on a lease
# that also installs, run it as two calls: STEPS="train norm", then STEPS=predict.
#
# Each step has its own time limit and writes its table to OUT_DIR/<step>.txt (JSON beside
# it where the bench writes one); a step that fails or runs out of time is logged in
# OUT_DIR/steps.log and the next one still runs. The results go into bench/README.md.
set -u
out=${1:?usage: bash bench/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."

if [[ "${QUICK:-0}" == 1 ]]; then
  patch=(32 32 32); studies=2; limit=300
  tiny='"widths": [8, 16, 32, 64], "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2]], "hidden_size": 96, "depth": 2, "num_heads": 4'
  train_extra=(--steps 2 --warmup 1 --matmul-size 256)
  train_models=(--models transunet3d --transunet-params "{$tiny}")
  predict_extra=(--model transunet3d --params "{$tiny}" --roi 64 64 16 --spacing 2.8 2.8 10)
else
  patch=(128 128 32); studies=16; limit=200
  tiny=''
  train_extra=(--steps 20 --warmup 5)
  train_models=()  # TransUNet3D, MONAI UNet and the nnU-Net-style PlainConvUNet
  predict_extra=()
fi
decode_workers=$(( $(nproc) > 4 ? 4 : 1 ))  # a row with decoding in worker processes

wanted() { [[ " ${STEPS:-train norm predict} " == *" $1 "* ]]; }

step() {  # step NAME LIMIT_S COMMAND...: run it, log its status and wall time
  local name=$1 limit_s=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit_s" "$@" > "$out/$name.txt" 2>&1
  rc=$?
  echo "$name rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$out/steps.log"
}

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

# Issue 19 items 1, 2 and 4: the step alone (eager, compile, channels-last) and fed by the
# fine-tuning stage's DataLoader (worker and device augmentation), ceiling share.
wanted train && step train "$limit" python bench/train_bench.py --patch "${patch[@]}" "${train_extra[@]}" \
  "${train_models[@]}" --compile --channels-last --data-path "$studies" --loader-workers 8 --json "$out/train.json"

# Issue 19 item 2: the default network's normalisation options, eager and compiled.
for norm in group batch; do
  wanted norm || break
  params="{\"norm\": \"$norm\"${tiny:+, $tiny}}"
  step "norm_$norm" 90 python bench/train_bench.py --patch "${patch[@]}" \
    "${train_extra[@]}" --models transunet3d --compile --transunet-params "$params" \
    --json "$out/norm_$norm.json"
done

# Issue 18: predict end to end (no lungs, whole job, whole job bf16, whole job with decoding
# and lung masks in worker processes) against the MONAI
# reference chain in the same run.
wanted predict && step predict 180 python bench/predict_bench.py --studies "$studies" \
  "${predict_extra[@]}" --decode-workers "$decode_workers"

echo "results in $out (steps.log lists each step's exit code and wall time)"
