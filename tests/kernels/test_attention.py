"""Forward and gradients of every attention implementation against the dense reference.

The Pallas variants run in interpret mode on CPU (small shapes, several tiles per
axis through small block sizes); the XLA blocked path runs as in production.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.kernels.attention.common import BlockSizes

from .helpers import check_attention, ragged_segments

# Small tiles so that every test walks several query and KV tiles.
BLOCKS = {
    "xla": BlockSizes(32, 32, 32, 32),
    "xla_dense": BlockSizes(32, 32, 32, 32),  # causal-chunked dense (CPU short sequences)
    "pallas_tpu": BlockSizes(128, 128, 128, 128),  # TPU KV tiles are >= 128 lanes
    "pallas_gpu": BlockSizes(32, 16, 16, 32),
}
IMPLS = list(BLOCKS)


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_ragged_gqa_f32(impl):
    """Causal, 2:1 GQA, packed segments with right padding, T not a tile multiple."""
    t = 200
    seg = ragged_segments(7, 2, t)
    out, (dq, dk, dv) = check_attention(impl, jnp.float32, t=t, hq=4, hkv=2, d=32,
                                        segment_ids=seg, block_sizes=BLOCKS[impl], case="packed")
    # Padding (segment 0) rows are exact zeros and get exactly zero gradient.
    pad = (seg == 0)[:, :, None, None]
    assert bool(jnp.any(pad))
    assert float(jnp.abs(jnp.where(pad, out, 0)).max()) == 0.0
    assert float(jnp.abs(jnp.where(pad, dq, 0)).max()) == 0.0
    assert float(jnp.abs(jnp.where(pad, dk, 0)).max()) == 0.0
    assert float(jnp.abs(jnp.where(pad, dv, 0)).max()) == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_gqa4_bf16(impl):
    """bf16 inputs (f32 softmax), 4:1 GQA, head_dim 64, no segment ids."""
    check_attention(impl, jnp.bfloat16, t=160, hq=4, hkv=1, d=64, seed=1, block_sizes=BLOCKS[impl],
                    case="bf16")


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_offset_window_softcap_branches(impl):
    """KV-cache shape: 24 queries at q_offset = S - T over 200 keys, ragged kv segments,
    sliding window, logit soft-cap and shared-prompt branch ids, all at once."""
    t, s = 24, 200
    kv_seg = ragged_segments(3, 2, s, max_segments=2)
    kv_br = jnp.asarray(np.random.default_rng(4).integers(0, 3, (2, s)), jnp.int32)
    check_attention(
        impl, jnp.float32, t=t, s=s, hq=4, hkv=2, d=16, seed=2, q_offset=s - t,
        segment_ids=kv_seg[:, s - t:], kv_segment_ids=kv_seg, branch_ids=kv_br[:, s - t:],
        kv_branch_ids=kv_br, sliding_window=50, logit_soft_cap=2.0, block_sizes=BLOCKS[impl], case="decode",
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_bidirectional_window_softcap(impl):
    """Non-causal with a (one-sided) window and soft-cap, plain MHA, odd head_dim."""
    check_attention(impl, jnp.float32, b=2, t=150, hq=2, hkv=2, d=24, seed=4, causal=False,
                    sliding_window=40, logit_soft_cap=1.5, scale=0.3, block_sizes=BLOCKS[impl],
                    case="bidirectional")
