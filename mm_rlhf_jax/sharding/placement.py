"""The one place where arrays move between host memory and the mesh (multi-process aware).

Two kinds of host batch exist, and each has its put:

  put_batch(batch, mesh)    this process's rows of a global batch (a training
                            iterator or a reference pass sharded per process):
                            `host_slot` says which rows those are.
  put_global(x, sharding)   an array every process holds in full and identical
                            (eval batches, rollout prompts, scalars): each device
                            takes its slice, nothing is duplicated.

`fetch(x)` brings a global array back as a full numpy array on every process:
fully addressable arrays are read directly, fully replicated ones from a local
replica, anything else through a cross-process all-gather. Outside this module
nothing calls jax.device_get on a sharded array.
"""

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mm_rlhf_jax.sharding.mesh import BATCH_AXES, batch_size_divisor, replicated


@functools.cache  # per mesh: row_axes runs on every put_batch (each train step)
def _processes_span_sequence(mesh: Mesh) -> bool:
    """Whether every process holds whole groups along the `sequence` axis (one host per group or more)."""
    devices = mesh.devices
    procs = np.vectorize(lambda d: d.process_index)(devices)
    axis = mesh.axis_names.index("sequence")
    return bool((procs == np.take(procs, [0], axis=axis)).all())


def row_axes(mesh: Mesh, rows: int | None = None) -> tuple[str, ...]:
    """The mesh axes that split a data batch of `rows` global rows.

    The batch axes; and `sequence` too when the rows divide over it and every
    process spans whole sequence groups (so the rows a process holds are the
    same either way). Under context parallelism a batch's media would otherwise
    sit replicated on every chip of a sequence group (MM-DPO's 384 pairs of
    anyres tiles on v5p-8: 25 GB per chip); the step reshards each microbatch
    onto the sequence axis itself. rows None: the batch axes only.
    """
    seq = dict(mesh.shape).get("sequence", 1)
    if (rows is not None and seq > 1 and rows % (batch_size_divisor(mesh) * seq) == 0
            and _processes_span_sequence(mesh)):
        return BATCH_AXES + ("sequence",)
    return BATCH_AXES


def row_sharding(mesh: Mesh, ndim: int, rows: int | None = None) -> NamedSharding:
    """Leading (row) dimension over row_axes(mesh, rows), the rest replicated."""
    return NamedSharding(mesh, P(row_axes(mesh, rows), *([None] * (ndim - 1))))


@functools.cache  # per mesh, as above
def _host_slots(mesh: Mesh) -> int:
    """How many distinct row blocks of the batch axes the processes hold (the host slot count)."""
    d = batch_size_divisor(mesh)
    held = len({idx[0].indices(d)[:2]
                for idx in row_sharding(mesh, 1).addressable_devices_indices_map((d,)).values()})
    return d // held


def global_rows(local_rows: int, mesh: Mesh) -> int:
    """The global row count of a batch of which this process holds `local_rows` (its host slot)."""
    return local_rows * _host_slots(mesh)


def check_rows(n: int, mesh: Mesh, what: str) -> None:
    """n rows must split evenly over the mesh's batch axes."""
    divisor = batch_size_divisor(mesh)
    if n % divisor:
        raise ValueError(f"{what} = {n} rows must divide evenly over the mesh's batch axes "
                         f"({dict((a, mesh.shape[a]) for a in BATCH_AXES)}, total {divisor})")


@dataclasses.dataclass(frozen=True)
class HostSlot:
    """This process's rows of every global batch: rows [index * rows, (index + 1) * rows) of count * rows.

    Data readers give each process exactly these rows, so the global batch (and
    every result) is the same with any number of processes. Processes whose
    devices hold the same rows (batch axes within a host) share an index.
    """

    rows: int
    index: int
    count: int

    @property
    def shard(self) -> tuple[int, int]:
        return self.index, self.count


def host_slot(global_batch: int, mesh: Mesh) -> HostSlot:
    """Which rows of a `global_batch`-row batch this process's devices hold (under row_sharding)."""
    check_rows(global_batch, mesh, "global batch size")
    sharding = row_sharding(mesh, 1, global_batch)
    blocks = {idx[0].indices(global_batch)[:2]
              for idx in sharding.addressable_devices_indices_map((global_batch,)).values()}
    start, stop = min(b[0] for b in blocks), max(b[1] for b in blocks)
    if sum(b - a for a, b in blocks) != stop - start:
        raise ValueError(f"this process's devices hold rows {sorted(blocks)} of the global batch, not one "
                         f"contiguous block; order the mesh's devices by process (sharding.make_mesh does)")
    rows = stop - start
    return HostSlot(rows=rows, index=start // rows, count=global_batch // rows)


def batch_shardings(batch: dict, mesh: Mesh, rows: int | None = None) -> dict:
    """Row shardings of a batch of `rows` global rows (see row_axes)."""
    return {k: row_sharding(mesh, np.ndim(v), rows) for k, v in batch.items()}


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's rows (numpy, its host_slot) -> global arrays with rows over row_axes."""
    local = len(next(iter(batch.values())))
    shardings = batch_shardings(batch, mesh, global_rows(local, mesh))
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()}


def gather_rows(rows: np.ndarray, mesh: Mesh) -> np.ndarray:
    """Every process's rows (each process passes its host_slot rows) -> the global rows, on every process."""
    return fetch(put_batch({"x": rows}, mesh)["x"])


def put_global(x, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full (each device takes its slice)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_global_batch(batch: dict, mesh: Mesh) -> dict:
    """put_global for every array of a batch every process holds in full, rows over the batch axes."""
    return {k: put_global(v, row_sharding(mesh, np.ndim(v), np.shape(v)[0])) for k, v in batch.items()}


def put_from_callback(shape, sharding: NamedSharding | None, read) -> jax.Array:
    """A global array whose device slices come from read(index) (streamed checkpoint loading).

    sharding None: the whole array on the default device.
    """
    if sharding is None:
        return jax.device_put(read(tuple(slice(None) for _ in shape)))
    return jax.make_array_from_callback(shape, sharding, read)


def put_replicated(x, mesh: Mesh) -> jax.Array:
    """A small host value (rng key, scalar, index vector) replicated on every device of the mesh."""
    return put_global(x, replicated(mesh))


def fetch(x) -> np.ndarray:
    """A (possibly multi-process) global array as a full numpy array on every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def from_primary(x: np.ndarray) -> np.ndarray:
    """Process 0's value of a host array on every process (host results that may differ across hosts,
    such as sandbox runs hitting a wall-clock timeout, must not make the processes' states diverge)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    if x.dtype == bool:  # broadcast sums over processes: send bools as integers
        return np.asarray(multihost_utils.broadcast_one_to_all(x.astype(np.int32))).astype(bool)
    return np.asarray(multihost_utils.broadcast_one_to_all(x))


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (the loop's stop consensus)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.process_allgather(np.array(flag)).any())


def process_max(x: int) -> int:
    """The largest of every process's `x` (e.g. the padded length a sharded batch needs), on every process."""
    if jax.process_count() == 1:
        return int(x)
    return int(multihost_utils.process_allgather(np.array(x, np.int64)).max())


def fetch_tree(tree) -> Any:
    """fetch() for every array leaf of a pytree (metrics dicts, SampleOutputs)."""
    return jax.tree.map(fetch, tree)


def reshard(tree, shardings):
    """Explicit reshard of a pytree of global arrays into `shardings` (e.g. training -> sampling layout)."""
    leaves, treedef = jax.tree.flatten(shardings)
    return _resharder(treedef, tuple(leaves))(tree)


def _identity(tree):
    return tree


@functools.lru_cache(maxsize=32)
def _resharder(treedef, leaves):
    """One jitted identity per target layout: a fresh jit per call (as every RL cycle reshards the actor
    for sampling) would trace, lower and compile it again each time."""
    return jax.jit(_identity, out_shardings=jax.tree.unflatten(treedef, list(leaves)))
