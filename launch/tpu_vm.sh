#!/usr/bin/env bash
# Cloud TPU VM launcher for mm_rlhf_jax (single- and multi-host slices).
#
#   export TPU_NAME=mmrlhf-v5p ZONE=us-east5-a ACCELERATOR_TYPE=v5p-32 RUNTIME_VERSION=v2-alpha-tpuv5
#   launch/tpu_vm.sh create                 # allocate the slice (SPOT=1 for spot capacity)
#   launch/tpu_vm.sh setup                  # every worker: uv, Python $PYTHON_VERSION, this checkout, jax[tpu]
#   launch/tpu_vm.sh run configs/mm_dpo.py:llava_ov_7b gs://BUCKET/runs/mmdpo [--config.x=y ...]
#   launch/tpu_vm.sh logs                   # follow worker 0's log (run does this too; Ctrl-C leaves the run going)
#   launch/tpu_vm.sh stop                   # SIGTERM on every worker: they checkpoint one step and exit
#   launch/tpu_vm.sh ssh                    # shell on worker 0
#   launch/tpu_vm.sh delete
#
# setup: TPU VM images ship an older Python than this project needs (>= 3.11), so uv
# (installed into ~/.local/bin if missing) creates ~/$REMOTE_DIR/.venv with Python
# $PYTHON_VERSION (default 3.11, the version the project is tested with; uv downloads it
# when the image lacks it), then installs this checkout with its `gcs` extra (gcsfs and
# google-cloud-storage: gs:// workdirs) and jax[tpu]==$JAX_VERSION (default 0.10.2, the
# tested jax; it pins the matching libtpu).
#
# run: starts the same command on every worker (--worker=all), detached, so it survives
# the ssh session; jax.distributed initialises itself from the TPU metadata (no coordinator
# flags). Each worker logs to ~/mm_rlhf_jax_run.log and keeps the process id in
# ~/mm_rlhf_jax_run.pid. The workdir must be reachable from every host: a gs:// bucket
# (orbax writes each host's shards there; every other file is written by process 0).
# Data, tokenizer and checkpoint paths may be gs:// too (tokenizers and HF checkpoints are
# copied once to ~/.cache/mm_rlhf_jax on each host, since transformers reads local files).
# Re-running `run` with the same workdir resumes; that is also what to do after a
# spot/preemptible slice is preempted (the SIGTERM handler checkpoints before the VM goes away).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
REMOTE_DIR="${REMOTE_DIR:-mm_rlhf_jax}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
GC=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")
LOG='~/mm_rlhf_jax_run.log'
PID='~/mm_rlhf_jax_run.pid'

on_all() { "${GC[@]}" ssh "$TPU_NAME" --worker=all --command="$1"; }
on_0() { "${GC[@]}" ssh "$TPU_NAME" --worker=0 --command="$1"; }
follow() { on_0 "while [ ! -s $PID ]; do sleep 1; done; tail -n +1 --pid=\$(cat $PID) -F $LOG"; }

cmd="${1:?usage: tpu_vm.sh create|setup|run|logs|stop|ssh|delete}"; shift || true
case "$cmd" in
  create)
    extra=()
    [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
    "${GC[@]}" create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
    ;;
  setup)
    # Ship the working tree (without local venvs, runs and git history) and install on every worker.
    tar --exclude=.venv --exclude=.ci-venv --exclude=runs --exclude=.git -czf /tmp/mm_rlhf_jax_src.tgz .
    "${GC[@]}" scp /tmp/mm_rlhf_jax_src.tgz "$TPU_NAME":/tmp/ --worker=all
    on_all "set -e; export PATH=\$HOME/.local/bin:\$PATH
      command -v bwrap >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q bubblewrap)  # the code sandbox
      command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
      mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/mm_rlhf_jax_src.tgz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR
      uv venv --allow-existing --python $PYTHON_VERSION .venv
      uv pip install --python .venv/bin/python -e '.[gcs]' 'jax[tpu]==$JAX_VERSION' \
        -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
      .venv/bin/python -c 'import sys, jax; print(sys.version.split()[0], \"jax\", jax.__version__)'"
    ;;
  run)
    config="${1:?config, e.g. configs/mm_dpo.py:llava_ov_7b}"; workdir="${2:?workdir, e.g. gs://bucket/run}"; shift 2
    args=""
    for a in "$@"; do args+=" $(printf '%q' "$a")"; done
    on_all "cd ~/$REMOTE_DIR && rm -f $PID && (nohup .venv/bin/python -m mm_rlhf_jax.main \
      --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir")$args >> $LOG 2>&1 & echo \$! > $PID)"
    follow
    ;;
  logs)
    follow
    ;;
  stop)
    on_all "kill -TERM \$(cat $PID) 2>/dev/null || true"
    ;;
  ssh)
    "${GC[@]}" ssh "$TPU_NAME" --worker=0
    ;;
  delete)
    "${GC[@]}" delete "$TPU_NAME" --quiet
    ;;
  *)
    echo "unknown command $cmd; use create|setup|run|logs|stop|ssh|delete" >&2; exit 2
    ;;
esac
