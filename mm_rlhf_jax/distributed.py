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
    _orbax_barriers_off_devices()
    logging.info("process %d/%d: %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def _orbax_barriers_off_devices() -> None:
    """Orbax's barriers through the coordination service instead of device collectives.

    Orbax's default barrier is an all-gather on the devices, and it runs some of
    them on its background save threads, where they interleave with the main
    thread's collectives (the train step's) in a different order on each
    process: the processes then wait in different all-gathers forever. Barriers
    of the coordination service never touch the devices.
    """
    from absl import flags
    import orbax.checkpoint  # noqa: F401 (defines the flag)

    flags.FLAGS["experimental_orbax_use_distributed_barrier"].value = True


def is_primary() -> bool:
    """Process 0: the one that writes shared files (metrics, JSON, caches, generated data)."""
    return jax.process_index() == 0


_barriers = 0  # barriers so far; every process passes the same ones in the same order


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Every process waits here until all arrive (e.g. before reading a file process 0 just wrote).

    A barrier of jax.distributed's coordination service rather than a device
    collective: a process may arrive long after the others (process 0 building
    data, a slower compile) without tripping the CPU collectives' 30 s
    connection timeout, and the wait is bounded by `timeout_s`.
    """
    global _barriers
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the coordination client (orbax's barriers use it too)

    _barriers += 1
    jax_distributed.global_state.client.wait_at_barrier(f"mm_rlhf_jax:{_barriers}:{name}", timeout_s * 1000)
