#!/usr/bin/env bash
# Every GPU measurement the open speed issues ask for, in one run sized for a short lease
# (about 8 minutes on one H100/H200 after the install): the training step and the
# fine-tuning data path (issue 19: network alone vs fed by the stage's loader, compile and
# channels-last, share of the bf16 matmul ceiling), the normalisation options of the
# default network (issue 19), and predict end to end against the MONAI reference (issue 18).
#
#   bash bench/gpu_checks.sh OUT_DIR            # on the GPU machine, after scripts/install.sh
#                                               # (offline: carried wheels, bench/README.md)
#   QUICK=1 bash bench/gpu_checks.sh OUT_DIR    # a CPU smoke run of the same steps, tiny sizes
#   STEPS="train predict" bash bench/gpu_checks.sh OUT_DIR   # some of the steps (train, predict, norm)
#   STEPS=predict PREDICT_ARGS="--writers 4" bash bench/gpu_checks.sh OUT_DIR   # every row 4 writers
#
# Steps run in the order train, predict, norm (the issues' headline figures first), at most
# 200 + 240 + 2 x 100 s; expected about 7 minutes in all on one H200. The predict step's
# synthetic studies are written in the background from the start, while the train step runs.
# The train step is at configs/mosmed.yaml's settings (BatchNorm, compile, channels-last).
#
# Each step has its own time limit and writes its table to OUT_DIR/<step>.txt (train.json
# beside it; eight files in all, what a device call brings back); a step that fails or
# runs out of time is logged in OUT_DIR/steps.log and the next one still runs. The results
# go into bench/README.md.
set -u
out=${1:?usage: bash bench/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."

if [[ "${QUICK:-0}" == 1 ]]; then
  patch=(32 32 32); studies=2; limit=300
  tiny='"widths": [8, 16, 32, 64], "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2]], "hidden_size": 96, "depth": 2, "num_heads": 4'
  train_extra=(--steps 2 --warmup 1 --matmul-size 256)
  train_models=(--models transunet3d --transunet-params "{\"norm\": \"batch\", $tiny}")
  plain=()
  predict_extra=(--model transunet3d --params "{$tiny}" --roi 64 64 16 --spacing 2.8 2.8 10)
  repeat=2; fed_studies=2
else
  patch=(128 128 32); studies=16; limit=200
  tiny=''
  train_extra=(--steps 20 --warmup 5)
  # TransUNet3D as configs/mosmed.yaml builds it, MONAI UNet, the nnU-Net-style PlainConvUNet
  train_models=(--transunet-params '{"norm": "batch"}')
  plain=(plain_conv_unet)  # beside the default network's eager InstanceNorm row
  predict_extra=(--model transunet3d --params '{"norm": "batch"}' --roi 128 128 32)
  repeat=4; fed_studies=8
fi
# a row with decoding and lung masks in worker processes: all cores but four
decode_workers=$(( $(nproc) > 5 ? $(nproc) - 4 : 1 ))
# and the clean-up and files of that row in this many writer threads (1.8x on 2 threads here)
wide_writers=$(( $(nproc) > 8 ? 4 : 2 ))
py=${PYTHON:-python3}  # the device image has python3 only
predict_work="${TMPDIR:-/tmp}/volseg-gpu-checks-predict"  # outside OUT_DIR: big

wanted() { [[ " ${STEPS:-train norm predict} " == *" $1 "* ]]; }

step() {  # step NAME LIMIT_S COMMAND...: run it, log its status and wall time
  local name=$1 limit_s=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit_s" "$@" > "$out/$name.txt" 2>&1
  rc=$?
  echo "$name rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$out/steps.log"
}

{ nvidia-smi; echo "nproc $(nproc)"; "$py" -c 'import torch; print("torch", torch.__version__)'; } \
  > "$out/nvidia-smi.txt" 2>&1 || true

if wanted predict; then  # the predict bench's studies, in 2 processes while the train step runs
  rm -rf "$predict_work"; mkdir -p "$predict_work"
  "$py" -c 'import sys; from volseg.data.synth import synthesize_dataset
synthesize_dataset(sys.argv[1], preset="mosmed", seed=0, workers=2)' "$predict_work/data" \
    > "$out/synth.txt" 2>&1 &
  synth_pid=$!
fi

# Issue 19 items 1, 2 and 4: the step alone (eager, compile, channels-last) and fed by the
# fine-tuning stage's DataLoader (worker and device augmentation) set up as the stage does
# at configs/mosmed.yaml's settings (compile + channels-last), ceiling share.
wanted train && step train "$limit" "$py" bench/train_bench.py --patch "${patch[@]}" "${train_extra[@]}" \
  "${train_models[@]}" --compile --channels-last --data-path "$fed_studies" --loader-workers 8 --json "$out/train.json"

# Issue 18: predict end to end (no lungs, whole job, whole job bf16, whole job with decoding
# and lung masks in worker processes and a wider writer pool), each study predicted $repeat
# times, against the MONAI reference chain (each study once) in the same run.
if wanted predict; then
  wait "$synth_pid"
  step predict 240 "$py" bench/predict_bench.py --studies "$studies" --repeat "$repeat" \
    --workdir "$predict_work" "${predict_extra[@]}" --decode-workers "$decode_workers" \
    --wide-writers "$wide_writers" ${PREDICT_ARGS:-}
  rm -rf "$predict_work"
fi

# Issue 19 item 2: the default network's normalisation options (instance is the registry
# default, beside the PlainConvUNet eager; group), eager and compiled, contiguous layout.
for norm in instance group; do
  wanted norm || break
  params="{\"norm\": \"$norm\"${tiny:+, $tiny}}"
  models=(transunet3d)
  [[ $norm == instance ]] && models+=("${plain[@]}")
  step "norm_$norm" 100 "$py" bench/train_bench.py --patch "${patch[@]}" \
    "${train_extra[@]}" --models "${models[@]}" --compile --transunet-params "$params"
done

echo "results in $out (steps.log lists each step's exit code and wall time)"
