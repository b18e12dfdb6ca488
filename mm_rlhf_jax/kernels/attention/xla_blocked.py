"""Blocked flash attention in plain XLA: the CPU default and portable fallback.

Queries are processed in blocks of `block_q` (lax.map) and, per query block, KV in
blocks of `block_kv` with an online softmax (fori_loop over only the KV blocks that
the causal / window rule can reach). The largest temporary is one
f32[B, Hkv, G, block_q, block_kv] score tile, so memory is O(T * D) for the
activations plus O(block_q * block_kv) for the tiles. The backward (custom_vjp)
recomputes each tile from (q, k, v, lse) and accumulates dk/dv in place, so it is
O(T) memory too.
"""

import functools

import jax
import jax.numpy as jnp

from mm_rlhf_jax.kernels.attention import common
from mm_rlhf_jax.kernels.attention.common import MASK_VALUE, MaskSpec

_F32 = jnp.float32


def _tile(spec, qb, kb, q_first, k_first, qs, ks, qr, kr):
    """Scores of one tile: (masked capped scores, capped scores, mask), each [B, Hkv, G, bq, bk]."""
    s = jnp.einsum("bqkgd,bskd->bkgqs", qb, kb, preferred_element_type=_F32) * spec.scale
    s = common.soft_cap(s, spec)
    bq, bk = qb.shape[1], kb.shape[1]
    q_pos = (q_first + jnp.arange(bq))[:, None]
    k_pos = (k_first + jnp.arange(bk))[None, :]
    mask = common.tile_mask(
        q_pos, k_pos, qs[:, :, None], ks[:, None, :],
        None if qr is None else qr[:, :, None], None if kr is None else kr[:, None, :], spec,
    )[:, None, None]  # [B, 1, 1, bq, bk]
    return jnp.where(mask, s, MASK_VALUE), s, mask


def _first(xs):
    return jax.tree.map(lambda x: x[0], xs)


def _map(f, xs, n):
    """lax.map, without the loop when there is a single block (short sequences)."""
    if n == 1:
        return jax.tree.map(lambda x: x[None], f(_first(xs)))
    return jax.lax.map(f, xs)


def _loop(lo, hi, n, body, init):
    """fori_loop over KV blocks [lo, hi); a single block is computed directly (its
    mask already hides whatever the range test would skip)."""
    if n == 1:
        return body(0, init)
    return jax.lax.fori_loop(lo, hi, body, init)


def _split_q(x, nq, bq):
    """[B, nq*bq, ...] -> [nq, B, bq, ...] (leading axis mapped over)."""
    b = x.shape[0]
    x = x.reshape(b, nq, bq, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _merge_q(x):
    """[nq, B, bq, ...] -> [B, nq*bq, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _forward(q, k, v, ids, spec, bq, bk):
    """Padded q[B, T, Hkv, G, D], k/v[B, S, Hkv, D] -> (o like q, lse f32[B, T, Hkv, G])."""
    q_seg, kv_seg, q_br, kv_br, q_offset = ids
    b, t, hkv, g, d = q.shape
    nq, nk = t // bq, k.shape[1] // bk

    def q_block(args):
        i, qb, qs, qr = args
        q_first = q_offset + i * bq
        lo, hi = common.kv_block_range(q_first, bq, bk, nk, spec)

        def body(j, carry):
            m, l, acc = carry
            kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, 1)
            vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, 1)
            ks = jax.lax.dynamic_slice_in_dim(kv_seg, j * bk, bk, 1)
            kr = None if kv_br is None else jax.lax.dynamic_slice_in_dim(kv_br, j * bk, bk, 1)
            s, _, mask = _tile(spec, qb, kb, q_first, j * bk, qs, ks, qr, kr)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            alpha = jnp.exp(m - m_new)
            l = alpha * l + p.sum(-1)
            pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(vb.dtype), vb, preferred_element_type=_F32)
            return m_new, l, alpha[..., None] * acc + pv

        init = (
            jnp.full((b, hkv, g, bq), MASK_VALUE, _F32),
            jnp.zeros((b, hkv, g, bq), _F32),
            jnp.zeros((b, hkv, g, bq, d), _F32),
        )
        m, l, acc = _loop(lo, hi, nk, body, init)
        seen = l > 0
        o = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
        # [B, Hkv, G, bq, D] -> [B, bq, Hkv, G, D]
        return jnp.moveaxis(o, 3, 1).astype(q.dtype), jnp.moveaxis(lse, 3, 1)

    xs = (jnp.arange(nq), _split_q(q, nq, bq), _split_q(q_seg, nq, bq),
          None if q_br is None else _split_q(q_br, nq, bq))
    o, lse = _map(q_block, xs, nq)
    return _merge_q(o), _merge_q(lse)


def _backward(q, k, v, ids, o, lse, do, spec, bq, bk):
    """Gradients (dq, dk, dv) of the padded problem; tiles recomputed from lse."""
    q_seg, kv_seg, q_br, kv_br, q_offset = ids
    b, t, hkv, g, d = q.shape
    s_len = k.shape[1]
    nq, nk = t // bq, s_len // bk
    delta = jnp.sum(o.astype(_F32) * do.astype(_F32), -1)  # [B, T, Hkv, G]

    def q_block(carry, args):
        dk_acc, dv_acc = carry
        i, qb, qs, qr, dob, lseb, deltab = args
        q_first = q_offset + i * bq
        lo, hi = common.kv_block_range(q_first, bq, bk, nk, spec)
        lse_t = jnp.moveaxis(lseb, 1, 3)[..., None]  # [B, Hkv, G, bq, 1]
        delta_t = jnp.moveaxis(deltab, 1, 3)[..., None]

        def body(j, inner):
            dq, dk_acc, dv_acc = inner
            kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, 1)
            vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, 1)
            ks = jax.lax.dynamic_slice_in_dim(kv_seg, j * bk, bk, 1)
            kr = None if kv_br is None else jax.lax.dynamic_slice_in_dim(kv_br, j * bk, bk, 1)
            s, capped, mask = _tile(spec, qb, kb, q_first, j * bk, qs, ks, qr, kr)
            p = jnp.where(mask, jnp.exp(s - lse_t), 0.0)
            dv_blk = jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dob.dtype), dob, preferred_element_type=_F32)
            dp = jnp.einsum("bqkgd,bskd->bkgqs", dob, vb, preferred_element_type=_F32)
            ds = common.soft_cap_grad(p * (dp - delta_t), capped, spec) * spec.scale
            dq = dq + jnp.einsum("bkgqs,bskd->bqkgd", ds.astype(kb.dtype), kb, preferred_element_type=_F32)
            dk_blk = jnp.einsum("bkgqs,bqkgd->bskd", ds.astype(qb.dtype), qb, preferred_element_type=_F32)
            dk_acc = jax.lax.dynamic_update_slice_in_dim(
                dk_acc, jax.lax.dynamic_slice_in_dim(dk_acc, j * bk, bk, 1) + dk_blk, j * bk, 1)
            dv_acc = jax.lax.dynamic_update_slice_in_dim(
                dv_acc, jax.lax.dynamic_slice_in_dim(dv_acc, j * bk, bk, 1) + dv_blk, j * bk, 1)
            return dq, dk_acc, dv_acc

        dq0 = jnp.zeros((b, bq, hkv, g, d), _F32)
        dq, dk_acc, dv_acc = _loop(lo, hi, nk, body, (dq0, dk_acc, dv_acc))
        return (dk_acc, dv_acc), dq.astype(q.dtype)

    zeros = jnp.zeros((b, s_len, hkv, d), _F32)
    xs = (jnp.arange(nq), _split_q(q, nq, bq), _split_q(q_seg, nq, bq),
          None if q_br is None else _split_q(q_br, nq, bq), _split_q(do, nq, bq),
          _split_q(lse, nq, bq), _split_q(delta, nq, bq))
    if nq == 1:
        (dk, dv), dq = q_block((zeros, zeros), _first(xs))
        dq = dq[None]
    else:
        (dk, dv), dq = jax.lax.scan(q_block, (zeros, zeros), xs)
    return _merge_q(dq), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _blocked(q, k, v, ids, spec, bq, bk):
    return _forward(q, k, v, ids, spec, bq, bk)[0]


def _blocked_fwd(q, k, v, ids, spec, bq, bk):
    o, lse = _forward(q, k, v, ids, spec, bq, bk)
    return o, (q, k, v, ids, o, lse)


def _blocked_bwd(spec, bq, bk, res, do):
    q, k, v, ids, o, lse = res
    dq, dk, dv = _backward(q, k, v, ids, o, lse, do, spec, bq, bk)
    ids_ct = jax.tree.map(lambda x: None, ids)
    return dq, dk, dv, ids_ct


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def attention_xla(q, k, v, ids: common.Ids, spec: MaskSpec, blocks: common.BlockSizes, interpret=None):
    """q[B, T, Hq, D], k/v[B, S, Hkv, D] -> [B, T, Hq, D]; `interpret` is unused here."""
    del interpret
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    bq = common.choose_block(t, blocks.block_q, 8) if t > 8 else t
    bk = common.choose_block(s, blocks.block_kv, 8) if s > 8 else s
    tp, sp = common.round_up(t, bq), common.round_up(s, bk)
    qp = common.pad_axis(q, 1, tp).reshape(b, tp, hkv, hq // hkv, d)
    kp, vp = common.pad_axis(k, 1, sp), common.pad_axis(v, 1, sp)
    pad_ids = (
        common.pad_axis(ids.q_seg, 1, tp), common.pad_axis(ids.kv_seg, 1, sp),
        None if ids.q_br is None else common.pad_axis(ids.q_br, 1, tp),
        None if ids.kv_br is None else common.pad_axis(ids.kv_br, 1, sp),
        ids.q_offset,
    )
    out = _blocked(qp, kp, vp, pad_ids, spec, bq, bk)
    return out.reshape(b, tp, hq, d)[:, :t]
