"""Shared pieces of every attention implementation: the static mask spec, input
normalisation (ids, q_offset), padding, block-range arithmetic and the tile mask.

Every implementation (XLA blocked, Pallas TPU, Pallas GPU) builds its per-tile
visibility from `tile_mask`, whose rule is `reference.attention_mask` restated on
position/id vectors; the tests hold both to the reference.
"""

import dataclasses

import jax
import jax.numpy as jnp

from mm_rlhf_jax.kernels.attention.reference import MASK_VALUE  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Static (hashable) description of one attention call."""

    causal: bool
    window: int | None
    soft_cap: float | None
    scale: float
    has_branches: bool


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes: forward (block_q, block_kv) and backward (block_q_bwd, block_kv_bwd)."""

    block_q: int
    block_kv: int
    block_q_bwd: int
    block_kv_bwd: int


@dataclasses.dataclass
class Ids:
    """Normalised per-token ids. Segment 0 is padding (sees nothing, is seen by nothing)."""

    q_seg: jnp.ndarray  # int32[B, T]
    kv_seg: jnp.ndarray  # int32[B, S]
    q_br: jnp.ndarray | None  # int32[B, T] (None: no shared-prompt branches)
    kv_br: jnp.ndarray | None  # int32[B, S]
    q_offset: jnp.ndarray  # int32[]


def _ids(x, shape, name):
    x = jnp.asarray(x)
    if x.shape != shape:
        raise ValueError(f"attention: {name} has shape {x.shape}, expected {shape}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"attention: {name} must be integer, got {x.dtype}")
    return x.astype(jnp.int32)


def normalize(q, k, v, *, segment_ids, kv_segment_ids, branch_ids, kv_branch_ids, q_offset):
    """Validates shapes and returns `Ids` with defaults filled in (all tokens segment 1)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: q, k, v must be [B, T|S, H, D]; got {q.shape}, {k.shape}, {v.shape}")
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} must be [B={b}, S, Hkv, D={d}]")
    if hq % hkv:
        raise ValueError(f"attention: query heads {hq} not a multiple of kv heads {hkv}")
    if segment_ids is None:
        if kv_segment_ids is not None:
            raise ValueError("attention: kv_segment_ids given without segment_ids")
        q_seg, kv_seg = jnp.ones((b, t), jnp.int32), jnp.ones((b, s), jnp.int32)
    else:
        q_seg = _ids(segment_ids, (b, t), "segment_ids")
        if kv_segment_ids is None and s != t:
            raise ValueError(f"attention: S={s} != T={t} needs kv_segment_ids [B, S]")
        kv_seg = q_seg if kv_segment_ids is None else _ids(kv_segment_ids, (b, s), "kv_segment_ids")
    q_br = kv_br = None
    if branch_ids is not None:
        q_br = _ids(branch_ids, (b, t), "branch_ids")
        if kv_branch_ids is None and s != t:
            raise ValueError(f"attention: S={s} != T={t} needs kv_branch_ids [B, S]")
        kv_br = q_br if kv_branch_ids is None else _ids(kv_branch_ids, (b, s), "kv_branch_ids")
    elif kv_branch_ids is not None:
        raise ValueError("attention: kv_branch_ids given without branch_ids")
    q_offset = jnp.asarray(q_offset)
    if q_offset.ndim != 0:
        raise ValueError(f"attention: q_offset must be a scalar, got shape {q_offset.shape}")
    return Ids(q_seg, kv_seg, q_br, kv_br, q_offset.astype(jnp.int32))


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def choose_block(n: int, target: int, base: int) -> int:
    """Largest block in {target, target/2, ..., base} whose padding of n stays small.

    n <= target gives one block of round_up(n, base). Otherwise a block is accepted
    when it pads n by at most n/8 beyond what the smallest block `base` would.
    """
    if n <= target:
        return round_up(n, base)
    floor = round_up(n, base)
    b = target
    while b > base:
        if round_up(n, b) - floor <= n // 8:
            return b
        b //= 2
    return base


def pad_axis(x, axis: int, size: int, value=0):
    """Pads x along `axis` up to `size` with `value`."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def floor_div(x, b: int):
    """floor(x / b) for b > 0 without jnp's `//`, whose sign-correction has no Mosaic
    lowering on a host without a TPU; x may be a Python int or a traced int32."""
    if isinstance(x, int):
        return x // b
    x = jnp.asarray(x)
    return jax.lax.div(jnp.where(x < 0, x - (b - 1), x), jnp.asarray(b, x.dtype))


def kv_block_range(q_first, bq: int, bk: int, nk: int, spec: MaskSpec):
    """[lo, hi) of KV blocks that queries at positions q_first .. q_first+bq-1 may see.

    Works on Python ints and on traced int32 scalars (inside kernels and loops).
    """
    hi = nk
    if spec.causal:
        hi = jnp.minimum(nk, floor_div(q_first + bq - 1, bk) + 1)
    lo = 0
    if spec.window is not None:
        lo = jnp.maximum(0, floor_div(q_first - spec.window + 1, bk))
    lo = jnp.minimum(lo, hi)
    return lo, hi


def q_block_range(k_first, bk: int, bq: int, nq: int, q_offset, spec: MaskSpec):
    """[lo, hi) of query blocks that may see keys k_first .. k_first+bk-1."""
    lo = 0
    if spec.causal:
        # Smallest query index i with q_offset + i >= k_first.
        lo = jnp.clip(floor_div(k_first - q_offset, bq), 0, nq)
    hi = nq
    if spec.window is not None:
        # Largest i with q_offset + i - (k_first + bk - 1) < window.
        hi = jnp.clip(floor_div(k_first + bk - 2 + spec.window - q_offset, bq) + 1, 0, nq)
    hi = jnp.maximum(lo, hi)
    return lo, hi


def tile_mask(q_pos, k_pos, q_seg, k_seg, q_br, k_br, spec: MaskSpec):
    """Visibility of a tile, broadcasting q-side [.., bq, 1] against k-side [.., 1, bk].

    Same rule as `reference.attention_mask`: causal j <= i (absolute positions),
    window i - j < W, same nonzero segment, key branch 0 (prompt) or equal branch.
    """
    mask = (q_seg == k_seg) & (k_seg != 0)
    if spec.causal:
        mask = mask & (k_pos <= q_pos)
    if spec.window is not None:
        mask = mask & (q_pos - k_pos < spec.window)
    if spec.has_branches:
        mask = mask & ((k_br == 0) | (k_br == q_br))
    return mask


def soft_cap(s, spec: MaskSpec):
    """cap * tanh(s / cap) (identity without a cap); s is the already-scaled score."""
    if spec.soft_cap is None:
        return s
    return spec.soft_cap * jnp.tanh(s / spec.soft_cap)


def soft_cap_grad(ds, capped, spec: MaskSpec):
    """Chain rule through the cap: d(cap*tanh(s/cap))/ds = 1 - tanh^2 = 1 - (capped/cap)^2."""
    if spec.soft_cap is None:
        return ds
    t = capped / spec.soft_cap
    return ds * (1.0 - t * t)
