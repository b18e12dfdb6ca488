"""Causal-chunked dense attention in plain XLA: the CPU path for short sequences.

At T, S <= ~1k the blocked kernel (xla_blocked.py) is a single tile: it skips no
causal work and pays online-softmax bookkeeping and a 5-D GQA contraction that
XLA:CPU runs ~3x slower than a 4-D one. Here, instead:

- one head-major transpose up front: q -> [B, Hkv, G, T, D], k/v -> [B, Hkv, S, D];
  per chunk the G query heads sharing a KV head are folded into the rows of one
  4-D batched matmul `bkqd,bksd->bkqs` (no K/V repeat, no 5-D einsum);
- queries go in static chunks of `block_q` rows; a chunk only reads the keys its
  causal / window rule can reach (static slices), so at T = S about half of the
  score matrix is never computed;
- scores, softmax and the weighted sum are f32; autodiff gives the backward.

Memory is O(T * S) (each chunk's probabilities are kept for the backward), so the
dispatcher in api.py only picks this path for short sequences.
"""

import jax
import jax.numpy as jnp

from mm_rlhf_jax.kernels.attention import common
from mm_rlhf_jax.kernels.attention.common import MASK_VALUE, MaskSpec

_F32 = jnp.float32


def _key_range(q_first: int, bq: int, s: int, spec: MaskSpec) -> tuple[int, int]:
    """Static [lo, hi) of keys visible to queries q_first .. q_first + bq - 1."""
    hi = min(s, q_first + bq) if spec.causal else s
    lo = max(0, q_first - spec.window + 1) if spec.window is not None else 0
    return min(lo, hi), hi


def _chunk(spec, qc, kc, vc, q_first, k_first, qs, ks, qr, kr, q_offset):
    """qc[B, Hkv, G, bq, D], kc/vc[B, Hkv, bk, D] -> f32[B, Hkv, G, bq, D]."""
    b, hkv, g, bq, d = qc.shape
    bk = kc.shape[2]
    s = jnp.einsum("bkqd,bksd->bkqs", qc.reshape(b, hkv, g * bq, d), kc, preferred_element_type=_F32)
    s = common.soft_cap(s.reshape(b, hkv, g, bq, bk) * spec.scale, spec)
    q_pos = (q_offset + q_first + jnp.arange(bq))[:, None]
    k_pos = (k_first + jnp.arange(bk))[None, :]
    mask = common.tile_mask(
        q_pos, k_pos, qs[:, :, None], ks[:, None, :],
        None if qr is None else qr[:, :, None], None if kr is None else kr[:, None, :], spec,
    )[:, None, None]  # [B, 1, 1, bq, bk]
    p = jax.nn.softmax(jnp.where(mask, s, MASK_VALUE), axis=-1)
    p = jnp.where(mask.any(-1, keepdims=True), p, 0.0)  # rows that see no key give zeros
    o = jnp.einsum("bkqs,bksd->bkqd", p.reshape(b, hkv, g * bq, bk).astype(vc.dtype), vc,
                   preferred_element_type=_F32)
    return o.reshape(b, hkv, g, bq, d)


def attention_xla_dense(q, k, v, ids: common.Ids, spec: MaskSpec, blocks: common.BlockSizes, interpret=None,
                        static_q_offset: int | None = None):
    """q[B, T, Hq, D], k/v[B, S, Hkv, D] -> [B, T, Hq, D].

    Causal / window key skipping needs the query offset at trace time:
    `static_q_offset` (a Python int) enables it; otherwise every chunk reads all
    keys and the mask alone applies the rule. `interpret` is unused here.
    """
    del interpret
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    bq = max(1, min(t, blocks.block_q))
    qh = q.reshape(b, t, hkv, g, d).transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, T, D]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Hkv, S, D]
    outs = []
    for q_first in range(0, t, bq):
        q_last = min(t, q_first + bq)
        lo, hi = 0, s
        if static_q_offset is not None:
            lo, hi = _key_range(static_q_offset + q_first, q_last - q_first, s, spec)
        qc = qh[:, :, :, q_first:q_last]
        if hi <= lo:  # no key can be visible: the reference gives zeros
            outs.append(jnp.zeros(qc.shape, _F32))
            continue
        outs.append(_chunk(
            spec, qc, kh[:, :, lo:hi], vh[:, :, lo:hi], q_first, lo,
            ids.q_seg[:, q_first:q_last], ids.kv_seg[:, lo:hi],
            None if ids.q_br is None else ids.q_br[:, q_first:q_last],
            None if ids.kv_br is None else ids.kv_br[:, lo:hi], ids.q_offset,
        ))
    o = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]  # [B, Hkv, G, T, D]
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, hq, d).astype(q.dtype)
