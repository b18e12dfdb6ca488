"""`attention`: one entry point, dispatched by backend and `impl`.

impl      | cpu                      | gpu                     | tpu
----------|--------------------------|-------------------------|-------------------
"auto"    | xla_dense if short, else | pallas_gpu (Triton)     | pallas_tpu (Mosaic)
          | xla (blocked)            |                         |
"pallas"  | pallas_tpu, interpreted  | pallas_gpu              | pallas_tpu
"xla"     | xla (blocked)            | xla (blocked)           | xla (blocked)
"reference" dense pure-jnp (tests, tiny shapes); "pallas_tpu" / "pallas_gpu" / "xla_dense"
name a variant directly (e.g. to lower for another platform from this host).

"Short" on CPU: the f32[B, Hq, T, S] score matrix fits in DENSE_SCORE_BYTES. There
the causal-chunked dense path (xla_dense.py) is ~2-3x faster than the blocked kernel
(one tile, no causal skipping); beyond it the blocked kernel keeps memory O(T).
"""

import jax

from mm_rlhf_jax.kernels import per_shard
from mm_rlhf_jax.kernels.attention import common, reference
from mm_rlhf_jax.kernels.attention.blocks import default_block_sizes
from mm_rlhf_jax.kernels.attention.pallas_gpu import attention_pallas_gpu
from mm_rlhf_jax.kernels.attention.pallas_tpu import attention_pallas_tpu
from mm_rlhf_jax.kernels.attention.xla_blocked import attention_xla
from mm_rlhf_jax.kernels.attention.xla_dense import attention_xla_dense
from mm_rlhf_jax.registry import Registry

IMPLS = Registry("attention impl")

# Backend (jax.default_backend()) -> impl; other backends fall back to "xla".
_AUTO = {"cpu": "xla", "gpu": "pallas_gpu", "tpu": "pallas_tpu"}
_PALLAS = {"cpu": "pallas_tpu", "gpu": "pallas_gpu", "tpu": "pallas_tpu"}
# Backends where "auto" takes the dense path for short sequences (see the module docstring).
_AUTO_SHORT = {"cpu": "xla_dense"}
# Score-matrix budget of the short path: f32[16, 4, 512, 512] (the DPO benchmark's
# shapes, bench/dpo_vs_trl.py) is 64 MiB; the causal chunks compute about half of it.
DENSE_SCORE_BYTES = 64 * 2**20

IMPLS.register("xla")(attention_xla)
IMPLS.register("xla_dense")(attention_xla_dense)
IMPLS.register("pallas_tpu")(attention_pallas_tpu)
IMPLS.register("pallas_gpu")(attention_pallas_gpu)


def resolve_impl(impl: str, backend: str | None = None, score_bytes: int | None = None) -> str:
    """Maps "auto" / "pallas" to a concrete registered impl for `backend`.

    score_bytes: size of the f32[B, Hq, T, S] score matrix of the call, if known;
    small ones take the backend's short-sequence path under "auto".
    """
    backend = backend or jax.default_backend()
    if impl == "auto":
        if backend in _AUTO_SHORT and score_bytes is not None and score_bytes <= DENSE_SCORE_BYTES:
            return _AUTO_SHORT[backend]
        return _AUTO.get(backend, "xla")
    if impl == "pallas":
        if backend not in _PALLAS:
            raise ValueError(f"no Pallas variant for backend {backend!r}; use impl='xla'")
        return _PALLAS[backend]
    if impl == "reference" or impl in IMPLS:
        return impl
    raise ValueError(
        f"attention: unknown impl {impl!r}; use auto, pallas, xla, reference or one of {IMPLS.names()}"
    )


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
      impl: "auto" | "pallas" | "xla" | "reference" | "pallas_tpu" | "pallas_gpu"
        (see the module table).
      block_sizes: overrides the per-backend table in `blocks.py`.
      interpret: run Pallas kernels in interpret mode (default: on CPU only); a
        `pltpu.InterpretParams` runs the TPU variant in TPU interpret mode.
    Returns:
      [B, T, Hq, D] in q.dtype. Query rows that see no key are zeros.
    """
    impl = resolve_impl(impl, score_bytes=4 * q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1])
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
    blocks = block_sizes or default_block_sizes(impl)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    if impl == "xla_dense":
        # A Python-int offset lets the dense path skip causally invisible keys statically.
        static = q_offset if isinstance(q_offset, int) and not isinstance(q_offset, bool) else None
        return attention_xla_dense(q, k, v, ids, spec, blocks, static_q_offset=static)
    if not impl.startswith("pallas"):  # plain XLA: the SPMD partitioner shards it by itself
        return IMPLS.get(impl)(q, k, v, ids, spec, blocks, interpret=interpret)

    def kernel(q, k, v, q_seg, kv_seg, q_br, kv_br, q_offset):
        ids = common.Ids(q_seg=q_seg, kv_seg=kv_seg, q_br=q_br, kv_br=kv_br, q_offset=q_offset)
        return IMPLS.get(impl)(q, k, v, ids, spec, blocks, interpret=interpret)

    # Pallas calls are opaque to the partitioner: run one per (batch, head) shard of the mesh.
    return per_shard.attention(kernel, q, k, v, ids.q_seg, ids.kv_seg, ids.q_br, ids.kv_br, ids.q_offset)
