"""Input makers and comparison helpers shared by the kernel tests."""

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.kernels import attention

# Tolerances, relative to max |reference| of each compared array.
# f32: errors observed ~1e-6 (tile order of the online softmax / matmul sums).
# bf16 inputs, f32 accumulation, reference in f32 on the same bf16-rounded inputs:
# outputs/cotangents are bf16 and the kernels round p and ds to bf16 for the
# matmuls (observed 2e-3 .. 5e-3).
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 1.5e-2}


def assert_close(actual, expected, dtype, what=""):
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    expected = np.asarray(jnp.asarray(expected, jnp.float32))
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= TOL[dtype], f"{what}: max error {err:.3g} x max|ref| {scale:.3g} > {TOL[dtype]}"


def ragged_segments(seed, b, n, max_segments=3):
    """int32[B, N]: sorted segment ids 1..k, then right padding with 0 (ragged lengths).

    Inputs are made with numpy: eager jax.random ops each compile on first use, which
    would dominate these small tests.
    """
    rng = np.random.default_rng(seed)
    seg = np.sort(rng.integers(1, max_segments + 1, (b, n)), axis=1)
    lengths = rng.integers(n // 2, n + 1, (b, 1))
    return jnp.asarray(np.where(np.arange(n)[None, :] < lengths, seg, 0), jnp.int32)


def normal(rng, shape, dtype):
    # Rounded to dtype here; the reference then sees exactly the kernel's inputs.
    return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)


def qkv(seed, b, t, s, hq, hkv, d, dtype):
    rng = np.random.default_rng(seed)
    return (normal(rng, (b, t, hq, d), dtype), normal(rng, (b, s, hkv, d), dtype),
            normal(rng, (b, s, hkv, d), dtype))


def dpo_like_loss(out, seed):
    """Non-uniform cotangents: -log sigmoid of (chosen - rejected) per-sequence sums.

    out[B, ...] with B even; rows 0::2 play chosen and 1::2 rejected.
    """
    r = jnp.asarray(np.random.default_rng(seed).standard_normal(out.shape[1:], np.float32))
    # Normalised so that the margins are O(1): the sigmoid stays unsaturated and the
    # per-pair weights differ (a saturated one would amplify forward rounding).
    seq = jnp.sum(out.astype(jnp.float32) * r, axis=tuple(range(1, out.ndim))) / r.size**0.5
    return -jnp.sum(jax.nn.log_sigmoid(2.0 * (seq[0::2] - seq[1::2])))


def attention_fwd_bwd(impl, q, k, v, loss_seed, **kw):
    """(out, (dq, dk, dv)) of `dpo_like_loss(attention(...))`, compiled once."""

    def loss(q, k, v):
        out = attention(q, k, v, impl=impl, **kw)
        return dpo_like_loss(out, loss_seed), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def reference_fwd_bwd(q, k, v, loss_seed, **kw):
    """The same through the dense reference, in f32 from the (already rounded) inputs."""
    f32 = lambda x: x.astype(jnp.float32)
    return attention_fwd_bwd("reference", f32(q), f32(k), f32(v), loss_seed, **kw)


_REFERENCE_CACHE = {}


def check_attention(impl, dtype, *, b=2, t=64, s=None, hq=4, hkv=2, d=32, seed=0, case=None, **kw):
    """Forward and DPO-like gradients of `impl` against the reference.

    `case` names the inputs so that the reference result is computed once per case
    and shared by the implementations (compiles dominate the test time on CPU).
    """
    s = t if s is None else s
    q, k, v = qkv(seed, b, t, s, hq, hkv, d, dtype)
    loss_seed = seed + 1000
    out, grads = attention_fwd_bwd(impl, q, k, v, loss_seed, **kw)
    ref_kw = {name: x for name, x in kw.items() if name != "block_sizes"}
    if case is None:
        ref_out, ref_grads = reference_fwd_bwd(q, k, v, loss_seed, **ref_kw)
    else:
        if case not in _REFERENCE_CACHE:
            _REFERENCE_CACHE[case] = reference_fwd_bwd(q, k, v, loss_seed, **ref_kw)
        ref_out, ref_grads = _REFERENCE_CACHE[case]
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(g, rg, dtype, name)
    return out, grads
