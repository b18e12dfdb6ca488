"""`token_logprobs`: fused LM head + log-softmax + gather, never holding [B, T, V].

impl is chosen for the TARGET platform (`kernels.dispatch`):

impl      | cpu                      | gpu                  | tpu
----------|--------------------------|----------------------|--------------------
"auto"    | xla (chunked)            | xla (chunked)        | pallas_tpu (Mosaic)
"pallas"  | pallas_tpu, interpreted  | pallas_gpu           | pallas_tpu
"xla"     | xla (chunked)            | xla (chunked)        | xla (chunked)
"reference" materialises [B, T, V] (tests, tiny shapes only).

GPU "auto" is the chunked XLA path (cuBLAS GEMMs over 1024-token chunks): the
Triton kernel's backward accumulates dh and dW with f32 atomics (~0.5 TB of HBM
read-modify-write at N = 16K, V = 152K) and has not been measured faster; run
bench/kernels_gpu.py on a GPU before changing this.
"""

import jax.numpy as jnp

from mm_rlhf_jax.kernels import dispatch, per_shard
from mm_rlhf_jax.kernels.token_logprobs import blocks as tables
from mm_rlhf_jax.kernels.token_logprobs import common, reference
from mm_rlhf_jax.kernels.token_logprobs.pallas_gpu import token_logprobs_pallas_gpu
from mm_rlhf_jax.kernels.token_logprobs.sharded import token_logprobs_pallas_tpu
from mm_rlhf_jax.kernels.token_logprobs.xla_chunked import token_logprobs_xla
from mm_rlhf_jax.registry import Registry

IMPLS = Registry("token_logprobs impl")
IMPLS.register("xla")(token_logprobs_xla)
IMPLS.register("pallas_tpu")(token_logprobs_pallas_tpu)
IMPLS.register("pallas_gpu")(token_logprobs_pallas_gpu)

# Target platform -> impl; other platforms get "xla".
AUTO = {"cpu": "xla", "gpu": "xla", "tpu": "pallas_tpu"}
PALLAS = {"cpu": "pallas_tpu", "gpu": "pallas_gpu", "tpu": "pallas_tpu"}


def resolve_impl(impl: str, platform: str | None = None) -> str:
    """Maps "auto" / "pallas" to a registered impl for `platform` (default: the target's)."""
    target = dispatch.Target(platform) if platform else None
    return dispatch.resolve_impl("token_logprobs", impl, IMPLS, auto=AUTO, pallas=PALLAS, target=target)


def token_logprobs(
    hidden,
    w,
    labels,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    impl: str = "auto",
    block_sizes: common.BlockSizes | None = None,
    interpret=None,
    vocab_parallel: bool | None = None,
):
    """Per-token log p(labels | hidden) under logits = hidden @ w / temperature.

    Args:
      hidden: [B, T, H] (any leading shape [..., H]), f32 / bf16 / f16. Its dtype is
        the compute dtype of the Pallas kernels.
      w: [H, V] LM head, f32 / bf16 / f16. The Pallas TPU kernels cast W tiles to the
        compute dtype in VMEM (an f32 master weight needs no bf16 copy) and
        accumulate products and dW in f32; dW comes back in w's dtype.
      labels: int[B, T] in [0, V) (any valid id at masked positions).
      temperature: static Python float > 0.
      return_entropy: also return the entropy of the (tempered) distribution.
      impl: "auto" | "pallas" | "xla" | "reference" | "pallas_tpu" | "pallas_gpu".
      block_sizes: overrides the tables in `blocks.py` (per TPU generation).
      interpret: run Pallas kernels in interpret mode (default: unless the target
        platform is the kernel's own); a `pltpu.InterpretParams` runs the TPU
        variant in TPU interpret mode.
      vocab_parallel: pallas_tpu under a mesh: split W over the "tensor" axis on V
        (None: whenever that axis divides V; False: gather W; True: required).
    Returns:
      f32[B, T] log-probs, and f32[B, T] entropies if return_entropy. The backward
      gives exact per-token gradients for both outputs.
    """
    n, h, v = common.validate(hidden, w, labels, temperature)
    target = dispatch.current_target()
    impl = dispatch.resolve_impl("token_logprobs", impl, IMPLS, auto=AUTO, pallas=PALLAS, target=target)
    if impl == "reference":
        return reference.token_logprobs_reference(
            hidden, w, labels, temperature=temperature, return_entropy=return_entropy)
    blocks = block_sizes or tables.default_block_sizes(impl, h, v, platform=target.platform,
                                                       generation=target.generation)
    interpret = dispatch.resolve_interpret(impl, interpret, target)
    kw = dict(inv_temp=1.0 / float(temperature), with_entropy=bool(return_entropy), blocks=blocks,
              interpret=interpret)
    flat = (hidden.reshape(n, h), w, labels.reshape(n).astype(jnp.int32))
    if impl == "pallas_tpu":  # shards itself over the ambient mesh (token- / vocab-parallel)
        kw.update(vmem_limit=tables.tpu_table(target.generation).vmem_limit_bytes, vocab_parallel=vocab_parallel)
        logp, ent = IMPLS.get(impl)(*flat, **kw)
    elif impl.startswith("pallas"):  # opaque to the partitioner: one call per token shard
        logp, ent = per_shard.token_logprobs(lambda *a: IMPLS.get(impl)(*a, **kw), *flat)
    else:
        logp, ent = IMPLS.get(impl)(*flat, **kw)
    shape = labels.shape
    return (logp.reshape(shape), ent.reshape(shape)) if return_entropy else logp.reshape(shape)


def next_token_logprobs(hidden, w, input_ids, *, temperature: float = 1.0, return_entropy: bool = False,
                        **kwargs):
    """log p(input_ids[:, t] | < t) for t >= 1, aligned to input_ids; position 0 gets 0.

    hidden [B, T, H] (the state at t scores token t + 1), input_ids int[B, T]. Scores
    all T positions (the last against a dummy label, then dropped) instead of slicing
    hidden[:, :-1]: B * (T - 1) tokens would not divide a sequence-sharded mesh
    axis, so the kernel would run unsplit on every sequence rank. Only the int ids
    and the f32 [B, T] results are shifted. kwargs as `token_logprobs`.
    """
    labels = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    out = token_logprobs(hidden, w, labels, temperature=temperature, return_entropy=return_entropy, **kwargs)
    shift = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    return (shift(out[0]), shift(out[1])) if return_entropy else shift(out)
