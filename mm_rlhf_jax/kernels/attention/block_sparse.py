"""Per-tile visibility metadata for block-sparse attention kernels (splash-style).

Computed in XLA from the per-token ids once per call (O(B * T) reductions and
O(B * nq * nk) compares; it depends only on ids and q_offset, so inside a scan
over layers XLA hoists it out of the loop). Every (batch row, query tile, KV tile)
gets a kind:

  EMPTY  no query of the tile sees any key of it: padding (segment 0) only,
         segments or branches that cannot meet, or outside the causal / window
         range. The kernel skips it and fetches nothing for it;
  FULL   every query sees every key: one nonzero segment on both sides, no
         padding, fully inside the causal / window range, and every key prompt
         (branch 0) or of the queries' one branch. The kernel skips the mask;
  PARTIAL anything else: computed with the element mask (`common.tile_mask`).

The tests are conservative: EMPTY and FULL are only claimed when they hold for
every element (per-tile min / max of the ids), so a PARTIAL tile is always
correct. Each rule alone is exact for packed rows (sorted segments); a tile that is
empty only through a combination (e.g. branch-2 queries of segment 1 and segment 2
against branch-1 keys of segment 1) is computed as PARTIAL.

Together with the kind, each entry holds the index of the tile to fetch at that grid step: the tile itself, or for an EMPTY step the next non-empty tile
of the row (else the previous one), so skipped steps issue no DMA and the next
needed tile is prefetched. Packed as `tile * 4 + kind` in one flat int32 array,
which the kernels receive as a scalar-prefetch (SMEM) operand.
"""

import jax.numpy as jnp
from jax import lax

from mm_rlhf_jax.kernels.attention.common import MaskSpec

EMPTY, PARTIAL, FULL = 0, 1, 2
_BIG = jnp.iinfo(jnp.int32).max
# SMEM is 1 MiB per core on v4 .. v6e; one kernel's metadata may use half of it.
MAX_ENTRIES = 128 * 1024


def _tile_stats(seg, br, block: int):
    """Per tile of `block` tokens, over its non-padding tokens: (seg min, seg max,
    all tokens valid, branch min, branch max, min / max of the nonzero branches),
    each [B, n_tiles] (min BIG / max -1 when there is no such token)."""
    b, n = seg.shape
    seg = seg.reshape(b, n // block, block)
    valid = seg != 0
    lo = lambda keep, x: jnp.min(jnp.where(keep, x, _BIG), -1)
    hi = lambda keep, x: jnp.max(jnp.where(keep, x, -1), -1)
    stats = [lo(valid, seg), hi(valid, seg), jnp.all(valid, -1)]
    if br is None:
        return stats + [None] * 4
    br = br.reshape(b, n // block, block)
    branch = valid & (br != 0)
    return stats + [lo(valid, br), hi(valid, br), lo(branch, br), hi(branch, br)]


def tile_kinds(q_seg, kv_seg, q_br, kv_br, q_offset, spec: MaskSpec, bq: int, bk: int):
    """int32[B, nq, nk] of EMPTY / PARTIAL / FULL for padded ids (T % bq == S % bk == 0)."""
    qs_min, qs_max, q_all, qb_min, qb_max, _, _ = (x if x is None else x[:, :, None]
                                                   for x in _tile_stats(q_seg, q_br, bq))
    ks_min, ks_max, k_all, kb_min, kb_max, kbr_min, kbr_max = (x if x is None else x[:, None, :]
                                                               for x in _tile_stats(kv_seg, kv_br, bk))
    nq, nk = q_seg.shape[1] // bq, kv_seg.shape[1] // bk
    empty = (qs_max < ks_min) | (ks_max < qs_min)  # also every all-padding tile (min BIG, max -1)
    full = q_all & k_all & (qs_min == qs_max) & (ks_min == ks_max) & (qs_min == ks_min)
    q_first = (q_offset + jnp.arange(nq, dtype=jnp.int32) * bq)[None, :, None]
    q_last = q_first + (bq - 1)
    k_first = (jnp.arange(nk, dtype=jnp.int32) * bk)[None, None, :]
    k_last = k_first + (bk - 1)
    if spec.causal:
        empty = empty | (k_first > q_last)
        full = full & (k_last <= q_first)
    if spec.window is not None:
        empty = empty | (q_first - k_last >= spec.window)
        full = full & (q_last - k_first < spec.window)
    if spec.has_branches:
        no_prompt_key = kb_min > 0
        empty = empty | (no_prompt_key & ((qb_max < kb_min) | (kb_max < qb_min)))
        # Every key is prompt or of the queries' single branch b (b = 0: prompt only).
        one_branch = qb_min == qb_max
        full = full & ((kbr_max < 0) | (one_branch & (kbr_min == kbr_max) & (kbr_min == qb_min)))
    return jnp.where(empty, EMPTY, jnp.where(full, FULL, PARTIAL)).astype(jnp.int32)


def _fetch_index(kinds):
    """[..., n] kinds -> [..., n] tile to fetch at each step along the last axis."""
    n = kinds.shape[-1]
    j = lax.broadcasted_iota(jnp.int32, kinds.shape, kinds.ndim - 1)
    live = kinds != EMPTY
    nxt = lax.cummin(jnp.where(live, j, n), axis=kinds.ndim - 1, reverse=True)
    prev = lax.cummax(jnp.where(live, j, -1), axis=kinds.ndim - 1)
    return jnp.where(nxt < n, nxt, jnp.maximum(prev, 0))


def pack(kinds):
    """int32[B, n_rows, n_steps] kinds -> flat int32[B * n_rows * n_steps] of fetch * 4 + kind."""
    if kinds.size > MAX_ENTRIES:
        raise ValueError(
            f"attention pallas_tpu: {kinds.size} tile-metadata entries {kinds.shape} exceed the SMEM budget of "
            f"{MAX_ENTRIES}; use larger block sizes or a smaller per-device batch")
    return (_fetch_index(kinds) * 4 + kinds).reshape(-1)


def kind_of(entry):
    """EMPTY / PARTIAL / FULL of a packed entry (traced int32; entries are >= 0)."""
    return lax.rem(entry, 4)


def fetch_of(entry):
    """Tile index to fetch of a packed entry."""
    return lax.div(entry, 4)
