"""`attention`: one entry point, dispatched by backend and `impl`."""

import jax

from mm_rlhf_jax.kernels.attention import reference


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
        sequence-sharded query blocks).
      impl: "auto" | "pallas" | "xla" | "reference".
    Returns:
      [B, T, Hq, D] in q.dtype.
    """
    del impl  # Only the reference path exists so far.
    return reference.mha_reference(
        q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, branch_ids=branch_ids,
        kv_branch_ids=kv_branch_ids, causal=causal, q_offset=q_offset,
        sliding_window=sliding_window, logit_soft_cap=logit_soft_cap, scale=scale,
    )
