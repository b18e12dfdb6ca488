"""`attention`: one entry point, dispatched by the TARGET platform and `impl`.

impl      | cpu                      | gpu                        | tpu
----------|--------------------------|----------------------------|-------------------
"auto"    | xla_dense if short, else | cudnn where it expresses   | pallas_tpu (Mosaic)
          | xla (blocked)            | the mask, else pallas_gpu  |
"pallas"  | pallas_tpu, interpreted  | pallas_gpu                 | pallas_tpu
"xla"     | xla (blocked)            | xla (blocked)              | xla (blocked)
"reference" dense pure-jnp (tests, tiny shapes); "pallas_tpu" / "pallas_gpu" / "xla_dense" /
"cudnn" name a variant directly; "context_parallel[_zigzag][_xla|_pallas]" shard the
sequence over the mesh's `sequence` axis (context_parallel.py).

The target platform is `kernels.dispatch.current_target()`: a `target_platform(...)`
context, else the mesh set with `jax.set_mesh`, else the default backend.

"Short" on CPU: the f32[B, Hq, T, S] score matrix fits in DENSE_SCORE_BYTES. There
the causal-chunked dense path (xla_dense.py) is ~2-3x faster than the blocked kernel
(one tile, no causal skipping); beyond it the blocked kernel keeps memory O(T).
GPU: cuDNN (`jax.nn.dot_product_attention`) covers causal / window attention without
segments, branches, soft-cap or offset in bf16 / f16 (cudnn.supports); the Triton
kernel is the only option for the rest. Neither has been timed here (no GPU):
bench/kernels_gpu.py is the harness.
"""

import functools

from mm_rlhf_jax.kernels import dispatch, per_shard
from mm_rlhf_jax.kernels.attention import blocks as tables
from mm_rlhf_jax.kernels.attention import common, cudnn, reference
from mm_rlhf_jax.kernels.attention.context_parallel import attention_context_parallel
from mm_rlhf_jax.kernels.attention.pallas_gpu import attention_pallas_gpu
from mm_rlhf_jax.kernels.attention.pallas_tpu import attention_pallas_tpu
from mm_rlhf_jax.kernels.attention.xla_blocked import attention_xla
from mm_rlhf_jax.kernels.attention.xla_dense import attention_xla_dense
from mm_rlhf_jax.registry import Registry

IMPLS = Registry("attention impl")
IMPLS.register("xla")(attention_xla)
IMPLS.register("xla_dense")(attention_xla_dense)
IMPLS.register("pallas_tpu")(attention_pallas_tpu)
IMPLS.register("pallas_gpu")(attention_pallas_gpu)
IMPLS.register("cudnn")(cudnn.attention_cudnn)

# Target platform -> impl; other platforms get "xla". GPU "auto" is refined per call.
AUTO = {"cpu": "xla", "gpu": "cudnn", "tpu": "pallas_tpu"}
PALLAS = {"cpu": "pallas_tpu", "gpu": "pallas_gpu", "tpu": "pallas_tpu"}
# Score-matrix budget of the CPU short path: f32[16, 4, 512, 512] (the DPO benchmark's
# shapes, bench/dpo_vs_trl.py) is 64 MiB; the causal chunks compute about half of it.
DENSE_SCORE_BYTES = 64 * 2**20


def kernel_for(impl: str, target: dispatch.Target):
    """IMPLS entry with its target-dependent options bound: fn(q, k, v, ids, spec, blocks, interpret)."""
    fn = IMPLS.get(impl)
    if impl == "pallas_tpu":
        fn = functools.partial(fn, vmem_limit=tables.tpu_table(target.generation).vmem_limit_bytes)
    return fn


def resolve_impl(impl: str, backend: str | None = None, score_bytes: int | None = None) -> str:
    """Maps "auto" / "pallas" to a registered impl for `backend` (default: the target platform).

    score_bytes: size of the f32[B, Hq, T, S] score matrix of the call, if known;
    small ones take the CPU's short-sequence path under "auto".
    """
    target = dispatch.Target(backend) if backend else dispatch.current_target()
    if impl == "auto" and target.platform == "cpu" and score_bytes is not None and score_bytes <= DENSE_SCORE_BYTES:
        return "xla_dense"
    return dispatch.resolve_impl("attention", impl, IMPLS, auto=AUTO, pallas=PALLAS, target=target)


def select_impl(impl: str, q, k, *, target: dispatch.Target, segment_ids=None, branch_ids=None, q_offset=0,
                logit_soft_cap=None) -> str:
    """The impl one `attention` call runs: `resolve_impl`, refined by the call's shapes
    (CPU short path) and mask (GPU: cuDNN only where it expresses the mask)."""
    score_bytes = 4 * q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1]
    name = resolve_impl(impl, target.platform, score_bytes=score_bytes)
    if impl == "auto" and name == "cudnn" and not cudnn.supports(
            q, k, segment_ids=segment_ids, branch_ids=branch_ids, q_offset=q_offset, logit_soft_cap=logit_soft_cap):
        return "pallas_gpu"  # the mask needs what only the Triton kernel expresses
    return name


def _inner_kernel(inner: str, blocks):
    """Per-shard kernel of the context-parallel impls: (fn, tiles, interpret)."""
    target = dispatch.current_target()
    name = resolve_impl(inner)
    if name == "cudnn":  # a shard's query offset is traced: cuDNN cannot express it
        name = "pallas_gpu"
    return (kernel_for(name, target), blocks or tables.default_block_sizes(name, target.generation),
            dispatch.resolve_interpret(name, None, target))


# Context parallelism, with the per-shard kernel in parentheses: context_parallel (auto),
# _xla (xla), _pallas (pallas); each also in the load-balanced zigzag layout.
for _inner, _suffix in (("auto", ""), ("xla", "_xla"), ("pallas", "_pallas")):
    for _zigzag in (False, True):
        IMPLS.register("context_parallel" + ("_zigzag" if _zigzag else "") + _suffix)(functools.partial(
            attention_context_parallel, inner=functools.partial(_inner_kernel, _inner), zigzag=_zigzag))


def attention(
    q,
    k,
    v,
    *,
    segment_ids=None,
    kv_segment_ids=None,
    branch_ids=None,
    kv_branch_ids=None,
    causal: bool = True,
    q_offset=0,
    sliding_window: int | None = None,
    logit_soft_cap: float | None = None,
    scale: float | None = None,
    impl: str = "auto",
    block_sizes: common.BlockSizes | None = None,
    interpret=None,
):
    """Multi-head attention with GQA, causal/segment/shared-prompt masking.

    Args:
      q: [B, T, Hq, D]; k, v: [B, S, Hkv, D] with Hq % Hkv == 0.
      segment_ids: int[B, T]; tokens attend only within their segment; 0 marks
        padding (sees nothing, is seen by nothing). kv_segment_ids: int[B, S],
        defaults to segment_ids (needed when S != T, e.g. a KV cache).
      branch_ids: int[B, T] for shared-prompt packing: 0 = prompt (visible to
        every later token of its segment), b > 0 = response branch b (visible
        only to branch b). Chosen and rejected share one prompt pass this way.
      causal: key index <= q_offset + query index.
      q_offset: absolute index of q[:, 0] among the keys (KV-cache decode,
        sequence-sharded query blocks); may be a traced int32 scalar.
      sliding_window: keys with q_offset + i - j >= window are hidden.
      logit_soft_cap: scores become cap * tanh(scores / cap) before masking.
      scale: score scale, default D ** -0.5.
      impl: "auto" | "pallas" | "xla" | "reference" | "pallas_tpu" | "pallas_gpu" |
        "cudnn" | "xla_dense" | "context_parallel..." (see the module table).
      block_sizes: overrides the tables in `blocks.py` (pallas_tpu: per TPU
        generation). pallas_tpu tiles longer than 128 tokens must be multiples of
        128 (else ValueError); any such sizes work, also mixed forward / backward.
      interpret: run Pallas kernels in interpret mode (default: unless the target
        platform is the kernel's own); a `pltpu.InterpretParams` runs the TPU
        variant in TPU interpret mode.
    Returns:
      [B, T, Hq, D] in q.dtype. Query rows that see no key are zeros.
    """
    target = dispatch.current_target()
    impl = select_impl(impl, q, k, target=target, segment_ids=segment_ids, branch_ids=branch_ids,
                       q_offset=q_offset, logit_soft_cap=logit_soft_cap)
    if impl == "reference":
        return reference.mha_reference(
            q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, branch_ids=branch_ids,
            kv_branch_ids=kv_branch_ids, causal=causal, q_offset=q_offset,
            sliding_window=sliding_window, logit_soft_cap=logit_soft_cap, scale=scale,
        )
    ids = common.normalize(
        q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, branch_ids=branch_ids,
        kv_branch_ids=kv_branch_ids, q_offset=q_offset,
    )
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"attention: sliding_window must be >= 1, got {sliding_window}")
    if logit_soft_cap is not None and logit_soft_cap <= 0:
        raise ValueError(f"attention: logit_soft_cap must be > 0, got {logit_soft_cap}")
    spec = common.MaskSpec(
        causal=bool(causal), window=sliding_window,
        soft_cap=None if logit_soft_cap is None else float(logit_soft_cap),
        scale=float(q.shape[-1] ** -0.5 if scale is None else scale),
        has_branches=ids.q_br is not None,
    )
    if impl.startswith("context_parallel"):  # picks (and tiles) its per-shard kernel itself
        return IMPLS.get(impl)(q, k, v, ids, spec, block_sizes, interpret=interpret)
    blocks = block_sizes or tables.default_block_sizes(impl, target.generation)
    interpret = dispatch.resolve_interpret(impl, interpret, target)
    fn = kernel_for(impl, target)
    if impl == "xla_dense":
        # A Python-int offset lets the dense path skip causally invisible keys statically.
        static = q_offset if isinstance(q_offset, int) and not isinstance(q_offset, bool) else None
        return attention_xla_dense(q, k, v, ids, spec, blocks, static_q_offset=static)
    if not impl.startswith("pallas"):  # XLA / cuDNN: the SPMD partitioner shards them by itself
        return fn(q, k, v, ids, spec, blocks, interpret=interpret)

    def kernel(q, k, v, q_seg, kv_seg, q_br, kv_br, q_offset):
        ids = common.Ids(q_seg=q_seg, kv_seg=kv_seg, q_br=q_br, kv_br=kv_br, q_offset=q_offset)
        return fn(q, k, v, ids, spec, blocks, interpret=interpret)

    # Pallas calls are opaque to the partitioner: run one per (batch, head) shard of the mesh.
    return per_shard.attention(kernel, q, k, v, ids.q_seg, ids.kv_seg, ids.q_br, ids.kv_br, ids.q_offset)
