"""Flash attention for GPU in Pallas (Triton lowering): forward, dq and dkv kernels.

Token-major layout as given (q[B, T, Hq, D], k/v[B, S, Hkv, D]); each program owns
one query tile (forward, dq) or one KV tile (dkv) and loops in-kernel over the
tiles of the other side with `fori_loop`, keeping the online-softmax state in
registers (Triton kernels have no scratch refs). Loop bounds come from the
causal / window rule, so fully hidden tiles are never loaded. The dkv kernel of
KV head h also loops over its G query heads, so GQA needs no K/V repetition.
Triton wants power-of-two tiles of at least 16: head_dim is zero-padded to one.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from mm_rlhf_jax.kernels.attention import common
from mm_rlhf_jax.kernels.attention.common import MASK_VALUE, MaskSpec

_F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_MIN_TILE = 16


def _tile_ids(id_refs, spec, q_sl, k_sl):
    """(q_seg [bq, 1], k_seg [1, bk], q_br, k_br) for the tile (q_sl, k_sl)."""
    q_seg_ref, kv_seg_ref = id_refs[0], id_refs[1]
    out = [q_seg_ref[q_sl][:, None], kv_seg_ref[k_sl][None, :]]
    if not spec.has_branches:
        return out + [None, None]
    return out + [id_refs[2][q_sl][:, None], id_refs[3][k_sl][None, :]]


def _scores(q, k, q_first, k_first, ids, spec):
    """(masked capped scores, capped scores, mask) of a [bq, bk] tile."""
    bq, bk = q.shape[0], k.shape[0]
    s = common.soft_cap(lax.dot_general(q, k, _NT, preferred_element_type=_F32) * spec.scale, spec)
    q_pos = (q_first + jnp.arange(bq))[:, None]
    k_pos = (k_first + jnp.arange(bk))[None, :]
    mask = common.tile_mask(q_pos, k_pos, *ids, spec)
    return jnp.where(mask, s, MASK_VALUE), s, mask


def _fwd_kernel(qoff_ref, q_ref, k_ref, v_ref, *refs, spec: MaskSpec, bq, bk, nk):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (o_ref, lse_ref) = refs[:n_ids], refs[n_ids:]
    i = pl.program_id(0)
    q = q_ref[...]
    q_first = qoff_ref[0] + i * bq
    q_sl = pl.ds(0, bq)
    lo, hi = common.kv_block_range(q_first, bq, bk, nk, spec)

    def body(j, carry):
        m, l, acc = carry
        k_sl = pl.ds(j * bk, bk)
        s, _, mask = _scores(q, k_ref[k_sl, :], q_first, j * bk, _tile_ids(id_refs, spec, q_sl, k_sl), spec)
        m_next = jnp.maximum(m, s.max(axis=-1))
        p = jnp.where(mask, jnp.exp(s - m_next[:, None]), 0.0)
        alpha = jnp.exp(m - m_next)
        v = v_ref[k_sl, :]
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=_F32)
        return m_next, alpha * l + p.sum(axis=-1), alpha[:, None] * acc + pv

    d = q.shape[-1]
    init = (jnp.full((bq,), MASK_VALUE, _F32), jnp.zeros((bq,), _F32), jnp.zeros((bq, d), _F32))
    m, l, acc = lax.fori_loop(lo, hi, body, init)
    seen = l > 0.0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)  # acc == 0 on unseen rows
    lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), 0.0)


def _q_ids_spec(spec, bq, q_map, s, kv_map):
    specs = [pl.BlockSpec((None, bq), q_map), pl.BlockSpec((None, s), kv_map)]
    return specs * (2 if spec.has_branches else 1)


def _cost(b, hq, t, s, d, itemsize, *, matmuls, causal):
    """pl.CostEstimate of `matmuls` [t, s, d] matmuls per head (half of them when causal)."""
    frac = 0.5 if causal else 1.0
    return pl.CostEstimate(flops=int(2 * matmuls * b * hq * t * s * d * frac),
                           transcendentals=int(b * hq * t * s * frac),
                           bytes_accessed=int(4 * b * hq * (t + s) * d * itemsize))


def _forward(qoff, q, k, v, ids, spec, bq, bk, interpret):
    """q[B, T, Hq, D], k/v[B, S, Hkv, D] -> (o like q, lse f32[B, Hq, T])."""
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    group, nq, nk = hq // hkv, t // bq, s // bk
    kv_block = pl.BlockSpec((None, s, None, d), lambda i, b_, h: (b_, 0, lax.div(h, group), 0))
    in_specs = [
        pl.BlockSpec((1,), lambda i, b_, h: (0,)),
        pl.BlockSpec((None, bq, None, d), lambda i, b_, h: (b_, i, h, 0)),
        kv_block, kv_block,
        *_q_ids_spec(spec, bq, lambda i, b_, h: (b_, i), s, lambda i, b_, h: (b_, 0)),
    ]
    out_specs = [pl.BlockSpec((None, bq, None, d), lambda i, b_, h: (b_, i, h, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, b_, h: (b_, h, i))]
    return pl.pallas_call(
        functools.partial(_fwd_kernel, spec=spec, bq=bq, bk=bk, nk=nk),
        grid=(nq, b, hq), in_specs=in_specs, out_specs=out_specs,
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, t), _F32)],
        compiler_params=pltr.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2),
        cost_estimate=_cost(b, hq, t, s, d, q.dtype.itemsize, matmuls=2, causal=spec.causal),
        interpret=interpret, name="mm_flash_fwd_gpu",
    )(qoff, q, k, v, *ids)


def _dq_kernel(qoff_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, spec, bq, bk, nk):
    n_ids = 4 if spec.has_branches else 2
    id_refs, dq_ref = refs[:n_ids], refs[n_ids]
    i = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_first = qoff_ref[0] + i * bq
    q_sl = pl.ds(0, bq)
    lo, hi = common.kv_block_range(q_first, bq, bk, nk, spec)

    def body(j, dq):
        k_sl = pl.ds(j * bk, bk)
        k = k_ref[k_sl, :]
        _, capped, mask = _scores(q, k, q_first, j * bk, _tile_ids(id_refs, spec, q_sl, k_sl), spec)
        p = jnp.where(mask, jnp.exp(capped - lse), 0.0)
        dp = lax.dot_general(do, v_ref[k_sl, :], _NT, preferred_element_type=_F32)
        ds = common.soft_cap_grad(p * (dp - delta), capped, spec) * spec.scale
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=_F32)

    dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, _F32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(qoff_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, spec, bq, bk, nq, group):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (dk_ref, dv_ref) = refs[:n_ids], refs[n_ids:]
    kj = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    qoff = qoff_ref[0]
    k_sl = pl.ds(0, bk)
    lo, hi = common.q_block_range(kj * bk, bk, bq, nq, qoff, spec)

    def head(g, carry):
        def body(i, carry):
            dk, dv = carry
            q_sl = pl.ds(i * bq, bq)
            q, do = q_ref[q_sl, g, :], do_ref[q_sl, g, :]
            ids = _tile_ids(id_refs, spec, q_sl, k_sl)
            _, capped, mask = _scores(q, k, qoff + i * bq, kj * bk, ids, spec)
            p = jnp.where(mask, jnp.exp(capped - lse_ref[g, q_sl][:, None]), 0.0)
            dv = dv + jnp.dot(p.T.astype(do.dtype), do, preferred_element_type=_F32)
            dp = lax.dot_general(do, v, _NT, preferred_element_type=_F32)
            ds = common.soft_cap_grad(p * (dp - delta_ref[g, q_sl][:, None]), capped, spec) * spec.scale
            return dk + jnp.dot(ds.T.astype(q.dtype), q, preferred_element_type=_F32), dv

        return lax.fori_loop(lo, hi, body, carry)

    zeros = jnp.zeros(k.shape, _F32)
    dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(qoff, q, k, v, ids, o, lse, do, spec, bq, bk, interpret):
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    group, nq, nk = hq // hkv, t // bq, s // bk
    delta = jnp.swapaxes(jnp.sum(o.astype(_F32) * do.astype(_F32), axis=-1), 1, 2)  # [B, Hq, T]
    params = pltr.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)
    q_tile = pl.BlockSpec((None, bq, None, d), lambda i, b_, h: (b_, i, h, 0))
    kv_full = pl.BlockSpec((None, s, None, d), lambda i, b_, h: (b_, 0, lax.div(h, group), 0))
    vec_tile = pl.BlockSpec((None, None, bq), lambda i, b_, h: (b_, h, i))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, spec=spec, bq=bq, bk=bk, nk=nk),
        grid=(nq, b, hq),
        in_specs=[pl.BlockSpec((1,), lambda i, b_, h: (0,)), q_tile, kv_full, kv_full, q_tile,
                  vec_tile, vec_tile,
                  *_q_ids_spec(spec, bq, lambda i, b_, h: (b_, i), s, lambda i, b_, h: (b_, 0))],
        out_specs=q_tile, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params, interpret=interpret, name="mm_flash_dq_gpu",
        cost_estimate=_cost(b, hq, t, s, d, q.dtype.itemsize, matmuls=3, causal=spec.causal),
    )(qoff, q, k, v, do, lse, delta, *ids)

    # dkv: program (kj, b, h) sees all T query rows of the G heads h*G .. h*G+G-1.
    q_group = pl.BlockSpec((None, t, group, d), lambda kj, b_, h: (b_, 0, h, 0))
    kv_tile = pl.BlockSpec((None, bk, None, d), lambda kj, b_, h: (b_, kj, h, 0))
    vec_group = pl.BlockSpec((None, group, t), lambda kj, b_, h: (b_, h, 0))
    id_specs = [pl.BlockSpec((None, t), lambda kj, b_, h: (b_, 0)),
                pl.BlockSpec((None, bk), lambda kj, b_, h: (b_, kj))] * (2 if spec.has_branches else 1)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, spec=spec, bq=bq, bk=bk, nq=nq, group=group),
        grid=(nk, b, hkv),
        in_specs=[pl.BlockSpec((1,), lambda kj, b_, h: (0,)), q_group, kv_tile, kv_tile, q_group,
                  vec_group, vec_group, *id_specs],
        out_specs=[kv_tile, kv_tile],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params, interpret=interpret, name="mm_flash_dkv_gpu",
        cost_estimate=_cost(b, hq, t, s, d, q.dtype.itemsize, matmuls=4, causal=spec.causal),
    )(qoff, q, k, v, do, lse, delta, *ids)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(qoff, q, k, v, ids, spec, blocks, interpret):
    bq, bk, _, _ = blocks
    return _forward(qoff, q, k, v, ids, spec, bq, bk, interpret)[0]


def _flash_fwd(qoff, q, k, v, ids, spec, blocks, interpret):
    bq, bk, _, _ = blocks
    o, lse = _forward(qoff, q, k, v, ids, spec, bq, bk, interpret)
    return o, (qoff, q, k, v, ids, o, lse)


def _flash_bwd(spec, blocks, interpret, res, do):
    qoff, q, k, v, ids, o, lse = res
    _, _, bq, bk = blocks
    dq, dk, dv = _backward(qoff, q, k, v, ids, o, lse, do, spec, bq, bk, interpret)
    return None, dq, dk, dv, jax.tree.map(lambda _: None, ids)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _gpu_block(n: int, target: int) -> int:
    """Power-of-two tile >= 16: the whole axis when short, else a divisor-friendly block."""
    if n <= target:
        return max(_MIN_TILE, pl.next_power_of_2(n))
    return common.choose_block(n, target, _MIN_TILE)


def attention_pallas_gpu(q, k, v, ids: common.Ids, spec: MaskSpec, blocks: common.BlockSizes,
                         interpret: bool = False):
    """q[B, T, Hq, D], k/v[B, S, Hkv, D] -> [B, T, Hq, D] via the Triton kernels above."""
    b, t, hq, d = q.shape
    s = k.shape[1]
    for name, size in vars(blocks).items():
        if size < _MIN_TILE or size & (size - 1):
            raise ValueError(f"attention pallas_gpu: {name}={size} must be a power of two >= {_MIN_TILE}")
    bq, bq_b = _gpu_block(t, blocks.block_q), _gpu_block(t, blocks.block_q_bwd)
    bk, bk_b = _gpu_block(s, blocks.block_kv), _gpu_block(s, blocks.block_kv_bwd)
    tp, sp = common.round_up(t, max(bq, bq_b)), common.round_up(s, max(bk, bk_b))
    dp = max(_MIN_TILE, pl.next_power_of_2(d))
    pad = lambda x, n: common.pad_axis(common.pad_axis(x, 1, n), 3, dp)
    id_arrays = [common.pad_axis(ids.q_seg, 1, tp), common.pad_axis(ids.kv_seg, 1, sp)]
    if spec.has_branches:
        id_arrays += [common.pad_axis(ids.q_br, 1, tp), common.pad_axis(ids.kv_br, 1, sp)]
    out = _flash(ids.q_offset.reshape(1), pad(q, tp), pad(k, sp), pad(v, sp), id_arrays, spec,
                 (bq, bk, bq_b, bk_b), bool(interpret))
    return out[:, :t, :, :d]
