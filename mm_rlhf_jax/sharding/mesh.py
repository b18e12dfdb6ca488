"""Mesh construction with the project's four named axes.

  data      pure data parallelism (replicated params)
  fsdp      data parallelism with params/optimizer state sharded (ZeRO-3 style)
  tensor    Megatron-style tensor parallelism (heads, mlp, vocab)
  sequence  sequence/context parallelism (LongPO); activations only

The same function serves 1 device, 8 fake CPU devices and multi-host pods:
`jax.make_mesh` orders devices for the physical topology, and after
`jax.distributed.initialize` `jax.devices()` lists every host's devices.
"""

from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
# The axes that split the batch dimension of activations and data.
BATCH_AXES = ("data", "fsdp")


def make_mesh(shape: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """Builds a mesh over MESH_AXES.

    Args:
      shape: sizes per axis name; missing axes are 1 and at most one axis may be
        -1 ("all remaining devices"). None puts every device on `fsdp`.
      devices: defaults to all devices (every process's, on multi-host).
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = dict(shape or {"fsdp": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if n % known:
            raise ValueError(f"mesh {shape}: {n} devices not divisible by {known}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"but {n} are available"
        )
    # Auto axes: classic GSPMD propagation, which Flax linen's logical
    # constraints need (Explicit is the default of jax.make_mesh in 0.10+).
    return jax.make_mesh(
        tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_size_divisor(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
