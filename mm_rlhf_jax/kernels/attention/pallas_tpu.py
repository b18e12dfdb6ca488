"""Flash attention for TPU in Pallas (Mosaic): forward, dq and dkv kernels.

Layout inside the kernels is head-major: q[B, Hq, T, D], k/v[B, Hkv, S, D], so every
block's last two dims are (sequence tile, D). Per-token ids travel in the two
lane/sublane-broadcast layouts TPU kernels use for vectors (as splash attention
does): column form int32[B, N, 128] (a [tile, 128] block, repeated along lanes)
and row form int32[B, 8, N] (a [8, tile] block, row 0 used).

Grids (KV / query-block axes last, "arbitrary", accumulating in VMEM scratch):
  forward  (B, Hq, nq, nk)       online softmax in m/l (lane-broadcast) + acc
  dq       (B, Hq, nq, nk)       dq += ds @ k
  dkv      (B, Hkv, nk, G, nq)   dk/dv summed over the G query heads of a KV head
q_offset is a scalar-prefetch operand: it drives both the per-tile skip test and
the index maps, which clamp skipped tiles onto a tile already in VMEM so that the
pipeline issues no DMA for them.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mm_rlhf_jax.kernels.attention import common
from mm_rlhf_jax.kernels.attention.common import MASK_VALUE, MaskSpec

_F32 = jnp.float32
_LANES, _SUBLANES = 128, 8
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
# 512 x 512 f32 tiles and their temporaries need more than the default scoped VMEM
# of some chips; 48 MiB fits every current TPU core (64-128 MiB).
_VMEM_LIMIT = 48 * 1024 * 1024


def _lanes(x, width):
    """[rows, 128] lane-broadcast vector -> [rows, width]."""
    reps = -(-width // _LANES)
    x = x if reps == 1 else jnp.tile(x, (1, reps))
    return x if x.shape[1] == width else x[:, :width]


def _col(x):
    """int32[B, N] -> column layout int32[B, N, 128]."""
    return jnp.broadcast_to(x[:, :, None], (*x.shape, _LANES))


def _row(x):
    """int32[B, N] -> row layout int32[B, 8, N]."""
    return jnp.broadcast_to(x[:, None, :], (x.shape[0], _SUBLANES, x.shape[1]))


def _clamp(j, lo, hi):
    """Index of a tile to fetch: j inside [lo, hi), else the nearest tile in range."""
    return jnp.minimum(jnp.maximum(j, lo), jnp.maximum(hi - 1, 0))


def _ids_for(tile_ids, cols):
    """(row seg [rows, cols], col seg [1, cols], row br, col br) of a rows x cols tile.

    tile_ids: ((seg row-side ref, seg col-side ref), (br pair) | None); row-side refs
    are in column layout [rows, 128], col-side refs in row layout [8, cols]. The
    forward / dq tiles have queries as rows, the dkv tiles keys.
    """
    (row_seg, col_seg), br = tile_ids
    out = [_lanes(row_seg[...], cols), col_seg[:1, :]]
    if br is None:
        return out + [None, None]
    row_br, col_br = br
    return out + [_lanes(row_br[...], cols), col_br[:1, :]]


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(qoff_ref, q_ref, k_ref, v_ref, *refs, spec: MaskSpec, bq, bk, nk):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = refs[:n_ids], refs[n_ids:]
    i, j = pl.program_id(2), pl.program_id(3)
    d = acc_ref.shape[-1]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, _F32)
        l_ref[...] = jnp.zeros(l_ref.shape, _F32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

    q_first = qoff_ref[0] + i * bq
    lo, hi = common.kv_block_range(q_first, bq, bk, nk, spec)

    @pl.when((j >= lo) & (j < hi))
    def _tile():
        s = lax.dot_general(q_ref[...], k_ref[...], _NT, preferred_element_type=_F32) * spec.scale
        s = common.soft_cap(s, spec)
        q_pos = q_first + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        br = (id_refs[2], id_refs[3]) if spec.has_branches else None
        q_seg, k_seg, q_br, k_br = _ids_for(((id_refs[0], id_refs[1]), br), bk)
        mask = common.tile_mask(q_pos, k_pos, q_seg, k_seg, q_br, k_br, spec)
        s = jnp.where(mask, s, MASK_VALUE)
        m_prev = m_ref[...]
        m_next = jnp.maximum(m_prev, s.max(axis=-1)[:, None])  # [bq, 128]
        p = jnp.where(mask, jnp.exp(s - _lanes(m_next, bk)), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_ref[...] = alpha * l_ref[...] + lax.broadcast_in_dim(p.sum(axis=-1), m_prev.shape, (0,))
        m_ref[...] = m_next
        v = v_ref[...]
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=_F32)
        acc_ref[...] = _lanes(alpha, d) * acc_ref[...] + pv

    @pl.when(j == nk - 1)
    def _finish():
        l = l_ref[...]
        seen = l > 0.0
        l_safe = jnp.where(seen, l, 1.0)
        # Rows that saw no key have acc == 0, so they come out as zeros.
        o_ref[...] = (acc_ref[...] * _lanes(1.0 / l_safe, d)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(seen, m_ref[...] + jnp.log(l_safe), 0.0)


def _id_specs(spec, q_map_col, kv_map_row, bq, bk):
    specs = [pl.BlockSpec((None, bq, _LANES), q_map_col), pl.BlockSpec((None, _SUBLANES, bk), kv_map_row)]
    return specs * (2 if spec.has_branches else 1)


def _forward(qoff, q, k, v, id_arrays, spec, bq, bk, interpret):
    """qoff int32[1]; q[B, Hq, T, D], k/v[B, Hkv, S, D] -> (o like q, lse f32[B, Hq, T])."""
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    group, nq, nk = hq // hkv, t // bq, s // bk

    def kv_j(i, j, qoff_ref):
        lo, hi = common.kv_block_range(qoff_ref[0] + i * bq, bq, bk, nk, spec)
        return _clamp(j, lo, hi)

    q_map = lambda b_, h, i, j, qo: (b_, h, i, 0)
    kv_map = lambda b_, h, i, j, qo: (b_, lax.div(h, group), kv_j(i, j, qo), 0)
    in_specs = [
        pl.BlockSpec((None, None, bq, d), q_map),
        pl.BlockSpec((None, None, bk, d), kv_map),
        pl.BlockSpec((None, None, bk, d), kv_map),
        *_id_specs(spec, lambda b_, h, i, j, qo: (b_, i, 0),
                   lambda b_, h, i, j, qo: (b_, 0, kv_j(i, j, qo)), bq, bk),
    ]
    out_specs = [pl.BlockSpec((None, None, bq, d), q_map),
                 pl.BlockSpec((None, None, bq, _LANES), q_map)]
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, spec=spec, bq=bq, bk=bk, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, hq, nq, nk), in_specs=in_specs, out_specs=out_specs,
            scratch_shapes=[pltpu.VMEM((bq, _LANES), _F32), pltpu.VMEM((bq, _LANES), _F32),
                            pltpu.VMEM((bq, d), _F32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, t, _LANES), _F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
            vmem_limit_bytes=_VMEM_LIMIT),
        interpret=interpret,
        name="mm_flash_fwd",
    )(qoff, q, k, v, *id_arrays["fwd"])
    return o, lse[..., 0]


# ----------------------------------------------------------------------------- backward


def _dq_kernel(qoff_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, spec, bq, bk, nk):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (dq_ref, acc_ref) = refs[:n_ids], refs[n_ids:]
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

    q_first = qoff_ref[0] + i * bq
    lo, hi = common.kv_block_range(q_first, bq, bk, nk, spec)

    @pl.when((j >= lo) & (j < hi))
    def _tile():
        k = k_ref[...]
        s = lax.dot_general(q_ref[...], k, _NT, preferred_element_type=_F32) * spec.scale
        capped = common.soft_cap(s, spec)
        q_pos = q_first + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        br = (id_refs[2], id_refs[3]) if spec.has_branches else None
        q_seg, k_seg, q_br, k_br = _ids_for(((id_refs[0], id_refs[1]), br), bk)
        mask = common.tile_mask(q_pos, k_pos, q_seg, k_seg, q_br, k_br, spec)
        lse = jnp.expand_dims(lse_ref[0], -1)  # [bq, 1]
        delta = jnp.expand_dims(delta_ref[0], -1)
        p = jnp.where(mask, jnp.exp(capped - lse), 0.0)
        do = do_ref[...]
        dp = lax.dot_general(do, v_ref[...], _NT, preferred_element_type=_F32)
        ds = common.soft_cap_grad(p * (dp - delta), capped, spec)
        acc_ref[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=_F32) * spec.scale

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = acc_ref[...].astype(dq_ref.dtype)


def _dkv_kernel(qoff_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, spec, bq, bk, nq, group):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (dk_ref, dv_ref, dk_acc, dv_acc) = refs[:n_ids], refs[n_ids:]
    kj, g, i = pl.program_id(2), pl.program_id(3), pl.program_id(4)

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, _F32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, _F32)

    qoff = qoff_ref[0]
    lo, hi = common.q_block_range(kj * bk, bk, bq, nq, qoff, spec)

    @pl.when((i >= lo) & (i < hi))
    def _tile():
        # Transposed tile [bk, bq] so that dk = ds^T q and dv = p^T do are plain matmuls.
        q, do = q_ref[...], do_ref[...]
        s = lax.dot_general(k_ref[...], q, _NT, preferred_element_type=_F32) * spec.scale
        capped = common.soft_cap(s, spec)
        k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
        q_pos = qoff + i * bq + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
        br = (id_refs[2], id_refs[3]) if spec.has_branches else None
        k_seg, q_seg, k_br, q_br = _ids_for(((id_refs[0], id_refs[1]), br), bq)
        mask = common.tile_mask(q_pos, k_pos, q_seg, k_seg, q_br, k_br, spec)
        p = jnp.where(mask, jnp.exp(capped - lse_ref[...]), 0.0)  # lse block [1, bq]
        dv_acc[...] += jnp.dot(p.astype(do.dtype), do, preferred_element_type=_F32)
        dp = lax.dot_general(v_ref[...], do, _NT, preferred_element_type=_F32)
        ds = common.soft_cap_grad(p * (dp - delta_ref[...]), capped, spec)
        dk_acc[...] += jnp.dot(ds.astype(q.dtype), q, preferred_element_type=_F32) * spec.scale

    @pl.when((g == group - 1) & (i == nq - 1))
    def _finish():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _backward(qoff, q, k, v, id_arrays, o, lse, do, spec, bq, bk, interpret):
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    group, nq, nk = hq // hkv, t // bq, s // bk
    delta = jnp.sum(o.astype(_F32) * do.astype(_F32), axis=-1)[:, :, None, :]  # [B, Hq, 1, T]
    lse = lse[:, :, None, :]
    params = lambda dimension_semantics: pltpu.CompilerParams(
        dimension_semantics=dimension_semantics, vmem_limit_bytes=_VMEM_LIMIT)

    def kv_j(i, j, qo):
        lo, hi = common.kv_block_range(qo[0] + i * bq, bq, bk, nk, spec)
        return _clamp(j, lo, hi)

    q_map = lambda b_, h, i, j, qo: (b_, h, i, 0)
    kv_map = lambda b_, h, i, j, qo: (b_, lax.div(h, group), kv_j(i, j, qo), 0)
    vec_map = lambda b_, h, i, j, qo: (b_, h, 0, i)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, spec=spec, bq=bq, bk=bk, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, hq, nq, nk),
            in_specs=[
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, 1, bq), vec_map),
                pl.BlockSpec((None, None, 1, bq), vec_map),
                *_id_specs(spec, lambda b_, h, i, j, qo: (b_, i, 0),
                           lambda b_, h, i, j, qo: (b_, 0, kv_j(i, j, qo)), bq, bk),
            ],
            out_specs=pl.BlockSpec((None, None, bq, d), q_map),
            scratch_shapes=[pltpu.VMEM((bq, d), _F32)],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params(("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="mm_flash_dq",
    )(qoff, q, k, v, do, lse, delta, *id_arrays["dq"])

    def q_i(kj, i, qo):
        lo, hi = common.q_block_range(kj * bk, bk, bq, nq, qo[0], spec)
        return _clamp(i, lo, hi)

    kvb_map = lambda b_, h, kj, g, i, qo: (b_, h, kj, 0)
    qb_map = lambda b_, h, kj, g, i, qo: (b_, h * group + g, q_i(kj, i, qo), 0)
    vecb_map = lambda b_, h, kj, g, i, qo: (b_, h * group + g, 0, q_i(kj, i, qo))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, spec=spec, bq=bq, bk=bk, nq=nq, group=group),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, hkv, nk, group, nq),
            in_specs=[
                pl.BlockSpec((None, None, bq, d), qb_map),
                pl.BlockSpec((None, None, bk, d), kvb_map),
                pl.BlockSpec((None, None, bk, d), kvb_map),
                pl.BlockSpec((None, None, bq, d), qb_map),
                pl.BlockSpec((None, None, 1, bq), vecb_map),
                pl.BlockSpec((None, None, 1, bq), vecb_map),
                *_id_specs(spec, lambda b_, h, kj, g, i, qo: (b_, kj, 0),
                           lambda b_, h, kj, g, i, qo: (b_, 0, q_i(kj, i, qo)), bk, bq),
            ],
            out_specs=[pl.BlockSpec((None, None, bk, d), kvb_map)] * 2,
            scratch_shapes=[pltpu.VMEM((bk, d), _F32), pltpu.VMEM((bk, d), _F32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params(("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        interpret=interpret,
        name="mm_flash_dkv",
    )(qoff, q, k, v, do, lse, delta, *id_arrays["dkv"])
    return dq, dk, dv


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(qoff, q, k, v, id_arrays, spec, blocks, interpret):
    bq, bk, _, _ = blocks
    return _forward(qoff, q, k, v, id_arrays, spec, bq, bk, interpret)[0]


def _flash_fwd(qoff, q, k, v, id_arrays, spec, blocks, interpret):
    bq, bk, _, _ = blocks
    o, lse = _forward(qoff, q, k, v, id_arrays, spec, bq, bk, interpret)
    return o, (qoff, q, k, v, id_arrays, o, lse)


def _flash_bwd(spec, blocks, interpret, res, do):
    qoff, q, k, v, id_arrays, o, lse = res
    _, _, bq, bk = blocks
    dq, dk, dv = _backward(qoff, q, k, v, id_arrays, o, lse, do, spec, bq, bk, interpret)
    return None, dq, dk, dv, jax.tree.map(lambda _: None, id_arrays)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _tpu_block(n: int, target: int) -> int:
    """Tile along a sequence axis: whole (8-aligned) axis up to 128, else a 128-multiple."""
    return common.round_up(n, _SUBLANES) if n <= _LANES else common.choose_block(n, target, _LANES)


def attention_pallas_tpu(q, k, v, ids: common.Ids, spec: MaskSpec, blocks: common.BlockSizes,
                         interpret: bool = False):
    """q[B, T, Hq, D], k/v[B, S, Hkv, D] -> [B, T, Hq, D] via the Mosaic kernels above."""
    b, t, hq, d = q.shape
    s = k.shape[1]
    bq, bq_b = _tpu_block(t, blocks.block_q), _tpu_block(t, blocks.block_q_bwd)
    # KV tiles are lane-dense (multiples of 128), so short KV is padded up to 128.
    bk, bk_b = (common.choose_block(max(s, _LANES), x, _LANES) for x in (blocks.block_kv, blocks.block_kv_bwd))
    tp, sp = common.round_up(t, max(bq, bq_b)), common.round_up(max(s, _LANES), max(bk, bk_b))
    head_major = lambda x, n: jnp.swapaxes(common.pad_axis(x, 1, n), 1, 2)
    q_seg, kv_seg = common.pad_axis(ids.q_seg, 1, tp), common.pad_axis(ids.kv_seg, 1, sp)
    id_fwd = [_col(q_seg), _row(kv_seg)]
    id_dkv = [_col(kv_seg), _row(q_seg)]
    if spec.has_branches:
        q_br, kv_br = common.pad_axis(ids.q_br, 1, tp), common.pad_axis(ids.kv_br, 1, sp)
        id_fwd += [_col(q_br), _row(kv_br)]
        id_dkv += [_col(kv_br), _row(q_br)]
    id_arrays = {"fwd": id_fwd, "dq": id_fwd, "dkv": id_dkv}
    out = _flash(ids.q_offset.reshape(1), head_major(q, tp), head_major(k, sp), head_major(v, sp),
                 id_arrays, spec, (bq, bk, bq_b, bk_b), interpret)
    return jnp.swapaxes(out, 1, 2)[:, :t]
