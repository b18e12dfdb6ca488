"""Attention of a few new queries over a head-major KV cache: the decode step of the sampler.

The cache is kept head-major, k/v [B, Hkv, S, D], because that is the layout both
decode matmuls want: `bkgd,bksd->bkgs` and `bkgs,bksd->bkgd` are plain batched
matmuls over (B, Hkv) with the G query heads sharing a KV head as rows, so XLA
reads the cache once and never transposes or repeats it (a [B, S, Hkv, D] cache
costs a full transpose copy of K and V per layer per token: ~2x slower on CPU at
the sampler's shapes, bench/rollout.py). Scores, softmax and the weighted
sum are f32 whatever the cache dtype.

Only for short query blocks (T = 1 per decode step): the score tensor is
[B, Hq, T, S], so a long prefill goes through `kernels.attention` instead.
"""

import jax
import jax.numpy as jnp

from mm_rlhf_jax.kernels.attention.common import MASK_VALUE

_F32 = jnp.float32


def decode_attention(q, k_cache, v_cache, *, segment_ids, kv_segment_ids, q_offset, sliding_window=None,
                     scale=None):
    """q[B, T, Hq, D] over k_cache / v_cache [B, Hkv, S, D] -> [B, T, Hq, D] in q.dtype.

    segment_ids int[B, T] and kv_segment_ids int[B, S]: a key is visible to a query
    of the same nonzero segment; causal in slot order (key slot j <= q_offset + i,
    q_offset an int32 scalar: the slot of q[:, 0]); sliding_window W hides keys
    with q_offset + i - j >= W. Query rows that see no key give zeros.
    """
    b, t, hq, d = q.shape
    hkv, s = k_cache.shape[1], k_cache.shape[2]
    g = hq // hkv
    scale = d ** -0.5 if scale is None else scale
    # [B, T, Hkv, G, D] -> [B, Hkv, G*T, D]: rows of one KV head's batched matmul.
    qh = q.reshape(b, t, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * t, d)
    scores = jnp.einsum("bkqd,bksd->bkqs", qh.astype(k_cache.dtype), k_cache, preferred_element_type=_F32)
    scores = scores.reshape(b, hkv, g, t, s) * scale
    q_pos = q_offset + jnp.arange(t)[:, None]  # [T, 1]
    k_pos = jnp.arange(s)[None, :]  # [1, S]
    mask = (segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (kv_segment_ids[:, None, :] != 0)
    mask = mask & (k_pos <= q_pos)[None]
    if sliding_window is not None:
        mask = mask & (q_pos - k_pos < sliding_window)[None]
    mask = mask[:, None, None]  # [B, 1, 1, T, S]
    p = jax.nn.softmax(jnp.where(mask, scores, MASK_VALUE), axis=-1)
    p = jnp.where(mask.any(-1, keepdims=True), p, 0.0)
    out = jnp.einsum("bkqs,bksd->bkqd", p.reshape(b, hkv, g * t, s).astype(v_cache.dtype), v_cache,
                     preferred_element_type=_F32)
    return out.reshape(b, hkv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, hq, d).astype(q.dtype)
