"""Token log-probs for GPU in Pallas (Triton lowering): forward and fused backward.

Forward: one program per token tile (grid N/bn); in-kernel fori_loops over V tiles
and, inside, over H tiles build the f32[bn, bv] logits tile in registers, then an
online logsumexp keeps max / sum / target logit / sum(p z) per token.

Backward: one program per (token tile, vocab tile) (grid N/bn x V/bv) recomputes
its logits tile, forms dz once, then walks the H tiles adding dz @ w[h, v]^T into
dh[n, h] and h[n, h]^T @ dz into dw[h, v] with f32 atomics (as Cut Cross-Entropy
does), so the whole backward costs 6NHV FLOPs with no [N, V] buffer. dh/dw are f32
accumulators (aliased zero inputs) cast to the input dtypes afterwards.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from mm_rlhf_jax.kernels.attention.reference import MASK_VALUE
from mm_rlhf_jax.kernels.token_logprobs import common

_F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))
_MIN_TILE = 16


def _logits_tile(h_ref, w_ref, v, *, bv, bh, nh):
    """f32[bn, bv] = h[n, :] @ w[:, v-tile], accumulated over H tiles."""

    def body(k, acc):
        hs = pl.ds(k * bh, bh)
        return acc + jnp.dot(h_ref[:, hs], w_ref[hs, pl.ds(v * bv, bv)], preferred_element_type=_F32)

    return lax.fori_loop(0, nh, body, jnp.zeros((h_ref.shape[0], bv), _F32))


def _fwd_kernel(h_ref, w_ref, lab_ref, logp_ref, lse_ref, ent_ref, *, inv_temp, vocab, bv, bh, nv, nh,
                with_entropy):
    bn = h_ref.shape[0]
    lab = lab_ref[...][:, None]

    def body(v, carry):
        m, l, t, sz = carry
        col = v * bv + jnp.arange(bv)[None, :]
        z = common.mask_vocab(_logits_tile(h_ref, w_ref, v, bv=bv, bh=bh, nh=nh) * inv_temp, col, vocab)
        t = t + jnp.where(col == lab, z, 0.0).sum(-1)
        m_next = jnp.maximum(m, z.max(-1))
        p = jnp.exp(z - m_next[:, None])
        alpha = jnp.exp(m - m_next)
        if with_entropy:
            sz = alpha * sz + jnp.where(col < vocab, p * z, 0.0).sum(-1)
        return m_next, alpha * l + p.sum(-1), t, sz

    zeros = jnp.zeros((bn,), _F32)
    m, l, t, sz = lax.fori_loop(0, nv, body, (jnp.full((bn,), MASK_VALUE, _F32), zeros, zeros, zeros))
    lse = m + jnp.log(l)
    lse_ref[...] = lse
    logp_ref[...] = t - lse
    ent_ref[...] = lse - sz / l if with_entropy else zeros


def _bwd_kernel(h_ref, w_ref, lab_ref, lse_ref, ent_ref, g_ref, ge_ref, dh_in, dw_in, dh_ref, dw_ref, *,
                inv_temp, vocab, bv, bh, nh, with_entropy):
    del dh_in, dw_in  # Aliased with dh_ref / dw_ref (zero-initialised accumulators).
    v = pl.program_id(1)
    bn = h_ref.shape[0]
    col = v * bv + jnp.arange(bv)[None, :]
    z = common.mask_vocab(_logits_tile(h_ref, w_ref, v, bv=bv, bh=bh, nh=nh) * inv_temp, col, vocab)
    column = lambda ref: ref[...][:, None]
    dz = common.dz_tile(z, col == column(lab_ref), column(lse_ref), column(ent_ref), column(g_ref),
                        column(ge_ref), inv_temp, with_entropy)
    vs = pl.ds(v * bv, bv)

    def body(k, carry):
        hs = pl.ds(k * bh, bh)
        w_t = w_ref[hs, vs]
        h_t = h_ref[:, hs]
        pltr.atomic_add(dh_ref, (pl.ds(0, bn), hs),
                        lax.dot_general(dz.astype(w_t.dtype), w_t, _NT, preferred_element_type=_F32))
        pltr.atomic_add(dw_ref, (hs, vs), jnp.dot(h_t.T, dz.astype(h_t.dtype), preferred_element_type=_F32))
        return carry

    lax.fori_loop(0, nh, body, 0)


def _forward(h, w, labels, *, inv_temp, vocab, with_entropy, bn, bv, bh, interpret):
    n, hid = h.shape
    nv, nh = w.shape[1] // bv, hid // bh
    vec = pl.BlockSpec((bn,), lambda i: (i,))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, inv_temp=inv_temp, vocab=vocab, bv=bv, bh=bh, nv=nv, nh=nh,
                          with_entropy=with_entropy),
        grid=(n // bn,),
        in_specs=[pl.BlockSpec((bn, hid), lambda i: (i, 0)), pl.BlockSpec(w.shape, lambda i: (0, 0)), vec],
        out_specs=[vec, vec, vec],
        out_shape=[jax.ShapeDtypeStruct((n,), _F32)] * 3,
        compiler_params=pltr.CompilerParams(num_warps=4, num_stages=2),
        cost_estimate=pl.CostEstimate(
            flops=2 * n * hid * w.shape[1], transcendentals=n * w.shape[1],
            bytes_accessed=h.size * h.dtype.itemsize + w.size * w.dtype.itemsize * (n // bn)),
        interpret=interpret, name="mm_token_logprobs_fwd_gpu",
    )(h, w, labels)


def _backward(h, w, labels, lse, ent, g, ge, *, inv_temp, vocab, with_entropy, bn, bv, bh, interpret):
    n, hid = h.shape
    nv, nh = w.shape[1] // bv, hid // bh
    vec = pl.BlockSpec((bn,), lambda i, v: (i,))
    dh_spec = pl.BlockSpec((bn, hid), lambda i, v: (i, 0))
    dw_spec = pl.BlockSpec(w.shape, lambda i, v: (0, 0))
    dh, dw = pl.pallas_call(
        functools.partial(_bwd_kernel, inv_temp=inv_temp, vocab=vocab, bv=bv, bh=bh, nh=nh,
                          with_entropy=with_entropy),
        grid=(n // bn, nv),
        in_specs=[dh_spec, dw_spec, vec, vec, vec, vec, vec, dh_spec, dw_spec],
        out_specs=[dh_spec, dw_spec],
        out_shape=[jax.ShapeDtypeStruct(h.shape, _F32), jax.ShapeDtypeStruct(w.shape, _F32)],
        input_output_aliases={7: 0, 8: 1},
        compiler_params=pltr.CompilerParams(num_warps=4, num_stages=2),
        # Per (token tile, vocab tile): read h and w tiles, f32 atomic read-modify-write of dh and dw.
        cost_estimate=pl.CostEstimate(
            flops=6 * n * hid * w.shape[1], transcendentals=n * w.shape[1],
            bytes_accessed=(h.dtype.itemsize + 8) * n * hid * nv + (w.dtype.itemsize + 8) * w.size * (n // bn)),
        interpret=interpret, name="mm_token_logprobs_bwd_gpu",
    )(h, w, labels, lse, ent, g, ge, jnp.zeros(h.shape, _F32), jnp.zeros(w.shape, _F32))
    return dh.astype(h.dtype), dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused(h, w, labels, static, cfg):
    logp, _, ent = _forward(h, w, labels, **dict(static), **dict(cfg[0]))
    return logp, ent


def _fused_fwd(h, w, labels, static, cfg):
    logp, lse, ent = _forward(h, w, labels, **dict(static), **dict(cfg[0]))
    return (logp, ent), (h, w, labels, lse, ent)


def _fused_bwd(static, cfg, res, cts):
    h, w, labels, lse, ent = res
    g, ge = (c.astype(_F32) for c in cts)
    dh, dw = _backward(h, w, labels, lse, ent, g, ge, **dict(static), **dict(cfg[1]))
    return dh, dw, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _tile(n: int, target: int) -> int:
    return min(target, max(_MIN_TILE, pl.next_power_of_2(n)))


def token_logprobs_pallas_gpu(h, w, labels, *, inv_temp: float, with_entropy: bool,
                              blocks: common.BlockSizes, interpret: bool = False):
    """h[N, H], w[H, V], labels int32[N] -> (logp f32[N], entropy f32[N])."""
    n, hid = h.shape
    vocab = w.shape[1]
    for name, size in vars(blocks).items():
        if size is not None and (size < _MIN_TILE or size & (size - 1)):
            raise ValueError(f"token_logprobs pallas_gpu: {name}={size} must be a power of two >= {_MIN_TILE}")
    bh = _tile(hid, blocks.block_h)
    bn, bn_b = _tile(n, blocks.block_n), _tile(n, blocks.block_n_bwd)
    bv, bv_b = _tile(vocab, blocks.block_v), _tile(vocab, blocks.block_v_bwd)
    # Powers of two: the larger tile is a multiple of the smaller.
    np_, vp, hp = (common.round_up(n, max(bn, bn_b)), common.round_up(vocab, max(bv, bv_b)),
                   common.round_up(hid, bh))
    static = (("inv_temp", inv_temp), ("vocab", vocab), ("with_entropy", with_entropy),
              ("bh", bh), ("interpret", bool(interpret)))
    cfg = ((("bn", bn), ("bv", bv)), (("bn", bn_b), ("bv", bv_b)))
    logp, ent = _fused(common.pad_to(h, (np_, hp)), common.pad_to(w, (hp, vp)), common.pad_to(labels, (np_,)),
                       static, cfg)
    return logp[:n], ent[:n]
