"""The TPU (Mosaic) and GPU (Triton) variants lower from this CPU host, forward and
backward, with production-sized tiles. Lowering runs the Pallas -> Mosaic / Triton
translation (block-shape rules, supported primitives); compiling for the device
(VMEM / register limits) needs the device itself."""

import jax
import jax.numpy as jnp
import pytest

from mm_rlhf_jax.kernels import attention, token_logprobs

PLATFORMS = [("pallas_tpu", "tpu", "tpu_custom_call"), ("pallas_gpu", "cuda", "__gpu$xla.gpu.triton")]
BF16, F32, I32 = jnp.bfloat16, jnp.float32, jnp.int32


def _lower(f, platform, *shapes):
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


ATTENTION_CONFIGS = {
    # Training: bf16, causal, packed segments, 4:1 GQA, T not a tile multiple.
    "train": (dict(), [((2, 1000, 8, 128), BF16), ((2, 1000, 2, 128), BF16), ((2, 1000), I32)]),
    # Everything on: shared-prompt branches, traced q_offset, window, soft-cap, f32, head_dim 64.
    "all_options": (dict(sliding_window=300, logit_soft_cap=30.0, causal=True),
                    [((1, 384, 4, 64), F32), ((1, 384, 4, 64), F32), ((1, 384), I32)]),
}


@pytest.mark.parametrize("config", list(ATTENTION_CONFIGS))
@pytest.mark.parametrize("impl, platform, marker", PLATFORMS)
def test_attention_lowers(impl, platform, marker, config):
    extra, (q_shape, kv_shape, ids_shape) = ATTENTION_CONFIGS[config]
    branches = config == "all_options"

    def loss(q, k, v, seg, q_offset):
        out = attention(q, k, v, segment_ids=seg, branch_ids=seg if branches else None,
                        q_offset=q_offset if branches else 0, impl=impl, interpret=False, **extra)
        return jnp.sum(out.astype(F32) ** 2)

    shapes = [q_shape, kv_shape, kv_shape, ids_shape, ((), I32)]
    fwd = _lower(loss, platform, *shapes)
    bwd = _lower(jax.grad(loss, argnums=(0, 1, 2)), platform, *shapes)
    assert fwd.count(marker) == 1, "one forward kernel"
    assert bwd.count(marker) == 3, "forward + dq + dkv kernels"


@pytest.mark.parametrize("impl, platform, marker", PLATFORMS)
@pytest.mark.parametrize("dtype", [BF16, F32])
def test_token_logprobs_lowers(impl, platform, marker, dtype):
    """V = 32003 and N = 4000 are not tile multiples; entropy and temperature on."""

    def loss(h, w, labels):
        logp, ent = token_logprobs(h, w, labels, temperature=0.8, return_entropy=True, impl=impl,
                                   interpret=False)
        return jnp.sum(logp) + jnp.sum(ent)

    shapes = [((4, 1000, 1024), dtype), ((1024, 32003), dtype), ((4, 1000), I32)]
    fwd = _lower(loss, platform, *shapes)
    bwd = _lower(jax.grad(loss, argnums=(0, 1)), platform, *shapes)
    assert fwd.count(marker) == 1
    # TPU: forward + dh + dw kernels; GPU: forward + one fused backward kernel.
    assert bwd.count(marker) == (3 if platform == "tpu" else 2)
