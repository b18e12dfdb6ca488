"""Both Pallas TPU kernels compile through Mosaic (interpret=False), forward and
backward, for every TPU generation the tables cover: libtpu's ahead-of-time
compiler on this host, one chip of a jax topology. This checks what lowering does
not: VMEM allocation against the chip's capacity, layouts, the scoped VMEM limit.

Default suite: small production-like shapes (head dims 64 / 72 / 128, GQA 7:1 and
4:1, ragged lengths, vocab not a multiple of the tile, f32 and bf16 heads).
`-m slow`: Qwen2-7B shapes (28 / 4 heads, head 128, T 8192, bf16; LM head 3584 x 152064).
"""

import jax
import jax.numpy as jnp
import pytest

from mm_rlhf_jax.kernels import attention, chips, token_logprobs, tpu_topology

pytestmark = pytest.mark.skipif(not tpu_topology.libtpu_available(),
                                reason="needs libtpu (pip install 'jax[tpu]') for ahead-of-time TPU compiles")

S = jax.ShapeDtypeStruct
BF16, F32, I32 = jnp.bfloat16, jnp.float32, jnp.int32
GENERATIONS = chips.generations()
MiB = 2**20


def _attention_loss(branches=False, **kw):
    def loss(q, k, v, seg):
        out = attention(q, k, v, segment_ids=seg, branch_ids=seg % 3 if branches else None,
                        impl="pallas_tpu", interpret=False, **kw)
        return jnp.sum(out.astype(F32) ** 2)
    return loss


# name -> (B, T, Hq, Hkv, D, options): Qwen2-like 7:1 GQA with packed shared-prompt
# branches; SigLIP-like head 72, bidirectional; Llama-like 4:1 with window and soft-cap;
# plain packed 4:1 at head 128.
ATTENTION = {
    "d128_gqa7_branches": (1, 1000, 14, 2, 128, dict(branches=True)),
    "d72_bidirectional": (2, 729, 4, 4, 72, dict(causal=False)),
    "d64_gqa4_window_softcap": (1, 1000, 8, 2, 64, dict(sliding_window=300, logit_soft_cap=30.0)),
    "d128_gqa4_packed": (2, 1000, 8, 2, 128, dict()),
}
# The default suite compiles one config per generation (each Mosaic compile takes
# 3-15 s on this host); `-m slow` compiles every config for every generation.
DEFAULT_PAIRS = list(zip(GENERATIONS, ATTENTION))
ALL_PAIRS = [(g, c) for g in GENERATIONS for c in ATTENTION]


def _check_attention_compiles(generation, config):
    b, t, hq, hkv, d, options = ATTENTION[config]
    dtype = BF16
    loss = _attention_loss(**options)
    shapes = (S((b, t, hq, d), dtype), S((b, t, hkv, d), dtype), S((b, t, hkv, d), dtype), S((b, t), I32))
    compiled = tpu_topology.compile_for_chip(generation, jax.value_and_grad(loss, argnums=(0, 1, 2)), shapes)
    text = compiled.as_text()
    for name in ("mm_flash_fwd", "mm_flash_dq", "mm_flash_dkv"):
        assert name in text, name
    # pl.CostEstimate reaches XLA's cost model: forward + backward >= 2.5x the forward's
    # matmul FLOPs of the causal half (a pallas_call without an estimate counts 0).
    causal = 0.5 if options.get("causal", True) else 1.0
    flops = tpu_topology.summary(compiled)["flops"]
    assert flops >= 2.5 * 4 * b * hq * t * t * d * causal * 0.5, flops


@pytest.mark.parametrize("generation, config", DEFAULT_PAIRS)
def test_attention_compiles(generation, config):
    _check_attention_compiles(generation, config)


@pytest.mark.slow
@pytest.mark.parametrize("generation, config", [p for p in ALL_PAIRS if p not in DEFAULT_PAIRS])
def test_attention_compiles_every_config(generation, config):
    _check_attention_compiles(generation, config)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_token_logprobs_compiles_without_copies_of_w(generation):
    """N = 520 and V = 20096 = 157 x 128 are not tile multiples (real vocabularies are
    128-multiples; XLA may lay out other [H, V] arguments column-major and copy them);
    f32 master head with bf16 hidden on v4 / v5p, bf16 head elsewhere; entropy and
    temperature on. One program, forward + backward: beyond dh and dW themselves it
    holds nothing of W's size (no padded copy of W, no transposed dW)."""
    n, h, v = 520, 512, 20096  # small N: Mosaic compile time grows with the (clamped) token tile
    w_dtype = F32 if generation in ("v4", "v5p") else BF16

    def grad_sums(x, w, l):  # consumed in the program, so XLA picks no output layout for dW
        def loss(x, w):
            logp, ent = token_logprobs(x, w, l, temperature=0.9, return_entropy=True, impl="pallas_tpu",
                                       interpret=False)
            return jnp.sum(logp) + jnp.sum(ent)
        return jax.tree.map(lambda g: jnp.sum(g.astype(F32) ** 2), jax.grad(loss, argnums=(0, 1))(x, w))

    compiled = tpu_topology.compile_for_chip(generation, grad_sums,
                                             (S((1, n, h), BF16), S((h, v), w_dtype), S((1, n), I32)))
    summary = tpu_topology.summary(compiled)
    w_bytes = h * v * jnp.dtype(w_dtype).itemsize
    assert summary["temp_mib"] * MiB < n * h * 2 + w_bytes + w_bytes / 8, summary
    text = compiled.as_text()
    for name in ("mm_token_logprobs_fwd", "mm_token_logprobs_dh", "mm_token_logprobs_dw"):
        assert name in text, name
    assert summary["flops"] >= 10 * n * h * v  # 2 NHV forward + 4 NHV per backward kernel


# ----------------------------------------------------------------------------- 7B shapes


@pytest.mark.slow
@pytest.mark.parametrize("generation", GENERATIONS)
def test_qwen2_7b_shapes_compile(generation):
    t, hq, hkv, d = 8192, 28, 4, 128
    att = (S((1, t, hq, d), BF16), S((1, t, hkv, d), BF16), S((1, t, hkv, d), BF16), S((1, t), I32))
    tpu_topology.compile_for_chip(generation, jax.value_and_grad(_attention_loss(), argnums=(0, 1, 2)), att)

    n, h, v = t, 3584, 152064
    lm = (S((1, n, h), BF16), S((h, v), BF16), S((1, n), I32))
    fwd = lambda x, w, l: token_logprobs(x, w, l, impl="pallas_tpu", interpret=False)
    fwd_s = tpu_topology.summary(tpu_topology.compile_for_chip(generation, fwd, lm))
    assert fwd_s["temp_mib"] < 256, fwd_s  # W itself is 1,040 MiB
    loss = lambda x, w, l: jnp.sum(fwd(x, w, l))
    bwd_s = tpu_topology.summary(tpu_topology.compile_for_chip(generation, jax.grad(loss, argnums=(0, 1)), lm))
    assert bwd_s["temp_mib"] < 256, bwd_s


@pytest.mark.slow
def test_wide_head_fits_v4():
    """H = 16384, V = 128256 (a 405B-class head) on v4's 16 MiB: the backward's f32
    [bn, H] / [H, bv] accumulators get smaller tiles than the table's (with the
    table's, the dh kernel needs 19.7 MiB)."""
    n, h, v = 4096, 16384, 128256
    lm = (S((1, n, h), BF16), S((h, v), BF16), S((1, n), I32))
    loss = lambda x, w, l: jnp.sum(token_logprobs(x, w, l, impl="pallas_tpu", interpret=False))
    tpu_topology.compile_for_chip("v4", jax.grad(loss, argnums=(0, 1)), lm)


def test_token_logprobs_with_an_indivisible_token_count_compiles_on_a_mesh():
    """One token per row of a 1-row microbatch on a 4-chip fsdp x sequence mesh: no mesh axis divides
    N = 1, and a Mosaic call cannot be partitioned automatically, so the call pads N to the mesh and runs
    inside its shard_map (the LongPO step's rescored first rejected token on a v6e-8 hit this)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from mm_rlhf_jax import aot
    from mm_rlhf_jax.sharding import make_mesh

    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 1, "sequence": 2}, devices=aot.topology_devices("v5e:2x2"))
    h, v = 256, 4096

    def grad_sums(x, w, l):
        def loss(x, w):
            return jnp.sum(token_logprobs(x, w, l, impl="pallas_tpu", interpret=False))
        return jax.tree.map(lambda g: jnp.sum(g.astype(F32) ** 2), jax.grad(loss, argnums=(0, 1))(x, w))

    rep = NamedSharding(mesh, P())
    args = (S((1, 1, h), BF16, sharding=rep), S((h, v), BF16, sharding=NamedSharding(mesh, P("fsdp", None))),
            S((1, 1), I32, sharding=rep))
    with jax.set_mesh(mesh):
        text = jax.jit(grad_sums).lower(*args).compile().as_text()
    assert "mm_token_logprobs_fwd" in text and "mm_token_logprobs_dw" in text
