"""Token log-probs for TPU in Pallas (Mosaic): forward, dh and dw kernels.

Forward grid (N/bn, V/bv, H/bh), V and H "arbitrary": the logits tile
f32[bn, bv] accumulates over H tiles in VMEM, then an online logsumexp over V keeps
max / sum / target-logit / sum(p z) per token as lane-broadcast [bn, 128] scratch.
Outputs are lane-dense f32[N, 128] columns (sliced to [N] outside).

Backward, two kernels that each recompute the logits tile (2 H-phases per grid
step of the last axis: phase 0 accumulates logits over H tiles, phase 1 walks the
H tiles again to use dz):
  dh  grid (N/bn, V/bv, 2*H/bh): dh[n, :] += dz @ w[:, v]^T   (f32 [bn, H] scratch)
  dw  grid (V/bv, N/bn, 2*H/bh): dw^T[v, :] += dz^T @ h[n, :] (f32 [bv, H] scratch)
dw is produced transposed so every matmul is a plain or rhs-transposed one.
Padded vocabulary columns are masked; padded tokens/hidden are zeros.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mm_rlhf_jax.kernels.attention.reference import MASK_VALUE
from mm_rlhf_jax.kernels.token_logprobs import common

_F32 = jnp.float32
_LANES = 128
_NT = (((1,), (1,)), ((), ()))
_VMEM_LIMIT = 48 * 1024 * 1024


def _lanes(x, width):
    reps = -(-width // _LANES)
    x = x if reps == 1 else jnp.tile(x, (1, reps))
    return x if x.shape[1] == width else x[:, :width]


def _col(x):
    return jnp.broadcast_to(x[:, None], (x.shape[0], _LANES))


def _fwd_kernel(h_ref, w_ref, lab_ref, logp_ref, lse_ref, ent_ref, acc, m_sc, l_sc, t_sc, sz_sc, *,
                inv_temp, vocab, bv, nv, nh, with_entropy):
    v, hh = pl.program_id(1), pl.program_id(2)

    @pl.when((v == 0) & (hh == 0))
    def _init_row():
        m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, _F32)
        for ref in (l_sc, t_sc, sz_sc):
            ref[...] = jnp.zeros(ref.shape, _F32)

    @pl.when(hh == 0)
    def _init_tile():
        acc[...] = jnp.zeros(acc.shape, _F32)

    acc[...] += jnp.dot(h_ref[...], w_ref[...], preferred_element_type=_F32)

    @pl.when(hh == nh - 1)
    def _update():
        bn = acc.shape[0]
        col = v * bv + lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
        z = common.mask_vocab(acc[...] * inv_temp, col, vocab)
        hit = col == _lanes(lab_ref[...], bv)
        t_sc[...] += lax.broadcast_in_dim(jnp.where(hit, z, 0.0).sum(-1), t_sc.shape, (0,))
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, z.max(-1)[:, None])
        p = jnp.exp(z - _lanes(m_next, bv))
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_sc[...] + lax.broadcast_in_dim(p.sum(-1), m_prev.shape, (0,))
        if with_entropy:
            pz = jnp.where(col < vocab, p * z, 0.0).sum(-1)
            sz_sc[...] = alpha * sz_sc[...] + lax.broadcast_in_dim(pz, m_prev.shape, (0,))
        m_sc[...] = m_next

        @pl.when(v == nv - 1)
        def _finish():
            lse = m_sc[...] + jnp.log(l_sc[...])
            lse_ref[...] = lse
            logp_ref[...] = t_sc[...] - lse
            ent_ref[...] = lse - sz_sc[...] / l_sc[...] if with_entropy else jnp.zeros(lse.shape, _F32)


def _forward(h, w, lab_col, *, inv_temp, vocab, with_entropy, bn, bv, bh, interpret):
    """Padded h[N, H], w[H, V], labels [N, 128] -> (logp, lse, entropy) f32[N]."""
    n, hid = h.shape
    nn_, nv, nh = n // bn, w.shape[1] // bv, hid // bh
    row = pl.BlockSpec((bn, _LANES), lambda i, v, k: (i, 0))
    outs = pl.pallas_call(
        functools.partial(_fwd_kernel, inv_temp=inv_temp, vocab=vocab, bv=bv, nv=nv, nh=nh,
                          with_entropy=with_entropy),
        grid=(nn_, nv, nh),
        in_specs=[pl.BlockSpec((bn, bh), lambda i, v, k: (i, k)),
                  pl.BlockSpec((bh, bv), lambda i, v, k: (k, v)), row],
        out_specs=[row, row, row],
        out_shape=[jax.ShapeDtypeStruct((n, _LANES), _F32)] * 3,
        scratch_shapes=[pltpu.VMEM((bn, bv), _F32)] + [pltpu.VMEM((bn, _LANES), _F32)] * 4,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary"), vmem_limit_bytes=_VMEM_LIMIT),
        interpret=interpret,
        name="mm_token_logprobs_fwd",
    )(h, w, lab_col)
    return tuple(o[:, 0] for o in outs)


def _dz(acc, lab_ref, stats_ref, col0, *, inv_temp, vocab, with_entropy):
    """dz f32[bn, bv] of a finished logits tile; stats_ref holds lse, ent, g, ge columns."""
    bn, bv = acc.shape
    col = col0 + lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
    z = common.mask_vocab(acc * inv_temp, col, vocab)
    onehot = col == _lanes(lab_ref[...], bv)
    stats = [_lanes(stats_ref[k], bv) for k in range(4)]  # each [bn, bv]
    return common.dz_tile(z, onehot, *stats, inv_temp, with_entropy)


def _store_tiles(out_ref, acc_ref, nh, bh):
    """out[:, k*bh:(k+1)*bh] = acc[k]: the f32 accumulator is [nh, rows, bh] so that
    the H tile is a leading (untiled) index, never a dynamic lane offset."""
    for k in range(nh):
        out_ref[:, k * bh:(k + 1) * bh] = acc_ref[k].astype(out_ref.dtype)


def _dh_kernel(h_ref, w_ref, lab_ref, stats_ref, dh_ref, acc, dz_sc, dh_acc, *, nh, bh, bv, nv, **kw):
    v, k = pl.program_id(1), pl.program_id(2)

    @pl.when((v == 0) & (k == 0))
    def _init_row():
        dh_acc[...] = jnp.zeros(dh_acc.shape, _F32)

    @pl.when(k == 0)
    def _init_tile():
        acc[...] = jnp.zeros(acc.shape, _F32)

    @pl.when(k < nh)
    def _logits():
        acc[...] += jnp.dot(h_ref[...], w_ref[...], preferred_element_type=_F32)

    @pl.when(k == nh - 1)
    def _make_dz():
        dz_sc[...] = _dz(acc[...], lab_ref, stats_ref, v * bv, **kw)

    @pl.when(k >= nh)
    def _use_dz():
        w = w_ref[...]
        dh_acc[k - nh] += lax.dot_general(dz_sc[...].astype(w.dtype), w, _NT, preferred_element_type=_F32)

    @pl.when((v == nv - 1) & (k == 2 * nh - 1))
    def _finish():
        _store_tiles(dh_ref, dh_acc, nh, bh)


def _dw_kernel(h_ref, w_ref, lab_ref, stats_ref, dwt_ref, acc, dz_sc, dw_acc, *, nh, bh, bv, nn_, **kw):
    v, i, k = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when((i == 0) & (k == 0))
    def _init_col():
        dw_acc[...] = jnp.zeros(dw_acc.shape, _F32)

    @pl.when(k == 0)
    def _init_tile():
        acc[...] = jnp.zeros(acc.shape, _F32)

    @pl.when(k < nh)
    def _logits():
        acc[...] += jnp.dot(h_ref[...], w_ref[...], preferred_element_type=_F32)

    @pl.when(k == nh - 1)
    def _make_dz():
        dz_sc[...] = _dz(acc[...], lab_ref, stats_ref, v * bv, **kw)

    @pl.when(k >= nh)
    def _use_dz():
        h = h_ref[...]
        dw_acc[k - nh] += jnp.dot(dz_sc[...].T.astype(h.dtype), h, preferred_element_type=_F32)

    @pl.when((i == nn_ - 1) & (k == 2 * nh - 1))
    def _finish():
        _store_tiles(dwt_ref, dw_acc, nh, bh)


def _backward(h, w, lab_col, stats, *, inv_temp, vocab, with_entropy, bn, bv, bh, interpret):
    """stats f32[4, N, 128] = lse, ent, g, ge columns -> (dh like h, dw like w)."""
    n, hid = h.shape
    nn_, nv, nh = n // bn, w.shape[1] // bv, hid // bh
    kw = dict(inv_temp=inv_temp, vocab=vocab, with_entropy=with_entropy, nh=nh, bh=bh, bv=bv)
    # Both phases walk the H tiles; h stays on its last tile during phase 1 (no refetch).
    hk = lambda k: jnp.where(k < nh, k, k - nh)
    scratch = lambda rows: [pltpu.VMEM((bn, bv), _F32), pltpu.VMEM((bn, bv), _F32),
                            pltpu.VMEM((nh, rows, bh), _F32)]
    params = lambda sem: pltpu.CompilerParams(dimension_semantics=sem, vmem_limit_bytes=_VMEM_LIMIT)
    dh = pl.pallas_call(
        functools.partial(_dh_kernel, nv=nv, **kw),
        grid=(nn_, nv, 2 * nh),
        in_specs=[pl.BlockSpec((bn, bh), lambda i, v, k: (i, jnp.minimum(k, nh - 1))),
                  pl.BlockSpec((bh, bv), lambda i, v, k: (hk(k), v)),
                  pl.BlockSpec((bn, _LANES), lambda i, v, k: (i, 0)),
                  pl.BlockSpec((4, bn, _LANES), lambda i, v, k: (0, i, 0))],
        out_specs=pl.BlockSpec((bn, hid), lambda i, v, k: (i, 0)),
        out_shape=jax.ShapeDtypeStruct(h.shape, h.dtype),
        scratch_shapes=scratch(bn),
        compiler_params=params(("parallel", "arbitrary", "arbitrary")),
        interpret=interpret, name="mm_token_logprobs_dh",
    )(h, w, lab_col, stats)
    dwt = pl.pallas_call(
        functools.partial(_dw_kernel, nn_=nn_, **kw),
        grid=(nv, nn_, 2 * nh),
        in_specs=[pl.BlockSpec((bn, bh), lambda v, i, k: (i, hk(k))),
                  pl.BlockSpec((bh, bv), lambda v, i, k: (jnp.minimum(k, nh - 1), v)),
                  pl.BlockSpec((bn, _LANES), lambda v, i, k: (i, 0)),
                  pl.BlockSpec((4, bn, _LANES), lambda v, i, k: (0, i, 0))],
        out_specs=pl.BlockSpec((bv, hid), lambda v, i, k: (v, 0)),
        out_shape=jax.ShapeDtypeStruct((w.shape[1], hid), w.dtype),
        scratch_shapes=scratch(bv),
        compiler_params=params(("parallel", "arbitrary", "arbitrary")),
        interpret=interpret, name="mm_token_logprobs_dw",
    )(h, w, lab_col, stats)
    return dh, dwt.T


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused(h, w, lab_col, static, cfg):
    logp, _, ent = _forward(h, w, lab_col, **dict(static), **dict(cfg[0]))
    return logp, ent


def _fused_fwd(h, w, lab_col, static, cfg):
    logp, lse, ent = _forward(h, w, lab_col, **dict(static), **dict(cfg[0]))
    return (logp, ent), (h, w, lab_col, lse, ent)


def _fused_bwd(static, cfg, res, cts):
    h, w, lab_col, lse, ent = res
    g, ge = (c.astype(_F32) for c in cts)
    stats = jnp.stack([_col(x) for x in (lse, ent, g, ge)])
    dh, dw = _backward(h, w, lab_col, stats, **dict(static), **dict(cfg[1]))
    return dh, dw, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _tile(n: int, target: int, base: int) -> int:
    return min(target, common.round_up(n, base))


def token_logprobs_pallas_tpu(h, w, labels, *, inv_temp: float, with_entropy: bool,
                              blocks: common.BlockSizes, interpret: bool = False):
    """h[N, H], w[H, V], labels int32[N] -> (logp f32[N], entropy f32[N])."""
    n, hid = h.shape
    vocab = w.shape[1]
    bh = _tile(hid, blocks.block_h, _LANES)
    bn, bn_b = _tile(n, blocks.block_n, 8), _tile(n, blocks.block_n_bwd, 8)
    bv, bv_b = _tile(vocab, blocks.block_v, _LANES), _tile(vocab, blocks.block_v_bwd, _LANES)
    np_ = common.round_up(n, max(bn, bn_b))
    np_ = common.round_up(np_, min(bn, bn_b))
    if np_ % bn or np_ % bn_b:
        np_ = common.round_up(n, bn * bn_b)
    vp = common.round_up(vocab, max(bv, bv_b))
    if vp % bv or vp % bv_b:
        vp = common.round_up(vocab, bv * bv_b)
    hp = common.round_up(hid, bh)
    static = (("inv_temp", inv_temp), ("vocab", vocab), ("with_entropy", with_entropy),
              ("bh", bh), ("interpret", interpret))
    cfg = ((("bn", bn), ("bv", bv)), (("bn", bn_b), ("bv", bv_b)))
    logp, ent = _fused(common.pad_to(h, (np_, hp)), common.pad_to(w, (hp, vp)),
                       _col(common.pad_to(labels, (np_,))), static, cfg)
    return logp[:n], ent[:n]
