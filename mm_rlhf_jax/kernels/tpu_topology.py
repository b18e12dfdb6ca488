"""Compile kernel-level functions for one chip of a TPU generation, from any host.

Uses libtpu's ahead-of-time compiler through `jax.experimental.topologies`: the
Pallas kernels go through Mosaic exactly as on a TPU (VMEM allocation, layouts),
and the executable's `memory_analysis()` / `cost_analysis()` are the real ones.
Used by the compile tests and bench/kernels_tpu_aot.py; whole-train-step compiles
belong to `mm_rlhf_jax.aot`.

    compiled = compile_for_chip("v5p", jax.grad(loss), (ShapeDtypeStruct(...), ...))
"""

import functools
import os

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from mm_rlhf_jax.kernels import dispatch

# Smallest topology of each generation (jax topology names).
TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}


def libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def topology(generation: str):
    """The jax TopologyDescription of the generation's smallest slice (cached: libtpu
    initialises once per process)."""
    # Several processes on one host may each load libtpu to compile (nothing runs).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[generation])


def compile_for_chip(generation: str, fn, shapes):
    """jit(fn) compiled for ONE chip of `generation`; shapes: ShapeDtypeStructs (pytree).

    Kernels inside are traced for that chip (`dispatch.target_platform`), so
    impl="auto" picks the Mosaic kernels and the generation's tile tables."""
    device = topology(generation).devices[0]
    mesh = jax.sharding.Mesh([device], ("chip",))
    on_chip = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, P()))
    args = jax.tree.map(on_chip, shapes)
    with dispatch.target_platform(devices=[device]):
        return jax.jit(fn).lower(*args).compile()


def summary(compiled) -> dict:
    """Temp / argument / output bytes and XLA's cost model figures of an executable."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "temp_mib": round(mem.temp_size_in_bytes / 2**20, 2),
        "argument_mib": round(mem.argument_size_in_bytes / 2**20, 2),
        "output_mib": round(mem.output_size_in_bytes / 2**20, 2),
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "optimal_seconds": float(cost.get("optimal_seconds", 0.0)),
    }
