"""Block-sparse TPU attention: tile metadata against the element mask, block-sparse ==
dense-masked == reference (values and gradients), skipped tiles are never read, any
128-multiple tile size works (also mixed forward / backward), others are an error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.kernels import attention
from mm_rlhf_jax.kernels.attention import block_sparse, common, reference
from mm_rlhf_jax.kernels.attention.block_sparse import EMPTY, FULL, PARTIAL
from mm_rlhf_jax.kernels.attention.pallas_tpu import attention_pallas_tpu

from .helpers import assert_close, dpo_like_loss, qkv

F32 = jnp.float32


def _spec(causal=True, window=None, branches=False):
    return common.MaskSpec(causal=causal, window=window, soft_cap=None, scale=1.0, has_branches=branches)


def _kinds(seg, br=None, *, tile, q_offset=0, **kw):
    seg = jnp.asarray(seg, jnp.int32)[None]
    br = None if br is None else jnp.asarray(br, jnp.int32)[None]
    spec = _spec(branches=br is not None, **kw)
    return np.asarray(block_sparse.tile_kinds(seg, seg, br, br, jnp.int32(q_offset), spec, tile, tile)[0])


def test_tile_kinds_hand_computed():
    # Tiles of 2 tokens over segments 1 1 | 1 2 | 2 2 | 0 0 (causal).
    assert _kinds([1, 1, 1, 2, 2, 2, 0, 0], tile=2).tolist() == [
        [PARTIAL, EMPTY, EMPTY, EMPTY],   # diagonal; keys after the queries
        [PARTIAL, PARTIAL, EMPTY, EMPTY],  # queries of segments 1 and 2 against segment-1 keys
        [EMPTY, PARTIAL, PARTIAL, EMPTY],  # segment 2 cannot see segment 1
        [EMPTY, EMPTY, EMPTY, EMPTY],      # padding sees nothing
    ]
    # One segment per tile pair below the diagonal: FULL.
    assert _kinds([1, 1, 1, 1, 2, 2, 2, 2], tile=2)[1, 0] == FULL
    # Shared prompt (branch 0) then branches 1 and 2 of one segment: branch 2's queries
    # see the prompt tiles fully and skip branch 1's tiles.
    br = [0, 0, 0, 0, 1, 1, 2, 2]
    kinds = _kinds([1] * 8, br, tile=2)
    assert kinds[3, 0] == FULL and kinds[3, 1] == FULL and kinds[3, 2] == EMPTY and kinds[3, 3] == PARTIAL
    # Sliding window of 3 over one segment: far tiles EMPTY, none FULL (i - j spans 3 per tile pair).
    kinds = _kinds([1] * 8, tile=2, window=3)
    assert kinds[3, 0] == EMPTY and kinds[3, 1] == EMPTY and kinds[3, 2] == PARTIAL


def test_fetch_index_points_empty_steps_at_the_next_needed_tile():
    kinds = jnp.asarray([[[EMPTY, PARTIAL, EMPTY, EMPTY, FULL, EMPTY], [EMPTY] * 6]], jnp.int32)
    packed = np.asarray(block_sparse.pack(kinds)).reshape(2, 6)
    assert (packed[0] // 4).tolist() == [1, 1, 4, 4, 4, 4]  # next needed, else the previous one
    assert (packed[0] % 4).tolist() == kinds[0, 0].tolist()
    assert (packed[1] // 4).tolist() == [0] * 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tile_kinds_agree_with_the_element_mask(seed):
    """Always conservative: EMPTY only if the element mask's tile is all False, FULL
    only if all True (also for shuffled ids and windows). Exact for packed segments
    with padding under a causal or no mask; with prompt / chosen / rejected branches
    at least the tiles each rule decides alone (checked: most of the empty ones)."""
    rng = np.random.default_rng(seed)
    t, tile = 96, 8
    seg, br = np.zeros(t, np.int32), np.zeros(t, np.int32)
    pos, s = 0, 1
    while pos < t - 20:
        prompt, chosen, rejected = rng.integers(4, 17, 3)
        for b, n in ((0, prompt), (1, chosen), (2, rejected)):
            seg[pos:pos + n], br[pos:pos + n] = s, b
            pos += n
        s += 1
    offset = int(rng.integers(0, 3)) * 8
    cases = [((seg, None), "exact"), ((seg, br), "most"), ((rng.permutation(seg), rng.permutation(br)), None)]
    for (q_seg, q_br), exact in cases:
        for kw in (dict(), dict(window=19), dict(causal=False)):
            off = offset if kw.get("causal", True) else 0
            kinds = _kinds(q_seg, q_br, tile=tile, q_offset=off, **kw)
            mask = np.asarray(reference.attention_mask(
                t, t, segment_ids=jnp.asarray(q_seg)[None], causal=kw.get("causal", True), q_offset=off,
                branch_ids=None if q_br is None else jnp.asarray(q_br)[None], sliding_window=kw.get("window"))[0])
            tiles = mask.reshape(t // tile, tile, t // tile, tile).transpose(0, 2, 1, 3)
            none, every = ~tiles.any((2, 3)), tiles.all((2, 3))
            assert not (kinds == EMPTY)[~none].any() and not (kinds == FULL)[~every].any()
            if exact == "exact" and "window" not in kw:
                assert ((kinds == EMPTY) == none).all() and ((kinds == FULL) == every).all(), kw
                assert (kinds == EMPTY).any() and (kinds == FULL).any()
            if exact == "most" and "window" not in kw:
                assert (kinds == EMPTY).sum() >= 0.75 * none.sum() and (kinds == FULL).sum() >= 0.75 * every.sum()


def _packed_pairs(b, t, lengths):
    """Shared-prompt packed rows: per row, pairs of (prompt, chosen, rejected) lengths, then padding."""
    seg, br = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
    for row, pairs in enumerate(lengths):
        pos = 0
        for s, (p, c, r) in enumerate(pairs, start=1):
            for branch, n in ((0, p), (1, c), (2, r)):
                seg[row, pos:pos + n], br[row, pos:pos + n] = s, branch
                pos += n
    return jnp.asarray(seg), jnp.asarray(br)


def _pallas(q, k, v, seg, br, *, sparse, blocks, loss_seed=7):
    """(out, grads) of pallas_tpu in interpret mode, block-sparse or dense-masked."""
    def loss(q, k, v):
        ids = common.normalize(q, k, v, segment_ids=seg, kv_segment_ids=None, branch_ids=br,
                               kv_branch_ids=None, q_offset=0)
        spec = common.MaskSpec(causal=True, window=None, soft_cap=None, scale=q.shape[-1] ** -0.5,
                               has_branches=br is not None)
        out = attention_pallas_tpu(q, k, v, ids, spec, blocks, interpret=True, block_sparse_tiles=sparse)
        return dpo_like_loss(out, loss_seed), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _reference(q, k, v, seg, br, loss_seed=7):
    def loss(q, k, v):
        out = reference.mha_reference(q, k, v, segment_ids=seg, branch_ids=br)
        return dpo_like_loss(out, loss_seed), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


BLOCKS = common.BlockSizes(128, 128, 128, 128)


def test_block_sparse_equals_dense_masked_and_reference():
    """Two rows of packed DPO pairs with long padding (most tiles EMPTY, some FULL)."""
    t = 640
    seg, br = _packed_pairs(2, t, [[(100, 60, 90), (40, 150, 30)], [(200, 100, 120)]])
    q, k, v = qkv(3, 2, t, t, 2, 1, 16, F32)
    kinds = block_sparse.tile_kinds(seg, seg, br, br, jnp.int32(0), _spec(branches=True), 128, 128)
    assert int((kinds == EMPTY).sum()) > kinds.size // 2 and int((kinds == FULL).sum()) > 0
    sparse = _pallas(q, k, v, seg, br, sparse=True, blocks=BLOCKS)
    dense = _pallas(q, k, v, seg, br, sparse=False, blocks=BLOCKS)
    ref = _reference(q, k, v, seg, br)
    for name, a, b_, r in zip(("out", "dq", "dk", "dv"), (sparse[0], *sparse[1]), (dense[0], *dense[1]),
                              (ref[0], *ref[1])):
        np.testing.assert_allclose(a, b_, atol=1e-6, rtol=1e-6, err_msg=name)  # same math, tiles skipped
        assert_close(a, r, F32, name)


def test_skipped_tiles_are_never_read():
    """NaN in the whole-tile padding: the block-sparse kernels never touch it (a
    computed-then-masked tile would turn it into NaN through p @ v); gradients there
    are exact zeros."""
    t, valid = 512, 300  # tiles of 128: tokens 384.. are whole padding tiles
    seg = jnp.asarray(np.where(np.arange(t) < valid, 1, 0)[None].repeat(2, 0), jnp.int32)
    q, k, v = qkv(4, 2, t, t, 2, 1, 16, F32)
    poison = lambda x: x.at[:, 384:].set(jnp.nan)
    out, grads = _pallas(poison(q), poison(k), poison(v), seg, None, sparse=True, blocks=BLOCKS)
    clean = _reference(q, k, v, seg, None)
    for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (clean[0], *clean[1])):
        assert bool(jnp.all(jnp.isfinite(a))), name
        assert_close(a[:, :384], r[:, :384], F32, name)
        assert float(jnp.abs(a[:, 384:]).max()) == 0.0
    dense_out, _ = _pallas(poison(q), poison(k), poison(v), seg, None, sparse=False, blocks=BLOCKS)
    assert not bool(jnp.all(jnp.isfinite(dense_out)))  # the poison would show if read


@pytest.mark.parametrize("blocks", [common.BlockSizes(384, 128, 512, 128), common.BlockSizes(256, 384, 128, 640)])
def test_non_power_of_two_tiles_match_the_reference(blocks):
    """T = 1100 with tiles that do not divide each other (was: NaN dq past row 1024)."""
    t = 1100
    q, k, v = qkv(5, 1, t, t, 1, 1, 16, F32)
    seg = jnp.asarray(np.where(np.arange(t) < 1037, 1 + (np.arange(t) >= 600), 0)[None], jnp.int32)
    out, grads = _pallas(q, k, v, seg, None, sparse=True, blocks=blocks)
    ref_out, ref_grads = _reference(q, k, v, seg, None)
    for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        assert bool(jnp.all(jnp.isfinite(a))), name
        assert_close(a, r, F32, name)


@pytest.mark.parametrize("blocks, message", [
    (common.BlockSizes(100, 128, 128, 128), "block_q=100 must be a multiple of 128"),
    (common.BlockSizes(128, 128, 128, 200), "block_kv_bwd=200 must be a multiple of 128"),
])
def test_illegal_tile_sizes_raise(blocks, message):
    q = jnp.zeros((1, 300, 2, 16), F32)
    with pytest.raises(ValueError, match=message):
        attention(q, q, q, impl="pallas_tpu", block_sizes=blocks)
