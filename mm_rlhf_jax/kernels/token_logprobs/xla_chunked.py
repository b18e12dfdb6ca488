"""Chunked token log-probs in plain XLA: the CPU default and portable fallback.

Tokens are processed `block_n` at a time (lax.map / lax.scan), each chunk forming
f32[block_n, V] logits; nothing [N, V] is ever alive. The custom_vjp backward
recomputes each chunk's logits from (h, w, lse) and accumulates dw in an f32 carry,
so forward + backward temporary memory is O(block_n * V + H * V), independent of N.
"""

import functools

import jax
import jax.numpy as jnp

from mm_rlhf_jax.kernels.token_logprobs import common

_F32 = jnp.float32
_DW_SLICE = 4096  # vocab columns per in-place dw update


def _chunks(x, nc):
    return x.reshape(nc, x.shape[0] // nc, *x.shape[1:])


def _logits(hc, w, inv_temp):
    return jnp.dot(hc, w, preferred_element_type=_F32) * inv_temp


def _forward(h, w, labels, inv_temp, with_entropy, bn):
    """h[N, H] (N % bn == 0), w[H, V], labels[N] -> (logp, lse, entropy) each f32[N]."""
    nc = h.shape[0] // bn

    def chunk(args):
        hc, lc = args
        z = _logits(hc, w, inv_temp)
        m = z.max(-1, keepdims=True)
        e = jnp.exp(z - m)
        l = e.sum(-1)
        lse = m[:, 0] + jnp.log(l)
        zl = jnp.take_along_axis(z, lc[:, None], axis=-1)[:, 0]
        ent = lse - (e * z).sum(-1) / l if with_entropy else jnp.zeros_like(lse)
        return zl - lse, lse, ent

    logp, lse, ent = jax.lax.map(chunk, (_chunks(h, nc), _chunks(labels, nc)))
    return logp.reshape(-1), lse.reshape(-1), ent.reshape(-1)


def _backward(h, w, labels, lse, ent, g, ge, inv_temp, with_entropy, bn):
    nc = h.shape[0] // bn
    vocab = jnp.arange(w.shape[1])

    def chunk(dw, args):
        hc, lc, lse_c, ent_c, g_c, ge_c = args
        z = _logits(hc, w, inv_temp)
        dz = common.dz_tile(z, vocab[None, :] == lc[:, None], lse_c[:, None], ent_c[:, None],
                            g_c[:, None], ge_c[:, None], inv_temp, with_entropy)
        dh = jnp.dot(dz.astype(w.dtype), w.T, preferred_element_type=_F32)
        dz = dz.astype(hc.dtype)
        # dw += hc^T dz one vocab slice at a time: each update happens in place in the
        # carry, so no second f32 [H, V] buffer (the product) is ever alive.
        for lo in range(0, w.shape[1], _DW_SLICE):
            hi = min(w.shape[1], lo + _DW_SLICE)
            dw = dw.at[:, lo:hi].add(jnp.dot(hc.T, dz[:, lo:hi], preferred_element_type=_F32))
        return dw, dh.astype(h.dtype)

    xs = tuple(_chunks(x, nc) for x in (h, labels, lse, ent, g, ge))
    dw, dh = jax.lax.scan(chunk, jnp.zeros(w.shape, _F32), xs)
    return dh.reshape(h.shape), dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked(h, w, labels, inv_temp, with_entropy, bn):
    logp, _, ent = _forward(h, w, labels, inv_temp, with_entropy, bn)
    return logp, ent


def _chunked_fwd(h, w, labels, inv_temp, with_entropy, bn):
    logp, lse, ent = _forward(h, w, labels, inv_temp, with_entropy, bn)
    return (logp, ent), (h, w, labels, lse, ent)


def _chunked_bwd(inv_temp, with_entropy, bn, res, cts):
    h, w, labels, lse, ent = res
    g, ge = cts
    dh, dw = _backward(h, w, labels, lse, ent, g.astype(_F32), ge.astype(_F32), inv_temp, with_entropy, bn)
    return dh, dw, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def token_logprobs_xla(h, w, labels, *, inv_temp: float, with_entropy: bool, blocks: common.BlockSizes,
                       interpret=None):
    """h[N, H], w[H, V], labels int32[N] -> (logp f32[N], entropy f32[N]); `interpret` unused."""
    del interpret
    n = h.shape[0]
    bn = min(blocks.block_n, common.round_up(n, 8))
    np_ = common.round_up(n, bn)
    logp, ent = _chunked(common.pad_to(h, (np_, h.shape[1])), w, common.pad_to(labels, (np_,)),
                         inv_temp, with_entropy, bn)
    return logp[:n], ent[:n]
