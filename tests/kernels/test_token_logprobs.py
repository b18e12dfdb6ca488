"""Token log-probs (fused LM head + log-softmax + gather): every implementation against
the [B, T, V] reference, forward and exact per-token gradients, plus memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.test_util import check_grads

from mm_rlhf_jax.kernels import token_logprobs
from mm_rlhf_jax.kernels.token_logprobs.api import resolve_impl
from mm_rlhf_jax.kernels.token_logprobs.common import BlockSizes

from .helpers import assert_close, normal

F32, BF16 = jnp.float32, jnp.bfloat16
# Small tiles: several token, vocab and hidden tiles per call.
BLOCKS = {
    "xla": BlockSizes(8, 0, 0, 8, 0),  # only the token chunk matters for XLA
    "pallas_tpu": BlockSizes(16, 256, 128, 8, 128),
    "pallas_gpu": BlockSizes(16, 128, 32, 16, 64),
}
IMPLS = list(BLOCKS)
_REFERENCE = {}


def _inputs(seed, b, t, h, v, dtype):
    rng = np.random.default_rng(seed)
    hidden = normal(rng, (b, t, h), F32).astype(dtype)
    w = (normal(rng, (h, v), F32) * (2.0 / h**0.5)).astype(dtype)
    labels = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
    mask = jnp.asarray(rng.random((b, t)) < 0.7, F32)  # loss mask: ~30% of tokens ignored
    return hidden, w, labels, mask


def _run(impl, hidden, w, labels, mask, *, entropy, **kw):
    """(logp, entropy, dh, dw) of a DPO-like loss on masked per-sequence sums (+ an
    entropy bonus): non-uniform, partly zero per-token cotangents."""

    def loss(hidden, w):
        out = token_logprobs(hidden, w, labels, return_entropy=entropy, impl=impl, **kw)
        logp, ent = out if entropy else (out, jnp.zeros_like(out))
        seq = jnp.sum(logp * mask, axis=1)
        value = -jnp.sum(jax.nn.log_sigmoid(0.1 * (seq[0::2] - seq[1::2]))) - 0.05 * jnp.sum(ent * mask)
        return value, (logp, ent)

    (_, (logp, ent)), (dh, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(hidden, w)
    return logp, ent, dh, dw


def _check(impl, case, dtype, *, seed, b, t, h, v, entropy, temperature, default_blocks=False):
    hidden, w, labels, mask = _inputs(seed, b, t, h, v, dtype)
    blocks = None if default_blocks else BLOCKS[impl]
    got = _run(impl, hidden, w, labels, mask, entropy=entropy, temperature=temperature, block_sizes=blocks)
    if case not in _REFERENCE:
        _REFERENCE[case] = _run("reference", hidden.astype(F32), w.astype(F32), labels, mask, entropy=entropy,
                                temperature=temperature)
    want = _REFERENCE[case]
    for name, a, e in zip(("logp", "entropy", "dh", "dw"), got, want):
        assert_close(a, e, dtype, name)
    logp, _, dh, dw = got
    assert logp.dtype == F32 and dh.dtype == dtype and dw.dtype == dtype
    # Tokens whose cotangent is zero (masked out of the loss) get exactly zero dh.
    zero = (mask == 0)[..., None]
    assert bool(jnp.any(zero)) and float(jnp.abs(jnp.where(zero, dh, 0)).max()) == 0.0
    return got


@pytest.mark.parametrize("impl", IMPLS)
def test_f32_entropy_temperature_ragged(impl):
    """N = 26 tokens and V = 1000 are not tile multiples; entropy and temperature on."""
    _check(impl, "f32", F32, seed=0, b=2, t=13, h=64, v=1000, entropy=True, temperature=0.7)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_inputs_f32_accumulation(impl):
    """bf16 hidden and w (H = 200 not a tile multiple), log-probs only."""
    _check(impl, "bf16", BF16, seed=1, b=2, t=20, h=200, v=300, entropy=False, temperature=1.0)


def test_xla_numerical_gradients_and_chunk_invariance():
    """Finite differences agree with the custom_vjp, and the chunk size changes nothing."""
    hidden, w, labels, _ = _inputs(2, 2, 5, 6, 11, F32)
    f = lambda h_, w_: token_logprobs(h_, w_, labels, temperature=1.3, return_entropy=True, impl="xla",
                                      block_sizes=BlockSizes(4, 0, 0, 4, 0))
    check_grads(f, (hidden, w), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)
    a = f(hidden, w)
    b = token_logprobs(hidden, w, labels, temperature=1.3, return_entropy=True, impl="xla")
    for x, y in zip(a, b):
        assert_close(x, y, F32, "chunk 4 vs default")


def test_default_temperature_and_auto_impl():
    hidden, w, labels, _ = _inputs(3, 2, 7, 16, 50, F32)
    ref = token_logprobs(hidden, w, labels, impl="reference")
    assert_close(token_logprobs(hidden, w, labels), ref, F32, "auto")
    assert_close(token_logprobs(hidden, w, labels, temperature=1.0, impl="xla"), ref, F32, "temperature 1")
    assert resolve_impl("auto", "cpu") == "xla" and resolve_impl("auto", "tpu") == "pallas_tpu"
    assert resolve_impl("auto", "gpu") == "xla" and resolve_impl("pallas", "cpu") == "pallas_tpu"


def test_tpu_interpret_mode_uninitialised_scratch():
    """NaN-filled scratch: every accumulator of the three TPU kernels is initialised."""
    hidden, w, labels, mask = _inputs(4, 2, 8, 128, 300, F32)
    params = pltpu.InterpretParams(uninitialized_memory="nan")
    got = _run("pallas_tpu", hidden, w, labels, mask, entropy=True, interpret=params,
               block_sizes=BlockSizes(16, 128, 128, 16, 128))
    want = _run("reference", hidden, w, labels, mask, entropy=True)
    for name, a, e in zip(("logp", "entropy", "dh", "dw"), got, want):
        assert_close(a, e, F32, name)


def test_chunked_memory_is_flat_in_tokens():
    """XLA memory analysis of the chunked fwd+bwd: temporaries far below the N x V f32
    logits and the same at 4x the tokens (fixed chunk)."""
    h, v, chunk = 128, 8192, 256

    def temp_bytes(impl, n):
        shapes = (jax.ShapeDtypeStruct((1, n, h), F32), jax.ShapeDtypeStruct((h, v), F32),
                  jax.ShapeDtypeStruct((1, n), jnp.int32))
        f = jax.grad(lambda x, w, y: jnp.sum(token_logprobs(
            x, w, y, impl=impl, block_sizes=BlockSizes(chunk, 0, 0, chunk, 0))), argnums=(0, 1))
        return jax.jit(f).lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes("xla", 2048), temp_bytes("xla", 8192)
    naive = temp_bytes("reference", 8192)
    logits_bytes = 8192 * v * 4
    assert naive >= logits_bytes  # the reference does hold [N, V]
    assert large < logits_bytes / 8, (large, logits_bytes)
    # Growth with N is only O(N * H) (dh, the hidden chunks), not O(N * V).
    assert large - small < (8192 - 2048) * (h * 4 * 4 + 64), (small, large)


@pytest.mark.parametrize("shapes, message", [
    (((2, 3, 8), (9, 20), (2, 3)), "hidden size 8 != w rows 9"),
    (((2, 3, 8), (8, 20), (2, 4)), r"labels \(2, 4\) must match hidden \(2, 3\)"),
])
def test_bad_input_raises(shapes, message):
    (hs, ws, ls) = shapes
    with pytest.raises(ValueError, match=message):
        token_logprobs(jnp.zeros(hs), jnp.zeros(ws), jnp.zeros(ls, jnp.int32))


def test_bad_temperature_and_labels_dtype():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(jnp.zeros((1, 2, 4)), jnp.zeros((4, 5)), jnp.zeros((1, 2), jnp.int32), temperature=0.0)
    with pytest.raises(ValueError, match="labels must be integer"):
        token_logprobs(jnp.zeros((1, 2, 4)), jnp.zeros((4, 5)), jnp.zeros((1, 2)))


def test_cpu_default_is_8x_below_naive_logits():
    """The CPU default (auto = chunked XLA, default chunk) at N = 8192, H = 1024,
    V = 32000, forward + backward w.r.t. hidden and W: compiled temporaries >= 8x below
    naive logits written with the fewest [N, V] buffers (logits, logsumexp, gather)."""
    n, h, v = 8192, 1024, 32000
    shapes = (jax.ShapeDtypeStruct((n, h), F32), jax.ShapeDtypeStruct((h, v), F32),
              jax.ShapeDtypeStruct((n,), jnp.int32))

    def naive(x, w, y):
        logits = x @ w
        return jnp.take_along_axis(logits, y[:, None], -1)[:, 0] - jax.nn.logsumexp(logits, -1)

    def temp(f):
        grad = jax.grad(lambda x, w, y: jnp.sum(f(x, w, y)), argnums=(0, 1))
        return jax.jit(grad).lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    chunked, lean = temp(token_logprobs), temp(naive)
    assert lean >= 2 * n * v * 4  # logits and their cotangent
    assert chunked * 8 <= lean, (chunked / 2**20, lean / 2**20)
