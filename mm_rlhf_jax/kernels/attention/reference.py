"""Dense pure-jnp attention: the numerical reference for every attention path.

Holds the full [B, H, T, S] score matrix, so it is for tests and tiny shapes only.
"""

import jax
import jax.numpy as jnp

# Finite "minus infinity": fully-masked rows (padding queries) stay NaN-free.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(
    t: int,
    s: int,
    *,
    segment_ids=None,
    kv_segment_ids=None,
    branch_ids=None,
    kv_branch_ids=None,
    causal: bool = True,
    q_offset=0,
    sliding_window: int | None = None,
):
    """Boolean visibility mask [B or 1, T, S].

    Query i (absolute index q_offset + i) sees key j iff
      causal:          j <= q_offset + i
      sliding window:  q_offset + i - j < sliding_window
      segments:        seg_q[i] == seg_k[j] and seg_k[j] != 0   (0 = padding)
      branches:        br_k[j] == 0 (shared prompt) or br_k[j] == br_q[i]
    """
    q_idx = jnp.arange(t)[:, None] + q_offset
    k_idx = jnp.arange(s)[None, :]
    mask = jnp.ones((1, t, s), bool)
    if causal:
        mask = mask & (k_idx <= q_idx)[None]
    if sliding_window is not None:
        mask = mask & (q_idx - k_idx < sliding_window)[None]
    if segment_ids is not None:
        kv_seg = segment_ids if kv_segment_ids is None else kv_segment_ids
        mask = mask & (segment_ids[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)
    if branch_ids is not None:
        kv_br = branch_ids if kv_branch_ids is None else kv_branch_ids
        mask = mask & ((kv_br[:, None, :] == 0) | (kv_br[:, None, :] == branch_ids[:, :, None]))
    return mask


def mha_reference(
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
):
    """q[B, T, Hq, D], k/v[B, S, Hkv, D] -> out[B, T, Hq, D] (q.dtype).

    GQA: query head h uses kv head h // (Hq // Hkv). Scores, softmax and the
    weighted sum accumulate in f32. Rows with no visible key return zeros.
    """
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads {hq} not a multiple of kv heads {hkv}")
    scale = d**-0.5 if scale is None else scale
    group = hq // hkv
    qg = q.reshape(b, t, hkv, group, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if logit_soft_cap is not None:
        scores = logit_soft_cap * jnp.tanh(scores / logit_soft_cap)
    mask = attention_mask(
        t, s, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, branch_ids=branch_ids,
        kv_branch_ids=kv_branch_ids, causal=causal, q_offset=q_offset, sliding_window=sliding_window,
    )[:, None, None]  # [B, 1, 1, T, S]
    scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask.any(-1, keepdims=True), probs, 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))
    return out.reshape(b, t, hq, d).astype(q.dtype)
