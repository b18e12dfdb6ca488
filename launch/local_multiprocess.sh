#!/usr/bin/env bash
# Runs the same entry point as N local CPU processes under jax.distributed: a multi-host
# rehearsal on one machine (each process plays one host of a pod slice).
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [flags for every process ...]
#   launch/local_multiprocess.sh 2 configs/mm_dpo.py:tiny runs/mp --cpu_devices 4
#
# `--cpu_devices 4` gives each process 4 virtual CPU devices: 2 x 4 is the 8-device mesh of
#   python -m mm_rlhf_jax.main --config configs/mm_dpo.py:tiny --workdir runs/one --cpu_devices 8
# and the two runs write the same eval.json (tests/launch/test_multihost_runs.py checks it).
# Without it each process has one CPU device.
#
# Environment: PYTHON (default: python), PORT (coordinator port; default: a free one),
# LOG_DIR (default: WORKDIR's parent if local, else the current folder) gets
# <basename>.process<i>.log per process; process 0 also prints to this terminal.
#
# SIGTERM / SIGINT to this script reach every process: each checkpoints at the end of its
# current step and exits, and running the same command again resumes. If a process fails,
# the others are killed (they would wait forever in their next collective); the workdir keeps
# its last complete checkpoint. The exit status is the first failing process's.
set -euo pipefail
n="${1:?number of processes}"; config="${2:?config}"; workdir="${3:?workdir}"; shift 3
python="${PYTHON:-python}"
port="${PORT:-$("$python" -c "import portpicker; print(portpicker.pick_unused_port())")}"
if [[ -z "${LOG_DIR:-}" ]]; then
  if [[ "$workdir" == *://* ]]; then LOG_DIR=.; else LOG_DIR="$(dirname "$workdir")"; fi
fi
mkdir -p "$LOG_DIR"
name="$(basename "$workdir")"

pids=()
for ((i = 0; i < n; i++)); do
  log="$LOG_DIR/$name.process$i.log"
  cmd=("$python" -m mm_rlhf_jax.main --config "$config" --workdir "$workdir"
       --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id "$i" "$@")
  if ((i == 0)); then
    "${cmd[@]}" > >(tee "$log") 2>&1 &
  else
    "${cmd[@]}" > "$log" 2>&1 &
  fi
  pids+=($!)
done

forward() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap forward TERM INT
# Never leave processes behind if this script itself stops early.
trap 'kill -KILL "${pids[@]}" 2>/dev/null || true' EXIT

status=0
left=${#pids[@]}
while ((left > 0)); do
  done_pid=""
  rc=0
  wait -n -p done_pid "${pids[@]}" || rc=$?
  [[ -z "${done_pid:-}" ]] && continue  # woken by a forwarded signal: keep waiting for the processes
  left=$((left - 1))
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local_multiprocess: process with pid $done_pid exited with $rc; stopping the others" >&2
    if ((rc != 143)); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
  fi
done
exit $status
