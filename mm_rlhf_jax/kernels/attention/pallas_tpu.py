"""Flash attention for TPU in Pallas (Mosaic): block-sparse forward, dq and dkv kernels.

Layout inside the kernels is head-major: q[B, Hq, T, D], k/v[B, Hkv, S, D], so every
block's last two dims are (sequence tile, D). Per-token ids travel in the two
lane/sublane-broadcast layouts TPU kernels use for vectors (as splash attention
does): column form int32[B, N, 128] (a [tile, 128] block, repeated along lanes)
and row form int32[B, 8, N] (a [8, tile] block, row 0 used).

Grids (KV / query-block axes last, "arbitrary", accumulating in VMEM scratch):
  forward  (B, Hq, nq, nk)       online softmax in m/l (lane-broadcast) + acc
  dq       (B, Hq, nq, nk)       dq += ds @ k
  dkv      (B, Hkv, nk, G, nq)   dk/dv summed over the G query heads of a KV head
Which tiles run comes from `block_sparse` metadata (scalar prefetch, SMEM): EMPTY
tiles (padding, other segments / branches, outside the causal / window range) are
skipped and their index maps point at the next tile that is needed, so they cost
no DMA; FULL tiles skip the element mask; PARTIAL tiles apply it.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mm_rlhf_jax.kernels.attention import block_sparse, common
from mm_rlhf_jax.kernels.attention.block_sparse import FULL, PARTIAL
from mm_rlhf_jax.kernels.attention.common import MASK_VALUE, MaskSpec

_F32 = jnp.float32
_LANES, _SUBLANES = 128, 8
_NT = (((1,), (1,)), ((), ()))  # a @ b.T


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


def _entry(meta_ref, b, row, step, n_rows, n_steps):
    """Packed metadata entry of (batch b, tile row, grid step) from the flat SMEM array."""
    return meta_ref[(b * n_rows + row) * n_steps + step]


def _when_visible(kind, body):
    """Runs body(masked) on PARTIAL tiles (masked=True) and FULL tiles (masked=False)."""
    pl.when(kind == PARTIAL)(lambda: body(True))
    pl.when(kind == FULL)(lambda: body(False))


def _cost(spec, b, hq, t, s, d, bq, bk, itemsize, matmuls):
    """pl.CostEstimate of a kernel doing `matmuls` [t, s, d] matmuls per visible tile.

    The visible fraction counts the causal / window range at q_offset 0; segment and
    padding skipping depend on the data, so the estimate is an upper bound there."""
    nq, nk = t // bq, s // bk
    visible = 0
    for i in range(nq):
        for j in range(nk):
            q0, q1, k0, k1 = i * bq, i * bq + bq - 1, j * bk, j * bk + bk - 1
            hidden = (spec.causal and k0 > q1) or (spec.window is not None and q0 - k1 >= spec.window)
            visible += not hidden
    frac = visible / (nq * nk)
    flops = int(2 * matmuls * b * hq * t * s * d * frac)
    # q-side blocks once, k/v-side blocks once per visible query tile.
    bytes_ = int(b * hq * t * d * itemsize * 2 + b * hq * s * d * itemsize * 2 * max(1.0, nq * frac))
    return pl.CostEstimate(flops=flops, transcendentals=int(b * hq * t * s * frac), bytes_accessed=bytes_)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(meta_ref, qoff_ref, q_ref, k_ref, v_ref, *refs, spec: MaskSpec, bq, bk, nq, nk):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = refs[:n_ids], refs[n_ids:]
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    d = acc_ref.shape[-1]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, _F32)
        l_ref[...] = jnp.zeros(l_ref.shape, _F32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

    def tile(masked):
        s = lax.dot_general(q_ref[...], k_ref[...], _NT, preferred_element_type=_F32) * spec.scale
        s = common.soft_cap(s, spec)
        if masked:
            q_pos = qoff_ref[0] + i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
            k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
            br = (id_refs[2], id_refs[3]) if spec.has_branches else None
            q_seg, k_seg, q_br, k_br = _ids_for(((id_refs[0], id_refs[1]), br), bk)
            mask = common.tile_mask(q_pos, k_pos, q_seg, k_seg, q_br, k_br, spec)
            s = jnp.where(mask, s, MASK_VALUE)
        m_prev = m_ref[...]
        m_next = jnp.maximum(m_prev, s.max(axis=-1)[:, None])  # [bq, 128]
        p = jnp.exp(s - _lanes(m_next, bk))
        if masked:  # a fully masked row has s == m_next == MASK_VALUE: exp(0) must not count
            p = jnp.where(mask, p, 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_ref[...] = alpha * l_ref[...] + lax.broadcast_in_dim(p.sum(axis=-1), m_prev.shape, (0,))
        m_ref[...] = m_next
        v = v_ref[...]
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=_F32)
        acc_ref[...] = _lanes(alpha, d) * acc_ref[...] + pv

    _when_visible(block_sparse.kind_of(_entry(meta_ref, b, i, j, nq, nk)), tile)

    @pl.when(j == nk - 1)
    def _finish():
        l = l_ref[...]
        seen = l > 0.0
        l_safe = jnp.where(seen, l, 1.0)
        # Rows that saw no key have acc == 0, so they come out as zeros.
        o_ref[...] = (acc_ref[...] * _lanes(1.0 / l_safe, d)).astype(o_ref.dtype)
        lse = jnp.where(seen, m_ref[...] + jnp.log(l_safe), 0.0)  # [bq, 128], lanes equal
        # Stored as a [1, bq] row (the layout the backward reads): 1/128 of a
        # lane-broadcast f32[B, Hq, T, 128] residual.
        lse_ref[...] = jnp.transpose(lse)[:1, :]


def _id_specs(spec, q_map_col, kv_map_row, bq, bk):
    specs = [pl.BlockSpec((None, bq, _LANES), q_map_col), pl.BlockSpec((None, _SUBLANES, bk), kv_map_row)]
    return specs * (2 if spec.has_branches else 1)


def _forward(meta, qoff, q, k, v, id_arrays, spec, bq, bk, vmem_limit, interpret):
    """meta int32[B*nq*nk], qoff int32[1]; q[B, Hq, T, D], k/v[B, Hkv, S, D] -> (o, lse f32[B, Hq, 1, T])."""
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    group, nq, nk = hq // hkv, t // bq, s // bk
    kv_j = lambda b_, i, j, meta: block_sparse.fetch_of(_entry(meta, b_, i, j, nq, nk))
    q_map = lambda b_, h, i, j, meta, qo: (b_, h, i, 0)
    kv_map = lambda b_, h, i, j, meta, qo: (b_, lax.div(h, group), kv_j(b_, i, j, meta), 0)
    in_specs = [
        pl.BlockSpec((None, None, bq, d), q_map),
        pl.BlockSpec((None, None, bk, d), kv_map),
        pl.BlockSpec((None, None, bk, d), kv_map),
        *_id_specs(spec, lambda b_, h, i, j, meta, qo: (b_, i, 0),
                   lambda b_, h, i, j, meta, qo: (b_, 0, kv_j(b_, i, j, meta)), bq, bk),
    ]
    out_specs = [pl.BlockSpec((None, None, bq, d), q_map),
                 pl.BlockSpec((None, None, 1, bq), lambda b_, h, i, j, meta, qo: (b_, h, 0, i))]
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, spec=spec, bq=bq, bk=bk, nq=nq, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(b, hq, nq, nk), in_specs=in_specs, out_specs=out_specs,
            scratch_shapes=[pltpu.VMEM((bq, _LANES), _F32), pltpu.VMEM((bq, _LANES), _F32),
                            pltpu.VMEM((bq, d), _F32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, 1, t), _F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
            vmem_limit_bytes=vmem_limit),
        cost_estimate=_cost(spec, b, hq, t, s, d, bq, bk, q.dtype.itemsize, matmuls=2),
        interpret=interpret,
        name="mm_flash_fwd",
    )(meta, qoff, q, k, v, *id_arrays["fwd"])
    return o, lse


# ----------------------------------------------------------------------------- backward


def _dq_kernel(meta_ref, qoff_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, spec, bq, bk, nq,
               nk):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (dq_ref, acc_ref) = refs[:n_ids], refs[n_ids:]
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

    def tile(masked):
        k = k_ref[...]
        s = lax.dot_general(q_ref[...], k, _NT, preferred_element_type=_F32) * spec.scale
        capped = common.soft_cap(s, spec)
        lse = jnp.expand_dims(lse_ref[0], -1)  # [bq, 1]
        delta = jnp.expand_dims(delta_ref[0], -1)
        p = jnp.exp(capped - lse)
        if masked:
            q_pos = qoff_ref[0] + i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
            k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
            br = (id_refs[2], id_refs[3]) if spec.has_branches else None
            q_seg, k_seg, q_br, k_br = _ids_for(((id_refs[0], id_refs[1]), br), bk)
            p = jnp.where(common.tile_mask(q_pos, k_pos, q_seg, k_seg, q_br, k_br, spec), p, 0.0)
        dp = lax.dot_general(do_ref[...], v_ref[...], _NT, preferred_element_type=_F32)
        ds = common.soft_cap_grad(p * (dp - delta), capped, spec)
        acc_ref[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=_F32) * spec.scale

    _when_visible(block_sparse.kind_of(_entry(meta_ref, b, i, j, nq, nk)), tile)

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = acc_ref[...].astype(dq_ref.dtype)


def _dkv_kernel(meta_ref, qoff_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, spec, bq, bk, nq,
                nk, group):
    n_ids = 4 if spec.has_branches else 2
    id_refs, (dk_ref, dv_ref, dk_acc, dv_acc) = refs[:n_ids], refs[n_ids:]
    b, kj, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, _F32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, _F32)

    def tile(masked):
        # Transposed tile [bk, bq] so that dk = ds^T q and dv = p^T do are plain matmuls.
        q, do = q_ref[...], do_ref[...]
        s = lax.dot_general(k_ref[...], q, _NT, preferred_element_type=_F32) * spec.scale
        capped = common.soft_cap(s, spec)
        p = jnp.exp(capped - lse_ref[...])  # lse block [1, bq]
        if masked:
            k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
            q_pos = qoff_ref[0] + i * bq + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
            br = (id_refs[2], id_refs[3]) if spec.has_branches else None
            k_seg, q_seg, k_br, q_br = _ids_for(((id_refs[0], id_refs[1]), br), bq)
            p = jnp.where(common.tile_mask(q_pos, k_pos, q_seg, k_seg, q_br, k_br, spec), p, 0.0)
        dv_acc[...] += jnp.dot(p.astype(do.dtype), do, preferred_element_type=_F32)
        dp = lax.dot_general(v_ref[...], do, _NT, preferred_element_type=_F32)
        ds = common.soft_cap_grad(p * (dp - delta_ref[...]), capped, spec)
        dk_acc[...] += jnp.dot(ds.astype(q.dtype), q, preferred_element_type=_F32) * spec.scale

    _when_visible(block_sparse.kind_of(_entry(meta_ref, b, kj, i, nk, nq)), tile)

    @pl.when((g == group - 1) & (i == nq - 1))
    def _finish():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _backward(meta_q, meta_kv, qoff, q, k, v, id_arrays, o, lse, do, spec, bq, bk, vmem_limit, interpret):
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    group, nq, nk = hq // hkv, t // bq, s // bk
    delta = jnp.sum(o.astype(_F32) * do.astype(_F32), axis=-1)[:, :, None, :]  # [B, Hq, 1, T], like lse
    params = lambda dimension_semantics: pltpu.CompilerParams(
        dimension_semantics=dimension_semantics, vmem_limit_bytes=vmem_limit)

    kv_j = lambda b_, i, j, meta: block_sparse.fetch_of(_entry(meta, b_, i, j, nq, nk))
    q_map = lambda b_, h, i, j, meta, qo: (b_, h, i, 0)
    kv_map = lambda b_, h, i, j, meta, qo: (b_, lax.div(h, group), kv_j(b_, i, j, meta), 0)
    vec_map = lambda b_, h, i, j, meta, qo: (b_, h, 0, i)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, spec=spec, bq=bq, bk=bk, nq=nq, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(b, hq, nq, nk),
            in_specs=[
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, 1, bq), vec_map),
                pl.BlockSpec((None, None, 1, bq), vec_map),
                *_id_specs(spec, lambda b_, h, i, j, meta, qo: (b_, i, 0),
                           lambda b_, h, i, j, meta, qo: (b_, 0, kv_j(b_, i, j, meta)), bq, bk),
            ],
            out_specs=pl.BlockSpec((None, None, bq, d), q_map),
            scratch_shapes=[pltpu.VMEM((bq, d), _F32)],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params(("parallel", "parallel", "parallel", "arbitrary")),
        cost_estimate=_cost(spec, b, hq, t, s, d, bq, bk, q.dtype.itemsize, matmuls=3),
        interpret=interpret,
        name="mm_flash_dq",
    )(meta_q, qoff, q, k, v, do, lse, delta, *id_arrays["dq"])

    q_i = lambda b_, kj, i, meta: block_sparse.fetch_of(_entry(meta, b_, kj, i, nk, nq))
    kvb_map = lambda b_, h, kj, g, i, meta, qo: (b_, h, kj, 0)
    qb_map = lambda b_, h, kj, g, i, meta, qo: (b_, h * group + g, q_i(b_, kj, i, meta), 0)
    vecb_map = lambda b_, h, kj, g, i, meta, qo: (b_, h * group + g, 0, q_i(b_, kj, i, meta))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, spec=spec, bq=bq, bk=bk, nq=nq, nk=nk, group=group),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(b, hkv, nk, group, nq),
            in_specs=[
                pl.BlockSpec((None, None, bq, d), qb_map),
                pl.BlockSpec((None, None, bk, d), kvb_map),
                pl.BlockSpec((None, None, bk, d), kvb_map),
                pl.BlockSpec((None, None, bq, d), qb_map),
                pl.BlockSpec((None, None, 1, bq), vecb_map),
                pl.BlockSpec((None, None, 1, bq), vecb_map),
                *_id_specs(spec, lambda b_, h, kj, g, i, meta, qo: (b_, kj, 0),
                           lambda b_, h, kj, g, i, meta, qo: (b_, 0, q_i(b_, kj, i, meta)), bk, bq),
            ],
            out_specs=[pl.BlockSpec((None, None, bk, d), kvb_map)] * 2,
            scratch_shapes=[pltpu.VMEM((bk, d), _F32), pltpu.VMEM((bk, d), _F32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params(("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        cost_estimate=_cost(spec, b, hq, t, s, d, bq, bk, q.dtype.itemsize, matmuls=4),
        interpret=interpret,
        name="mm_flash_dkv",
    )(meta_kv, qoff, q, k, v, do, lse, delta, *id_arrays["dkv"])
    return dq, dk, dv


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _flash(metas, qoff, q, k, v, id_arrays, spec, cfg, interpret):
    return _forward(metas["fwd"], qoff, q, k, v, id_arrays, spec, *cfg[0], cfg[2], interpret)[0]


def _flash_fwd(metas, qoff, q, k, v, id_arrays, spec, cfg, interpret):
    o, lse = _forward(metas["fwd"], qoff, q, k, v, id_arrays, spec, *cfg[0], cfg[2], interpret)
    return o, (metas, qoff, q, k, v, id_arrays, o, lse)


def _flash_bwd(spec, cfg, interpret, res, do):
    metas, qoff, q, k, v, id_arrays, o, lse = res
    dq, dk, dv = _backward(metas["dq"], metas["dkv"], qoff, q, k, v, id_arrays, o, lse, do, spec, *cfg[1],
                           cfg[2], interpret)
    none = lambda tree: jax.tree.map(lambda _: None, tree)
    return none(metas), None, dq, dk, dv, none(id_arrays)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- entry point


def _tile(n: int, target: int, name: str, *, short_base: int) -> int:
    """Tile along a sequence axis of length n.

    Up to 128 tokens: one tile of n rounded up to `short_base` (8 for queries, 128
    for keys, whose tiles are lanes). Longer: a multiple of 128 at most `target`
    (halved, in 128 steps, while that avoids padding n by more than n/8). Other
    targets are an error: a tile that is not a lane multiple has no legal layout.
    """
    if n <= _LANES:
        return common.round_up(n, short_base)
    if target < _LANES or target % _LANES:
        raise ValueError(f"attention pallas_tpu: {name}={target} must be a multiple of 128 "
                         f"(sequence length {n} > 128 needs several lane-dense tiles)")
    if n <= target:
        return common.round_up(n, _LANES)
    floor = common.round_up(n, _LANES)
    b = target
    while b > _LANES:
        if common.round_up(n, b) - floor <= n // 8:
            return b
        b = max(_LANES, (b // 2) // _LANES * _LANES)
    return _LANES


def attention_pallas_tpu(q, k, v, ids: common.Ids, spec: MaskSpec, blocks: common.BlockSizes,
                         interpret: bool = False, *, vmem_limit: int = 48 * 2**20, block_sparse_tiles: bool = True):
    """q[B, T, Hq, D], k/v[B, S, Hkv, D] -> [B, T, Hq, D] via the Mosaic kernels above.

    block_sparse_tiles=False marks every tile PARTIAL (dense masked compute: the
    reference the block-sparse path is tested against)."""
    b, t, hq, d = q.shape
    s = k.shape[1]
    bq, bq_b = (_tile(t, x, n, short_base=_SUBLANES) for x, n in ((blocks.block_q, "block_q"),
                                                                 (blocks.block_q_bwd, "block_q_bwd")))
    bk, bk_b = (_tile(s, x, n, short_base=_LANES) for x, n in ((blocks.block_kv, "block_kv"),
                                                               (blocks.block_kv_bwd, "block_kv_bwd")))
    # Padded lengths every tile divides (lcm: e.g. 384 / 512 tiles pad to 1536); the
    # padding is segment 0, whose tiles the metadata skips.
    tp, sp = common.round_up(t, math.lcm(bq, bq_b)), common.round_up(s, math.lcm(bk, bk_b))
    head_major = lambda x, n: jnp.swapaxes(common.pad_axis(x, 1, n), 1, 2)
    q_seg, kv_seg = common.pad_axis(ids.q_seg, 1, tp), common.pad_axis(ids.kv_seg, 1, sp)
    q_br = kv_br = None
    id_fwd = [_col(q_seg), _row(kv_seg)]
    id_dkv = [_col(kv_seg), _row(q_seg)]
    if spec.has_branches:
        q_br, kv_br = common.pad_axis(ids.q_br, 1, tp), common.pad_axis(ids.kv_br, 1, sp)
        id_fwd += [_col(q_br), _row(kv_br)]
        id_dkv += [_col(kv_br), _row(q_br)]
    id_arrays = {"fwd": id_fwd, "dq": id_fwd, "dkv": id_dkv}

    def kinds(tq, tk):
        kinds = block_sparse.tile_kinds(q_seg, kv_seg, q_br, kv_br, ids.q_offset, spec, tq, tk)
        return kinds if block_sparse_tiles else jnp.full_like(kinds, PARTIAL)

    fwd_kinds = kinds(bq, bk)
    bwd_kinds = fwd_kinds if (bq, bk) == (bq_b, bk_b) else kinds(bq_b, bk_b)
    metas = {"fwd": block_sparse.pack(fwd_kinds), "dq": block_sparse.pack(bwd_kinds),
             "dkv": block_sparse.pack(jnp.swapaxes(bwd_kinds, 1, 2))}
    out = _flash(metas, ids.q_offset.reshape(1), head_major(q, tp), head_major(k, sp), head_major(v, sp),
                 id_arrays, spec, ((bq, bk), (bq_b, bk_b), vmem_limit), interpret)
    return jnp.swapaxes(out, 1, 2)[:, :t]
