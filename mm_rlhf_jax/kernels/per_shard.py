"""Runs the single-device Pallas kernels once per shard of the ambient mesh.

To XLA's SPMD partitioner a `pallas_call` is an opaque custom call: given
sharded operands it would gather them and run the whole problem on every
device (correct, but each device then does the work of all of them). Under a
multi-device mesh (`jax.set_mesh`) the kernel entry points therefore wrap the
Pallas variants in `shard_map`:

  attention       batch over the batch axes (and `sequence`), heads over `tensor`
  token_logprobs  (pallas_gpu) tokens over every axis; the LM head is gathered
                  (pallas_tpu shards itself, vocab-parallel: token_logprobs/sharded.py)

Both ops are independent across those dimensions (attention per batch row and
head, token log-probs per token), so the per-shard results are exact. A
dimension that an axis does not divide is simply not split over that axis.
Sequence-sharded attention is `context_parallel.py`'s job, not this wrapper's.
"""

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")  # mesh axes that split examples (sharding.mesh)
# Flattened [B*T] tokens split over every axis: with a gathered head, tensor ranks
# would otherwise redo the same tokens.
TOKEN_AXES = ("data", "fsdp", "sequence", "tensor")
HEAD_AXIS = "tensor"


def ambient_mesh():
    """The mesh set by `jax.set_mesh` if it has more than one device, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size <= 1:
        return None
    return mesh


def split_axes(mesh, candidates, dim: int):
    """The candidate axes (in order) whose running product divides dim, as one spec entry (or None)."""
    axes, prod = [], 1
    for name in candidates:
        size = dict(mesh.shape).get(name, 1)
        if size > 1 and dim % (prod * size) == 0:
            axes.append(name)
            prod *= size
    return tuple(axes) if axes else None


def attention(kernel, q, k, v, q_seg, kv_seg, q_br, kv_br, q_offset):
    """kernel(q, k, v, q_seg, kv_seg, q_br, kv_br, q_offset) -> out, per (batch, head) shard.

    q [B, T, Hq, D], k/v [B, S, Hkv, D], ids int32[B, T|S] (branches may be None), q_offset int32[].
    """
    mesh = ambient_mesh()
    if mesh is None:
        return kernel(q, k, v, q_seg, kv_seg, q_br, kv_br, q_offset)
    # Rows are independent here (sequence-sharded attention is context_parallel.py's), so a `sequence`
    # axis may split rows too: the vision tower's tiles under LongPO's or MM-DPO's sequence mesh.
    b = split_axes(mesh, BATCH_AXES + ("sequence",), q.shape[0])
    h = split_axes(mesh, (HEAD_AXIS,), k.shape[2])
    # Even when nothing divides, the call stays inside shard_map (replicated): Mosaic kernels cannot be
    # partitioned automatically, so an unwrapped call fails to compile under a multi-device mesh.
    heads, ids = P(b, None, h, None), P(b, None)
    br = None if q_br is None else ids
    fn = jax.shard_map(kernel, mesh=mesh, in_specs=(heads, heads, heads, ids, ids, br, br, P()),
                       out_specs=heads, check_vma=False)
    return fn(q, k, v, q_seg, kv_seg, q_br, kv_br, q_offset)


def token_logprobs(kernel, hidden, w, labels):
    """kernel(hidden [N, H], w [H, V], labels [N]) -> (logp [N], ent [N]), per token shard."""
    mesh = ambient_mesh()
    if mesh is None:
        return kernel(hidden, w, labels)
    n = split_axes(mesh, TOKEN_AXES, hidden.shape[0])  # None: replicated, but still inside shard_map
    fn = jax.shard_map(kernel, mesh=mesh, in_specs=(P(n, None), P(None, None), P(n)), out_specs=(P(n), P(n)),
                       check_vma=False)
    return fn(hidden, w, labels)
