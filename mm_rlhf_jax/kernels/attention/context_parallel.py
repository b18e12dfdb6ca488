"""Context-parallel attention: queries sharded over the `sequence` mesh axis, K/V all-gathered.

Each of the n devices on the `sequence` axis holds T/n consecutive tokens of q, k, v
(and their segment / branch ids). Inside `shard_map` every device all-gathers K, V
and the key-side ids along the sequence, then runs the single-device attention
kernel on its own queries with `q_offset = device index * T/n`; the kernel's causal
block skipping then visits only the KV blocks at or before its queries. The
backward of the all-gather is a reduce-scatter, so dK/dV come back sharded.

Why all-gather rather than a ring (research/kernels.md §3.2, §7): with GQA the
gathered K/V are small next to the queries' work. Per layer and device:

  gathered K+V      2 * B * T * Hkv * D * bytes     (Mistral-7B, T=128K, Hkv=8, D=128,
                                                     bf16: 537 MB, ~0.9 ms at 600 GB/s ICI)
  attention FLOPs   4 * B * (T/n) * T * Hq * D / 2  (causal; 16 v5p chips: ~38 ms at 50%)
  -> communication under 3% of the attention time, one collective instead of n-1 ring
     steps, and any kernel (XLA blocked, Pallas TPU / GPU) runs unchanged per shard.
  Memory per device: O(T) for the gathered K/V of one layer (remat frees it between
  layers) plus O(T/n) activations; never O(T^2).

Load balance: with contiguous shards and causal masking device i attends to
(i + 1/2) * T/n keys per query, so the last device does ~2n times the first's work.
The `zigzag` layout (Llama 3, kvax, MaxText `context_parallel_load_balance`) splits
the sequence into 2n chunks and gives device i chunks i and 2n-1-i, so every device
attends to (2n+1) * T/(2n) keys per query pair. The caller permutes its token-level
inputs (ids, positions, labels) with `zigzag_permutation` before the model; RoPE
uses explicit positions, so only attention needs to know the layout.

`api.py` registers it in `api.IMPLS` as (inner kernel per shard in parentheses):
  context_parallel          (auto)   context_parallel_zigzag          (auto)
  context_parallel_xla      (xla)    context_parallel_zigzag_xla      (xla)
  context_parallel_pallas   (pallas) context_parallel_zigzag_pallas   (pallas)
so a model selects it with `DecoderConfig.attention_impl`; the mesh is the one the
caller set with `jax.set_mesh(mesh)` (it must have a `sequence` axis). Batch dims
are sharded over ("data", "fsdp") and heads over "tensor" inside the shard_map,
matching the TRAIN_RULES activation layout; every sharded size must divide.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mm_rlhf_jax.kernels.attention import common

SEQUENCE_AXIS = "sequence"
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"


def zigzag_permutation(t: int, n: int) -> np.ndarray:
    """perm int[T]: position j of the zigzag layout holds natural token perm[j].

    Device i (of n) holds chunks i and 2n-1-i (chunk = T / 2n tokens). Apply as
    `x_zigzag = x[:, perm]`; undo with `np.argsort(perm)`.
    """
    if t % (2 * n):
        raise ValueError(f"zigzag layout: sequence length {t} must be a multiple of 2 * {n} devices")
    c = t // (2 * n)
    chunks = [np.concatenate([np.arange(i * c, (i + 1) * c), np.arange((2 * n - 1 - i) * c, (2 * n - i) * c)])
              for i in range(n)]
    return np.concatenate(chunks)


def _mesh_or_error():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or SEQUENCE_AXIS not in mesh.axis_names:
        raise ValueError(
            "context-parallel attention needs a mesh with a 'sequence' axis set by the caller "
            f"(jax.set_mesh(mesh)); the current mesh is {None if mesh.empty else dict(mesh.shape)}")
    return mesh


def _axes_that_divide(mesh, axes, size: int, what: str):
    """The mesh axes (of `axes`) to shard a dim of `size` over; raises if they do not divide it."""
    axes = tuple(a for a in axes if a in mesh.axis_names)
    total = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if size % total:
        raise ValueError(f"context-parallel attention: {what} = {size} is not divisible by mesh axes "
                         f"{dict((a, mesh.shape[a]) for a in axes)} (total {total})")
    return axes or None


def _unzigzag(x, n: int):
    """[B, S, ...] gathered in device order of zigzag shards -> natural token order."""
    b, s = x.shape[:2]
    c = s // (2 * n)
    x = x.reshape(b, n, 2, c, *x.shape[2:])
    first = x[:, :, 0].reshape(b, n * c, *x.shape[4:])  # chunks 0 .. n-1
    second = x[:, ::-1, 1].reshape(b, n * c, *x.shape[4:])  # chunks n .. 2n-1
    return jnp.concatenate([first, second], axis=1)


def _shard_attention(q, k, v, q_seg, kv_seg, q_br, kv_br, q_offset, *, inner, spec, blocks, interpret, n,
                     zigzag):
    """Per-device body: all-gather K/V (+ key ids) along the sequence, attend with the shard's offset."""
    gather = functools.partial(jax.lax.all_gather, axis_name=SEQUENCE_AXIS, axis=1, tiled=True)
    k, v, kv_seg = gather(k), gather(v), gather(kv_seg)
    kv_br = None if kv_br is None else gather(kv_br)
    idx = jax.lax.axis_index(SEQUENCE_AXIS).astype(jnp.int32)
    t = q.shape[1]
    run = lambda qq, seg, br, off: inner(qq, k, v, common.Ids(seg, kv_seg, br, kv_br, off), spec, blocks,
                                         interpret=interpret)
    if not zigzag:
        return run(q, q_seg, q_br, q_offset + idx * t)
    k, v, kv_seg = _unzigzag(k, n), _unzigzag(v, n), _unzigzag(kv_seg, n)
    kv_br = None if kv_br is None else _unzigzag(kv_br, n)
    c = t // 2
    half = lambda x, h: None if x is None else x[:, h * c:(h + 1) * c]
    lo = run(half(q, 0), half(q_seg, 0), half(q_br, 0), q_offset + idx * c)
    hi = run(half(q, 1), half(q_seg, 1), half(q_br, 1), q_offset + (2 * n - 1 - idx) * c)
    return jnp.concatenate([lo, hi], axis=1)


def attention_context_parallel(q, k, v, ids: common.Ids, spec: common.MaskSpec, blocks: common.BlockSizes | None,
                               interpret=None, *, inner, zigzag: bool = False):
    """The `api.IMPLS` entry: q[B, T, Hq, D], k/v[B, S, Hkv, D] sharded on T / S -> [B, T, Hq, D].

    inner(blocks) -> (kernel fn, its tiles, its interpret default): the per-shard
    kernel chosen for the target platform (api.py binds "auto" / "xla" / "pallas");
    `blocks` None means that kernel's default table.
    """
    mesh = _mesh_or_error()
    n = mesh.shape[SEQUENCE_AXIS]
    b, t, hq, _ = q.shape
    s, hkv = k.shape[1], k.shape[2]
    parts = 2 * n if zigzag else n
    if t % parts or s % parts:
        raise ValueError(f"context-parallel attention: query length {t} and key length {s} must be multiples "
                         f"of {parts} ({'2 x ' if zigzag else ''}sequence axis size {n})")
    if zigzag and s != t:
        raise ValueError(f"zigzag context parallelism is for self-attention (S == T), got T={t}, S={s}")
    batch = _axes_that_divide(mesh, BATCH_AXES, b, "batch size")
    heads = _axes_that_divide(mesh, (HEAD_AXIS,), hkv, "kv heads")
    _axes_that_divide(mesh, (HEAD_AXIS,), hq, "query heads")
    inner_fn, inner_blocks, inner_interpret = inner(blocks)
    interpret = inner_interpret if interpret is None else interpret
    x_spec, id_spec = P(batch, SEQUENCE_AXIS, heads, None), P(batch, SEQUENCE_AXIS)
    has_br = ids.q_br is not None
    body = functools.partial(_shard_attention, inner=inner_fn, spec=spec, blocks=inner_blocks,
                             interpret=interpret, n=n, zigzag=zigzag)
    if not has_br:
        body_fn = lambda q, k, v, qs, ks, off: body(q, k, v, qs, ks, None, None, off)
        args = (q, k, v, ids.q_seg, ids.kv_seg, ids.q_offset)
        in_specs = (x_spec, x_spec, x_spec, id_spec, id_spec, P())
    else:
        body_fn = body
        args = (q, k, v, ids.q_seg, ids.kv_seg, ids.q_br, ids.kv_br, ids.q_offset)
        in_specs = (x_spec, x_spec, x_spec, id_spec, id_spec, id_spec, id_spec, P())
    # check_vma=False: the inner kernels (custom_vjp loops, pallas_call) are written
    # for single-device values; the all-gather's transpose (a reduce-scatter) is exact.
    fn = jax.shard_map(body_fn, mesh=mesh, in_specs=in_specs, out_specs=x_spec, check_vma=False)
    return fn(*args)


def context_parallel_attention(q, k, v, *, segment_ids=None, branch_ids=None, causal: bool = True,
                               sliding_window: int | None = None, logit_soft_cap: float | None = None,
                               scale: float | None = None, impl: str = "auto", zigzag: bool = False):
    """Self-attention with q/k/v sequence-sharded over the current mesh's `sequence` axis.

    Same arguments and result as `kernels.attention` (S == T); `impl` is the per-shard
    kernel. With zigzag=True the inputs must already be in `zigzag_permutation` order.
    """
    from mm_rlhf_jax.kernels.attention import api  # api imports this module (it registers the impls)

    name = "context_parallel" + ("_zigzag" if zigzag else "") + ("" if impl == "auto" else f"_{impl}")
    return api.attention(q, k, v, segment_ids=segment_ids, branch_ids=branch_ids, causal=causal,
                         sliding_window=sliding_window, logit_soft_cap=logit_soft_cap, scale=scale, impl=name)
