#!/usr/bin/env bash
# Cloud TPU VM launcher for mm_rlhf_jax (single- and multi-host slices).
#
#   export TPU_NAME=mmrlhf-v5p ZONE=us-east5-a ACCELERATOR_TYPE=v5p-32 RUNTIME_VERSION=v2-alpha-tpuv5
#   launch/tpu_vm.sh create                 # allocate the slice (add SPOT=1 for spot capacity)
#   launch/tpu_vm.sh setup                  # copy this checkout to every worker, install with jax[tpu]
#   launch/tpu_vm.sh run configs/mm_dpo.py:llava_ov_7b gs://BUCKET/runs/mmdpo [--config.x=y ...]
#   launch/tpu_vm.sh ssh                    # shell on worker 0
#   launch/tpu_vm.sh delete
#
# `run` starts the same command on every worker (--worker=all); jax.distributed
# initialises itself from the TPU metadata, so no coordinator flags are needed.
# The workdir must be reachable from every host (a gs:// bucket): orbax writes
# each host's shards there. Re-running `run` with the same workdir resumes,
# which is also what to do after a spot/preemptible slice is preempted (the
# SIGTERM handler checkpoints before the VM goes away).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
REMOTE_DIR="${REMOTE_DIR:-mm_rlhf_jax}"
GC=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")

on_all() { "${GC[@]}" ssh "$TPU_NAME" --worker=all --command="$1"; }

cmd="${1:?usage: tpu_vm.sh create|setup|run|ssh|delete}"; shift || true
case "$cmd" in
  create)
    extra=()
    [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
    "${GC[@]}" create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
    ;;
  setup)
    # Ship the working tree (without local venvs/runs) and install on every worker.
    tar --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/mm_rlhf_jax_src.tgz .
    "${GC[@]}" scp /tmp/mm_rlhf_jax_src.tgz "$TPU_NAME":/tmp/ --worker=all
    on_all "(command -v bwrap >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q bubblewrap)) \
      && mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/mm_rlhf_jax_src.tgz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR \
      && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
      && .venv/bin/pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  run)
    config="${1:?config, e.g. configs/mm_dpo.py:llava_ov_7b}"; workdir="${2:?workdir, e.g. gs://bucket/run}"; shift 2
    on_all "cd ~/$REMOTE_DIR && .venv/bin/python -m mm_rlhf_jax.main --config $config --workdir $workdir $* \
      2>&1 | tee -a ~/run.log"
    ;;
  ssh)
    "${GC[@]}" ssh "$TPU_NAME" --worker=0
    ;;
  delete)
    "${GC[@]}" delete "$TPU_NAME" --quiet
    ;;
  *)
    echo "unknown command $cmd; use create|setup|run|ssh|delete" >&2; exit 2
    ;;
esac
