"""Entry point for every algorithm: flags -> config -> algorithm registry -> run(config, workdir).

    python -m mm_rlhf_jax.main --config configs/<algo>.py:<preset> --workdir DIR [--config.x.y=value ...]

Kept thin on purpose: everything it calls is importable from notebooks.
Multi-host: on a TPU pod slice nothing extra is needed; for explicit clusters
pass --coordinator_address/--num_processes/--process_id (launch/local_multiprocess.sh
does, for N local CPU processes). --cpu_devices N gives a CPU process N virtual
devices, so one process and N processes can run on the same mesh:

    python -m mm_rlhf_jax.main --config configs/mm_dpo.py:tiny --workdir runs/one --cpu_devices 8
    launch/local_multiprocess.sh 2 configs/mm_dpo.py:tiny runs/two --cpu_devices 4
"""

import importlib
import logging

from absl import app, flags
from ml_collections import config_flags

from mm_rlhf_jax import distributed

# Algorithm name -> "module:function"; imported lazily so one algorithm's
# dependencies never load for another.
ALGORITHMS: dict[str, str] = {
    "reward_model": "mm_rlhf_jax.algorithms.reward_model.run:run",
    "mm_dpo": "mm_rlhf_jax.algorithms.mm_dpo.run:run",
    "ppo": "mm_rlhf_jax.algorithms.ppo.run:run",
    "align_pro": "mm_rlhf_jax.algorithms.align_pro.run:run",
    "longpo": "mm_rlhf_jax.algorithms.longpo.run:run",
}

config_flags.DEFINE_config_file("config", None, "configs/<algo>.py:<preset>", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, TensorBoard events, eval.json")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process runs)")
flags.DEFINE_integer("num_processes", None, "number of processes (explicit multi-process runs)")
flags.DEFINE_integer("process_id", None, "this process's id (explicit multi-process runs)")
flags.DEFINE_integer("cpu_devices", None, "CPU only: virtual devices in this process (multi-host rehearsals)")
flags.mark_flags_as_required(["config", "workdir"])


def get_algorithm(name: str):
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}")
    module, fn = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def main(argv):
    del argv
    f = flags.FLAGS
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, local_device_count=f.cpu_devices)
    config = f.config
    logging.info("algorithm %s, workdir %s", config.algorithm, f.workdir)
    get_algorithm(config.algorithm)(config, f.workdir)


if __name__ == "__main__":
    app.run(main)
