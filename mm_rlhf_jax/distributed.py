"""Multi-host start-up: one call before any JAX computation.

On a Cloud TPU VM pod slice `jax.distributed.initialize()` finds the
coordinator and process ids from the TPU metadata; elsewhere (GPU clusters,
local CPU processes in tests) they are passed explicitly.

Shared files follow one rule: process 0 writes (`is_primary`), and a
`barrier` separates that write from any other process reading the file.
"""

import logging
import os

import jax


def on_tpu_pod() -> bool:
    # Set by the TPU runtime on multi-host slices (one entry per worker).
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_count: int | None = None) -> None:
    """Initialises jax.distributed when running multi-process; a no-op for one process."""
    if local_device_count:
        # CPU only: several virtual devices per process (multi-host tests on one machine).
        jax.config.update("jax_num_cpu_devices", local_device_count)
    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif on_tpu_pod():
        jax.distributed.initialize()
    else:
        return
    logging.info("process %d/%d: %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
    """Process 0: the one that writes shared files (metrics, JSON, caches, generated data)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all arrive (e.g. before reading a file process 0 just wrote)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
