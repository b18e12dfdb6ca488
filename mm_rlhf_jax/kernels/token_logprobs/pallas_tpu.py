"""Token log-probs for TPU in Pallas (Mosaic): forward-statistics, dh and dw kernels.

These are single-device kernels over one (token shard, vocab shard); `sharded.py`
combines shards and holds the custom_vjp. Nothing is padded or copied in HBM: the
last token / vocab tile may be ragged (Pallas hands out whole blocks whose
out-of-range part holds unspecified values), and the kernels mask it, so W[H, V]
enters exactly as given. W tiles are cast to the compute dtype (hidden's) in VMEM,
so an f32 master weight feeds a bf16 MXU matmul without a bf16 copy in HBM.

Forward, grid (N/bn, V/bv, H/bh), V and H "arbitrary": the logits tile f32[bn, bv]
accumulates over H tiles in VMEM; then an online logsumexp over vocab sub-tiles
keeps max m, sum l, target logit t and sum(p z) per token (lane-broadcast [bn, 128]
scratch). The output is those four *unnormalised* statistics of the local vocab,
packed in lanes 0..3 of f32[N, 128], so vocab shards can be merged outside.

Backward, two kernels that each recompute the logits tile (2 H-phases per step of
the last grid axis: phase 0 accumulates logits over H tiles, phase 1 walks the H
tiles again to apply dz = d loss / d logits):
  dh  grid (N/bn, V/bv, 2H/bh): dh[n, h] += dz @ w[h, v]^T   (f32 [H/bh, bn, bh] scratch)
  dw  grid (V/bv, N/bn, 2H/bh): dw[h, v] += h[n, h]^T @ dz   (f32 [H/bh, bh, bv] scratch)
Each writes its output one (bn, bh) / (bh, bv) block at a time in the last phase
(index maps stay on block 0 until then, so nothing unfinished is written back), dw
directly in [H, V] layout. dh and dw have their own tiles: dh's accumulator grows
with bn, dw's with bv.
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
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
# Lanes of the packed per-token rows.
M, L, T, SZ = 0, 1, 2, 3  # forward output: max, sum exp, target logit, sum p*z (local vocab)
LSE, ENT, G, GE = 0, 1, 2, 3  # backward input: logsumexp, entropy, cotangents of logp and entropy


def _lanes(x, width):
    """[rows, 128] lane-broadcast vector -> [rows, width]."""
    reps = -(-width // _LANES)
    x = x if reps == 1 else jnp.tile(x, (1, reps))
    return x if x.shape[1] == width else x[:, :width]


def _lane(rows, k):
    """Lane k of a packed [rows, 128] tile as a [rows, 1] column (a masked lane sum:
    a reduction every Mosaic version lowers)."""
    lane = lax.broadcasted_iota(jnp.int32, rows.shape, 1)
    return jnp.sum(jnp.where(lane == k, rows, 0.0), axis=1, keepdims=True)


def pack_rows(*cols):
    """Up to 4 f32[N] vectors -> f32[N, 128] with vector k in lane k."""
    n = cols[0].shape[0]
    lane = lax.broadcasted_iota(jnp.int32, (n, _LANES), 1)
    out = jnp.zeros((n, _LANES), _F32)
    for k, c in enumerate(cols):
        out = jnp.where(lane == k, c.astype(_F32)[:, None], out)
    return out


def label_rows(labels):
    """int32[N] -> int32[N, 128] lane-broadcast (a [bn, 128] block per token tile)."""
    return jnp.broadcast_to(labels[:, None], (labels.shape[0], _LANES))


def _sub_tiles(bv):
    """Static lane ranges over which a [bn, bv] logits tile is post-processed: small
    sub-tiles keep the f32 elementwise temporaries (z, p, iotas) small in VMEM."""
    sub = min(bv, 512)
    return [(c, min(sub, bv - c)) for c in range(0, bv, sub)]


def _w_tile(w_ref, dtype, v, bv, vocab):
    """The W tile in the compute dtype; columns past V (ragged last tile) zeroed so
    that their unspecified contents cannot reach a product that is summed over V."""
    w = w_ref[...].astype(dtype)
    if vocab % bv:
        col = v * bv + lax.broadcasted_iota(jnp.int32, w.shape, 1)
        w = jnp.where(col < vocab, w, jnp.zeros((), dtype))
    return w


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(h_ref, w_ref, lab_ref, out_ref, acc, m_sc, l_sc, t_sc, sz_sc, *, inv_temp, vocab, bv, nv,
                nh, with_entropy):
    v, k = pl.program_id(1), pl.program_id(2)

    @pl.when((v == 0) & (k == 0))
    def _init_row():
        m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, _F32)
        for ref in (l_sc, t_sc, sz_sc):
            ref[...] = jnp.zeros(ref.shape, _F32)

    @pl.when(k == 0)
    def _init_tile():
        acc[...] = jnp.zeros(acc.shape, _F32)

    h = h_ref[...]
    # Ragged vocab columns of the last tile only produce logits that are masked below.
    acc[...] += jnp.dot(h, w_ref[...].astype(h.dtype), preferred_element_type=_F32)

    @pl.when(k == nh - 1)
    def _update():
        bn = acc.shape[0]
        for c0, width in _sub_tiles(bv):
            col = v * bv + c0 + lax.broadcasted_iota(jnp.int32, (bn, width), 1)
            valid = col < vocab
            z = jnp.where(valid, acc[:, c0:c0 + width] * inv_temp, MASK_VALUE)
            # Labels of other vocab shards may fall on this shard's ragged columns.
            hit = valid & (col == _lanes(lab_ref[...], width))
            t_sc[...] += lax.broadcast_in_dim(jnp.where(hit, z, 0.0).sum(-1), t_sc.shape, (0,))
            m_prev = m_sc[...]
            m_next = jnp.maximum(m_prev, z.max(-1)[:, None])
            p = jnp.exp(z - _lanes(m_next, width))
            alpha = jnp.exp(m_prev - m_next)
            l_sc[...] = alpha * l_sc[...] + lax.broadcast_in_dim(p.sum(-1), m_prev.shape, (0,))
            if with_entropy:
                pz = jnp.where(valid, p * z, 0.0).sum(-1)
                sz_sc[...] = alpha * sz_sc[...] + lax.broadcast_in_dim(pz, m_prev.shape, (0,))
            m_sc[...] = m_next

        @pl.when(v == nv - 1)
        def _finish():
            lane = lax.broadcasted_iota(jnp.int32, out_ref.shape, 1)
            out = jnp.where(lane == M, m_sc[...], jnp.where(lane == L, l_sc[...], 0.0))
            out_ref[...] = jnp.where(lane == T, t_sc[...], jnp.where(lane == SZ, sz_sc[...], out))


def forward_stats(h, w, labels, *, inv_temp: float, with_entropy: bool, tiles, vmem_limit: int, interpret):
    """h[N, H], w[H, V], labels int32[N] (ids of this vocab shard; others never match)
    -> f32[N, 128]: lanes M, L, T, SZ = max, sum exp(z - max), target logit, sum p z
    over this shard's vocabulary (p unnormalised, relative to max)."""
    n, hid = h.shape
    vocab = w.shape[1]
    bn, bv, bh = tiles
    nn_, nv, nh = pl.cdiv(n, bn), pl.cdiv(vocab, bv), hid // bh
    row = pl.BlockSpec((bn, _LANES), lambda i, v, k: (i, 0))
    cost = pl.CostEstimate(
        flops=2 * n * hid * vocab, transcendentals=n * vocab,
        bytes_accessed=h.size * h.dtype.itemsize * nv + w.size * w.dtype.itemsize * nn_ + 2 * n * _LANES * 4)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, inv_temp=inv_temp, vocab=vocab, bv=bv, nv=nv, nh=nh,
                          with_entropy=with_entropy),
        grid=(nn_, nv, nh),
        in_specs=[pl.BlockSpec((bn, bh), lambda i, v, k: (i, k)),
                  pl.BlockSpec((bh, bv), lambda i, v, k: (k, v)), row],
        out_specs=row,
        out_shape=jax.ShapeDtypeStruct((n, _LANES), _F32),
        scratch_shapes=[pltpu.VMEM((bn, bv), _F32)] + [pltpu.VMEM((bn, _LANES), _F32)] * 4,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary"), vmem_limit_bytes=vmem_limit),
        cost_estimate=cost,
        interpret=interpret,
        name="mm_token_logprobs_fwd",
    )(h, w, label_rows(labels))


# ----------------------------------------------------------------------------- backward


def _make_dz(acc, dz_sc, lab_ref, rows_ref, v, *, inv_temp, vocab, bv, with_entropy, row0=None, n=None):
    """dz of a finished logits tile into dz_sc (compute dtype), sub-tile by sub-tile.

    row0/n: zero the rows of a ragged last token tile (their statistics are unspecified)."""
    bn = acc.shape[0]
    rows = rows_ref[...]
    stats = [_lane(rows, k) for k in (LSE, ENT, G, GE)]  # each [bn, 1]
    for c0, width in _sub_tiles(bv):
        col = v * bv + c0 + lax.broadcasted_iota(jnp.int32, (bn, width), 1)
        z = common.mask_vocab(acc[:, c0:c0 + width] * inv_temp, col, vocab)
        onehot = (col < vocab) & (col == _lanes(lab_ref[...], width))
        dz = common.dz_tile(z, onehot, *stats, inv_temp, with_entropy)
        if n is not None:
            token = row0 + lax.broadcasted_iota(jnp.int32, (bn, width), 0)
            dz = jnp.where(token < n, dz, 0.0)
        dz_sc[:, c0:c0 + width] = dz.astype(dz_sc.dtype)


def _dh_kernel(h_ref, w_ref, lab_ref, rows_ref, dh_ref, acc, dz_sc, dh_acc, *, nh, nv, bv, vocab, **kw):
    v, k = pl.program_id(1), pl.program_id(2)

    @pl.when((v == 0) & (k == 0))
    def _init_row():
        dh_acc[...] = jnp.zeros(dh_acc.shape, _F32)

    @pl.when(k == 0)
    def _init_tile():
        acc[...] = jnp.zeros(acc.shape, _F32)

    @pl.when(k < nh)
    def _logits():
        h = h_ref[...]
        acc[...] += jnp.dot(h, w_ref[...].astype(h.dtype), preferred_element_type=_F32)

    @pl.when(k == nh - 1)
    def _dz():
        _make_dz(acc, dz_sc, lab_ref, rows_ref, v, vocab=vocab, bv=bv, **kw)

    @pl.when(k >= nh)
    def _use_dz():
        w = _w_tile(w_ref, dz_sc.dtype, v, bv, vocab)
        dh_acc[k - nh] += lax.dot_general(dz_sc[...], w, _NT, preferred_element_type=_F32)

        @pl.when(v == nv - 1)
        def _store():
            dh_ref[...] = dh_acc[k - nh].astype(dh_ref.dtype)


def _dw_kernel(h_ref, w_ref, lab_ref, rows_ref, dw_ref, acc, dz_sc, dw_acc, *, nh, nn_, bn, n, bv, vocab,
               **kw):
    v, i, k = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    ragged = n % bn != 0

    @pl.when((i == 0) & (k == 0))
    def _init_col():
        dw_acc[...] = jnp.zeros(dw_acc.shape, _F32)

    @pl.when(k == 0)
    def _init_tile():
        acc[...] = jnp.zeros(acc.shape, _F32)

    @pl.when(k < nh)
    def _logits():
        h = h_ref[...]
        acc[...] += jnp.dot(h, w_ref[...].astype(h.dtype), preferred_element_type=_F32)

    @pl.when(k == nh - 1)
    def _dz():
        _make_dz(acc, dz_sc, lab_ref, rows_ref, v, vocab=vocab, bv=bv, row0=i * bn if ragged else None,
                 n=n if ragged else None, **kw)

    @pl.when(k >= nh)
    def _use_dz():
        h = h_ref[...]
        if ragged:  # rows past N hold unspecified values; dz is zero there, h must be too
            token = i * bn + lax.broadcasted_iota(jnp.int32, h.shape, 0)
            h = jnp.where(token < n, h, jnp.zeros((), h.dtype))
        dw_acc[k - nh] += lax.dot_general(h.astype(dz_sc.dtype), dz_sc[...], _TN, preferred_element_type=_F32)

        @pl.when(i == nn_ - 1)
        def _store():
            dw_ref[...] = dw_acc[k - nh].astype(dw_ref.dtype)


def backward(h, w, labels, rows, *, inv_temp: float, with_entropy: bool, dh_tiles, dw_tiles, bh: int,
             vmem_limit: int, interpret, dh_dtype=None, dw_dtype=None):
    """rows f32[N, 128] (lanes LSE, ENT, G, GE) -> (dh [N, H] in dh_dtype, dw [H, V] in dw_dtype).

    Defaults: dh in h.dtype, dw in w.dtype; f32 when the caller sums shards."""
    n, hid = h.shape
    vocab = w.shape[1]
    nh = hid // bh
    cdt = h.dtype  # compute dtype of the matmuls
    dh_dtype, dw_dtype = dh_dtype or h.dtype, dw_dtype or w.dtype
    kw = dict(inv_temp=inv_temp, vocab=vocab, with_entropy=with_entropy, nh=nh)
    hk = lambda k: jnp.where(k < nh, k, k - nh)  # H tile of either phase
    lab = label_rows(labels)
    hb, wb = h.size * h.dtype.itemsize, w.size * w.dtype.itemsize
    params = lambda sem: pltpu.CompilerParams(dimension_semantics=sem, vmem_limit_bytes=vmem_limit)

    bn, bv = dh_tiles
    nn_, nv = pl.cdiv(n, bn), pl.cdiv(vocab, bv)
    last_v = lambda v, k: jnp.where((v == nv - 1) & (k >= nh), k - nh, 0)
    dh = pl.pallas_call(
        functools.partial(_dh_kernel, nv=nv, bv=bv, **kw),
        grid=(nn_, nv, 2 * nh),
        # h stays on its last tile during phase 1 (no refetch); w is walked twice.
        in_specs=[pl.BlockSpec((bn, bh), lambda i, v, k: (i, jnp.minimum(k, nh - 1))),
                  pl.BlockSpec((bh, bv), lambda i, v, k: (hk(k), v)),
                  pl.BlockSpec((bn, _LANES), lambda i, v, k: (i, 0)),
                  pl.BlockSpec((bn, _LANES), lambda i, v, k: (i, 0))],
        out_specs=pl.BlockSpec((bn, bh), lambda i, v, k: (i, last_v(v, k))),
        out_shape=jax.ShapeDtypeStruct((n, hid), dh_dtype),
        scratch_shapes=[pltpu.VMEM((bn, bv), _F32), pltpu.VMEM((bn, bv), cdt), pltpu.VMEM((nh, bn, bh), _F32)],
        compiler_params=params(("parallel", "arbitrary", "arbitrary")),
        cost_estimate=pl.CostEstimate(flops=4 * n * hid * vocab, transcendentals=n * vocab,
                                      bytes_accessed=hb * nv + 2 * wb * nn_ + n * hid * 4),
        interpret=interpret, name="mm_token_logprobs_dh",
    )(h, w, lab, rows)

    bn, bv = dw_tiles
    nn_, nv = pl.cdiv(n, bn), pl.cdiv(vocab, bv)
    last_i = lambda i, k: jnp.where((i == nn_ - 1) & (k >= nh), k - nh, 0)
    dw = pl.pallas_call(
        functools.partial(_dw_kernel, nn_=nn_, bn=bn, n=n, bv=bv, **kw),
        grid=(nv, nn_, 2 * nh),
        # w stays on its last tile during phase 1; h is walked twice.
        in_specs=[pl.BlockSpec((bn, bh), lambda v, i, k: (i, hk(k))),
                  pl.BlockSpec((bh, bv), lambda v, i, k: (jnp.minimum(k, nh - 1), v)),
                  pl.BlockSpec((bn, _LANES), lambda v, i, k: (i, 0)),
                  pl.BlockSpec((bn, _LANES), lambda v, i, k: (i, 0))],
        out_specs=pl.BlockSpec((bh, bv), lambda v, i, k: (last_i(i, k), v)),
        out_shape=jax.ShapeDtypeStruct((hid, vocab), dw_dtype),
        scratch_shapes=[pltpu.VMEM((bn, bv), _F32), pltpu.VMEM((bn, bv), cdt), pltpu.VMEM((nh, bh, bv), _F32)],
        compiler_params=params(("parallel", "arbitrary", "arbitrary")),
        cost_estimate=pl.CostEstimate(flops=4 * n * hid * vocab, transcendentals=n * vocab,
                                      bytes_accessed=2 * hb * nv + wb * nn_ + hid * vocab * 4),
        interpret=interpret, name="mm_token_logprobs_dw",
    )(h, w, lab, rows)
    return dh, dw


# ----------------------------------------------------------------------------- tiles


def hidden_tile(hid: int, target: int) -> int:
    """H tile: the largest multiple of 128 <= target dividing H (H tiles cannot be
    ragged: both operands would carry unspecified values into every logit); H itself
    when H is not a multiple of 128 (a full-dimension block is always legal)."""
    if hid % _LANES or hid <= target:
        return hid
    for b in range(target - target % _LANES, 0, -_LANES):
        if hid % b == 0:
            return b
    return hid


def token_tile(n: int, target: int) -> int:
    """Token tile: a multiple of 8 sublanes, at most target, no larger than N needs."""
    if target % 8:
        raise ValueError(f"token_logprobs pallas_tpu: token tiles must be multiples of 8, got {target}")
    return min(target, common.round_up(n, 8))


def vocab_tile(vocab: int, target: int) -> int:
    """Vocab tile: a multiple of 128 lanes, at most target, no larger than V needs."""
    if target % _LANES:
        raise ValueError(f"token_logprobs pallas_tpu: vocab tiles must be multiples of 128, got {target}")
    return min(target, common.round_up(vocab, _LANES))


def fit_tile(tile: int, bytes_per_unit: int, budget: int, base: int) -> int:
    """tile halved (not below base) until tile * bytes_per_unit fits the budget."""
    while tile > base and tile * bytes_per_unit > budget:
        tile = max(base, tile // 2)
    return tile
