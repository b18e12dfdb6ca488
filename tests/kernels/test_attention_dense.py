"""The CPU short-sequence path (xla_dense): traced offsets, static causal skipping, and
the "auto" dispatch rule that keeps long sequences on the O(T)-memory blocked kernel."""

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.kernels import attention
from mm_rlhf_jax.kernels.attention import api
from mm_rlhf_jax.kernels.attention.api import DENSE_SCORE_BYTES, resolve_impl
from mm_rlhf_jax.kernels.attention.common import BlockSizes

from .helpers import assert_close, normal, ragged_segments

F32 = jnp.float32


def test_traced_q_offset_matches_reference():
    """q_offset as a traced scalar (no static key skipping): outputs and gradients."""
    t, s = 24, 72
    rng = np.random.default_rng(5)
    q, k, v = normal(rng, (2, t, 4, 16), F32), normal(rng, (2, s, 2, 16), F32), normal(rng, (2, s, 2, 16), F32)
    r = normal(rng, (2, t, 4, 16), F32)
    kv_seg = ragged_segments(6, 2, s, max_segments=2)

    def loss(impl, **kw):
        def f(q, k, v, off):
            out = attention(q, k, v, segment_ids=jax.lax.dynamic_slice_in_dim(kv_seg, off, t, 1),
                            kv_segment_ids=kv_seg, q_offset=off, sliding_window=30, impl=impl, **kw)
            return jnp.sum(out * r), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    (_, out), grads = loss("xla_dense", block_sizes=BlockSizes(8, 8, 8, 8))(q, k, v, jnp.int32(s - t))
    (_, ref), ref_grads = loss("reference")(q, k, v, jnp.int32(s - t))
    assert_close(out, ref, F32, "out")
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(a, b, F32, name)


def test_causal_chunks_skip_invisible_keys():
    """With a static offset, chunk i reads only keys < its last query: about half the work
    of the full score matrix at 8 chunks (compiled flop count), same result."""
    t = 256
    q = jax.ShapeDtypeStruct((1, t, 2, 32), F32)

    def flops(causal):
        f = lambda q, k, v: attention(q, k, v, causal=causal, impl="xla_dense", block_sizes=BlockSizes(32, 32, 32, 32))
        cost = jax.jit(f).lower(q, q, q).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    ratio = flops(True) / flops(False)
    assert 0.45 < ratio < 0.65, ratio  # (1 + ... + 8) / (8 * 8) = 0.5625 of the score work


def test_auto_dispatch_by_score_size():
    small, large = DENSE_SCORE_BYTES, DENSE_SCORE_BYTES + 1
    assert resolve_impl("auto", "cpu", score_bytes=small) == "xla_dense"
    assert resolve_impl("auto", "cpu", score_bytes=large) == "xla"
    assert resolve_impl("auto", "cpu") == "xla"
    assert resolve_impl("auto", "gpu", score_bytes=small) == "cudnn"
    assert resolve_impl("xla", "cpu", score_bytes=small) == "xla"
    assert "xla_dense" in api.IMPLS


def test_auto_on_long_sequences_keeps_linear_memory():
    """"auto" on CPU at T = 4096 (score matrix 128 MiB per head pair > budget) compiles to
    the blocked kernel's footprint, far below one f32 [H, T, T] score matrix."""
    t = 4096
    q = jax.ShapeDtypeStruct((1, t, 2, 32), F32)
    f = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, impl="auto") ** 2), argnums=(0, 1, 2))
    temp = jax.jit(f).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes
    assert temp < 2 * t * t * 4 / 8, temp
