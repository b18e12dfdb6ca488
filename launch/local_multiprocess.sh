#!/usr/bin/env bash
# Runs the same entry point as N local CPU processes under jax.distributed (a
# multi-host rehearsal on one machine):
#   launch/local_multiprocess.sh 2 configs/mm_dpo.py:tiny runs/mp [--config.x=y ...]
set -euo pipefail
n="${1:?number of processes}"; config="${2:?config}"; workdir="${3:?workdir}"; shift 3
port=$(python -c "import portpicker; print(portpicker.pick_unused_port())")
pids=()
for ((i = 0; i < n; i++)); do
  python -m mm_rlhf_jax.main --config "$config" --workdir "$workdir" \
    --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id "$i" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
