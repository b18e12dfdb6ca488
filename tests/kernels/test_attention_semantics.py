"""Attention semantics beyond single-call parity: shared-prompt == separate passes,
packed == unpacked, O(T) memory of the blocked path, TPU interpret-mode hazards,
dispatch and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mm_rlhf_jax.kernels import attention
from mm_rlhf_jax.kernels.attention.api import resolve_impl
from mm_rlhf_jax.kernels.attention.common import BlockSizes
from mm_rlhf_jax.models import rope

from .helpers import assert_close, normal

IMPLS = {
    "xla": BlockSizes(16, 16, 16, 16),
    "pallas": BlockSizes(128, 128, 128, 128),  # pallas_tpu, interpreted on CPU
    "pallas_gpu": BlockSizes(16, 16, 16, 16),
}
F32 = jnp.float32


def _grads_and_out(f, *args):
    return jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args))), has_aux=True))(*args)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_shared_prompt_equals_separate_passes(impl):
    """One pass over [prompt, chosen, rejected] with branch ids and explicit RoPE
    positions (both responses start right after the prompt) equals the two passes
    [prompt, chosen] and [prompt, rejected], in outputs and in gradients."""
    n_p, n_c, n_r, hq, hkv, d = 12, 9, 7, 4, 2, 16
    n = n_p + n_c + n_r
    rng = np.random.default_rng(0)
    q0, k0, v0 = (normal(rng, (1, n, h, d), F32) for h in (hq, hkv, hkv))  # per token, pre-RoPE
    r = normal(rng, (1, n, hq, d), F32)  # cotangent weights per token
    inv_freq = rope.inv_frequencies(d, 10000.0)
    idx_p, idx_c, idx_r = np.arange(n_p), n_p + np.arange(n_c), n_p + n_c + np.arange(n_r)
    kw = dict(impl=impl, block_sizes=IMPLS[impl])

    def packed(q0, k0, v0):
        pos = jnp.asarray(np.concatenate([idx_p, n_p + np.arange(n_c), n_p + np.arange(n_r)]))[None]
        branch = jnp.asarray(np.repeat([0, 1, 2], [n_p, n_c, n_r]))[None]
        q, k = rope.apply_rope(q0, pos, inv_freq), rope.apply_rope(k0, pos, inv_freq)
        out = attention(q, k, v0, segment_ids=jnp.ones((1, n), jnp.int32), branch_ids=branch, **kw)
        return jnp.sum(out * r), out

    def separate(q0, k0, v0):
        # Row 0: [prompt, chosen]; row 1: [prompt, rejected] right-padded to the same length.
        t = n_p + n_c
        rows = [np.concatenate([idx_p, idx_c]), np.concatenate([idx_p, idx_r, np.full(n_c - n_r, idx_r[0])])]
        take = lambda x: jnp.concatenate([x[:, row] for row in rows])
        seg = jnp.asarray(np.stack([np.ones(t), (np.arange(t) < n_p + n_r)]), jnp.int32)
        pos = jnp.asarray(np.stack([np.arange(t)] * 2))
        q, k = rope.apply_rope(take(q0), pos, inv_freq), rope.apply_rope(take(k0), pos, inv_freq)
        out = attention(q, k, take(v0), segment_ids=seg, **kw)
        used = (jnp.sum(out[0] * r[0, rows[0]]) + jnp.sum(out[1, n_p:n_p + n_r] * r[0, idx_r]))
        return used, out

    (_, out_packed), g_packed = _grads_and_out(packed, q0, k0, v0)
    (_, out_sep), g_sep = _grads_and_out(separate, q0, k0, v0)
    assert_close(out_packed[0, idx_p], out_sep[0, :n_p], F32, "prompt vs pass 1")
    assert_close(out_packed[0, idx_p], out_sep[1, :n_p], F32, "prompt vs pass 2")
    assert_close(out_packed[0, idx_c], out_sep[0, n_p:], F32, "chosen")
    assert_close(out_packed[0, idx_r], out_sep[1, n_p:n_p + n_r], F32, "rejected")
    for name, a, b in zip(("dq", "dk", "dv"), g_packed, g_sep):
        assert_close(a, b, F32, name)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_packed_equals_unpacked(impl):
    """Sequences of lengths 20, 13, 9 packed as [[a, b, pad], [c, pad]] with segment ids
    give the same outputs and gradients as one padded row per sequence."""
    lengths, hq, hkv, d = (20, 13, 9), 4, 1, 16
    rng = np.random.default_rng(1)
    seqs = [tuple(normal(rng, (n, h, d), F32) for h in (hq, hkv, hkv)) for n in lengths]
    r = [normal(rng, (n, hq, d), F32) for n in lengths]
    kw = dict(impl=impl, block_sizes=IMPLS[impl])

    def pad_to(x, t):
        return jnp.pad(x, ((0, t - x.shape[0]), (0, 0), (0, 0)))

    def packed(*flat):
        a, b, c = (flat[3 * i:3 * i + 3] for i in range(3))
        t = 36
        row0 = [pad_to(jnp.concatenate([a[j], b[j]]), t) for j in range(3)]
        row1 = [pad_to(c[j], t) for j in range(3)]
        q, k, v = (jnp.stack([row0[j], row1[j]]) for j in range(3))
        seg = jnp.asarray(np.stack([np.repeat([1, 2, 0], [20, 13, 3]), np.repeat([1, 0], [9, 27])]), jnp.int32)
        out = attention(q, k, v, segment_ids=seg, **kw)
        outs = [out[0, :20], out[0, 20:33], out[1, :9]]
        return sum(jnp.sum(o * w) for o, w in zip(outs, r)), outs

    def unpacked(*flat):
        t = 20
        q, k, v = (jnp.stack([pad_to(flat[3 * i + j], t) for i in range(3)]) for j in range(3))
        seg = jnp.asarray(np.stack([np.arange(t) < n for n in lengths]), jnp.int32)
        out = attention(q, k, v, segment_ids=seg, **kw)
        outs = [out[i, :n] for i, n in enumerate(lengths)]
        return sum(jnp.sum(o * w) for o, w in zip(outs, r)), outs

    flat = [x for s in seqs for x in s]
    (_, out_p), g_p = _grads_and_out(packed, *flat)
    (_, out_u), g_u = _grads_and_out(unpacked, *flat)
    for i in range(3):
        assert_close(out_p[i], out_u[i], F32, f"out {i}")
    for i, (a, b) in enumerate(zip(g_p, g_u)):
        assert_close(a, b, F32, f"grad {i}")


def test_blocked_memory_grows_linearly():
    """fwd+bwd temporaries of the XLA blocked path scale ~T; the dense reference ~T^2."""
    def temp_bytes(impl, t):
        q = jax.ShapeDtypeStruct((1, t, 2, 32), F32)
        f = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, impl=impl) ** 2), argnums=(0, 1, 2))
        return jax.jit(f).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

    blocked = [temp_bytes("xla", t) for t in (1024, 2048, 4096)]
    dense = [temp_bytes("reference", t) for t in (1024, 2048)]
    assert blocked[2] / blocked[1] < 2.5 and blocked[1] / blocked[0] < 2.5, blocked
    assert dense[1] / dense[0] > 3.5, dense
    # A single f32 [H, T, T] score matrix at T=4096 is 128 MiB; the blocked path stays far below.
    assert blocked[2] < 2 * 4096 * 4096 * 4 / 8, blocked


def test_tpu_interpret_mode_uninitialised_scratch_and_races():
    """TPU interpret mode fills scratch with NaN and checks DMA races: the kernels
    initialise every accumulator and stay exact on a 2 x 2 tile grid with padding."""
    t = 136
    rng = np.random.default_rng(2)
    q, k, v = normal(rng, (1, t, 2, 32), F32), normal(rng, (1, t, 1, 32), F32), normal(rng, (1, t, 1, 32), F32)
    seg = jnp.asarray((np.arange(t) < 130)[None], jnp.int32)
    params = pltpu.InterpretParams(uninitialized_memory="nan", detect_races=True)

    def loss(impl, **extra):
        def f(q, k, v):
            out = attention(q, k, v, segment_ids=seg, impl=impl, **extra)
            return jnp.sum(out ** 2), out
        return f

    (_, out), grads = _grads_and_out(
        loss("pallas_tpu", interpret=params, block_sizes=BlockSizes(128, 128, 128, 128)), q, k, v)
    (_, ref), ref_grads = _grads_and_out(loss("reference"), q, k, v)
    assert_close(out, ref, F32, "out")
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(a, b, F32, name)


def test_dispatch_table():
    assert resolve_impl("auto", "cpu") == "xla"
    assert resolve_impl("auto", "gpu") == "cudnn"
    assert resolve_impl("auto", "tpu") == "pallas_tpu"
    assert resolve_impl("pallas", "cpu") == "pallas_tpu"
    assert resolve_impl("pallas", "gpu") == "pallas_gpu"
    assert resolve_impl("xla", "tpu") == "xla"
    assert resolve_impl("reference", "gpu") == "reference"
    with pytest.raises(ValueError, match="unknown impl 'flash'"):
        resolve_impl("flash", "cpu")


def test_default_call_matches_reference_on_cpu():
    rng = np.random.default_rng(3)
    q, k, v = normal(rng, (2, 10, 4, 8), F32), normal(rng, (2, 10, 2, 8), F32), normal(rng, (2, 10, 2, 8), F32)
    assert_close(attention(q, k, v), attention(q, k, v, impl="reference"), F32, "auto")


@pytest.mark.parametrize("kwargs, message", [
    (dict(q=(2, 8, 3, 8), k=(2, 8, 2, 8)), "query heads 3 not a multiple of kv heads 2"),
    (dict(q=(2, 8, 4, 8), k=(2, 8, 2, 16)), r"must be \[B=2, S, Hkv, D=8\]"),
    (dict(q=(2, 8, 4, 8), k=(2, 9, 2, 8), segment_ids=(2, 8)), "S=9 != T=8 needs kv_segment_ids"),
    (dict(q=(2, 8, 4, 8), k=(2, 8, 2, 8), segment_ids=(2, 7)), r"segment_ids has shape \(2, 7\)"),
    (dict(q=(2, 8, 4, 8), k=(2, 8, 2, 8), kv_segment_ids=(2, 8)), "kv_segment_ids given without segment_ids"),
    (dict(q=(2, 8, 4, 8), k=(2, 8, 2, 8), sliding_window=0), "sliding_window must be >= 1"),
])
def test_bad_input_raises(kwargs, message):
    kwargs = dict(kwargs)
    q, k = jnp.zeros(kwargs.pop("q")), jnp.zeros(kwargs.pop("k"))
    kwargs = {name: (jnp.ones(x, jnp.int32) if isinstance(x, tuple) else x) for name, x in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        attention(q, k, k, impl="xla", **kwargs)
