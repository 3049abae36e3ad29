# Shared by the numbered stage scripts (sourced, not run). Each stage goes through
# `volseg run --only STAGE`, so it writes the same manifest as a full `volseg run` and is
# skipped when up to date. With NPROC > 1 the training stages run their own command under
# torchrun instead (set TORCHRUN_ARGS for multi-node rendezvous; default --standalone).

run_stage() {
  local stage="$1" config="$2"
  shift 2
  volseg run --config "$config" --only "$stage" "$@"
}

run_training_stage() {
  local stage="$1" config="$2"
  shift 2
  if [[ "${NPROC:-1}" -gt 1 ]]; then
    # shellcheck disable=SC2086  # TORCHRUN_ARGS is a list of options
    torchrun ${TORCHRUN_ARGS:---standalone} --nproc_per_node "$NPROC" \
      -m volseg "$stage" --config "$config" "$@"
  else
    run_stage "$stage" "$config" "$@"
  fi
}
