"""`token_logprobs`: fused LM head + log-softmax + gather, never holding [B, T, V].

impl      | cpu                      | gpu                  | tpu
----------|--------------------------|----------------------|--------------------
"auto"    | xla (chunked)            | pallas_gpu (Triton)  | pallas_tpu (Mosaic)
"pallas"  | pallas_tpu, interpreted  | pallas_gpu           | pallas_tpu
"xla"     | xla (chunked)            | xla (chunked)        | xla (chunked)
"reference" materialises [B, T, V] (tests, tiny shapes only).
"""

import jax
import jax.numpy as jnp

from mm_rlhf_jax.kernels import per_shard
from mm_rlhf_jax.kernels.token_logprobs import common, reference
from mm_rlhf_jax.kernels.token_logprobs.blocks import default_block_sizes
from mm_rlhf_jax.kernels.token_logprobs.pallas_gpu import token_logprobs_pallas_gpu
from mm_rlhf_jax.kernels.token_logprobs.pallas_tpu import token_logprobs_pallas_tpu
from mm_rlhf_jax.kernels.token_logprobs.xla_chunked import token_logprobs_xla
from mm_rlhf_jax.registry import Registry

IMPLS = Registry("token_logprobs impl")
IMPLS.register("xla")(token_logprobs_xla)
IMPLS.register("pallas_tpu")(token_logprobs_pallas_tpu)
IMPLS.register("pallas_gpu")(token_logprobs_pallas_gpu)

# Backend (jax.default_backend()) -> impl; other backends fall back to "xla".
_AUTO = {"cpu": "xla", "gpu": "pallas_gpu", "tpu": "pallas_tpu"}
_PALLAS = {"cpu": "pallas_tpu", "gpu": "pallas_gpu", "tpu": "pallas_tpu"}


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """Maps "auto" / "pallas" to a concrete registered impl for `backend`."""
    backend = backend or jax.default_backend()
    if impl == "auto":
        return _AUTO.get(backend, "xla")
    if impl == "pallas":
        if backend not in _PALLAS:
            raise ValueError(f"no Pallas variant for backend {backend!r}; use impl='xla'")
        return _PALLAS[backend]
    if impl == "reference" or impl in IMPLS:
        return impl
    raise ValueError(
        f"token_logprobs: unknown impl {impl!r}; use auto, pallas, xla, reference or one of {IMPLS.names()}"
    )


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
):
    """Per-token log p(labels | hidden) under logits = hidden @ w / temperature.

    Args:
      hidden: [B, T, H] (any leading shape [..., H]), f32 / bf16 / f16.
      w: [H, V] LM head, same dtypes; products accumulate in f32.
      labels: int[B, T] in [0, V) (any valid id at masked positions).
      temperature: static Python float > 0.
      return_entropy: also return the entropy of the (tempered) distribution.
      impl: "auto" | "pallas" | "xla" | "reference" | "pallas_tpu" | "pallas_gpu".
      block_sizes: overrides the per-backend table in `blocks.py`.
      interpret: run Pallas kernels in interpret mode (default: on CPU only); a
        `pltpu.InterpretParams` runs the TPU variant in TPU interpret mode.
    Returns:
      f32[B, T] log-probs, and f32[B, T] entropies if return_entropy. The backward
      gives exact per-token gradients for both outputs.
    """
    n, h, v = common.validate(hidden, w, labels, temperature)
    impl = resolve_impl(impl)
    if impl == "reference":
        return reference.token_logprobs_reference(
            hidden, w, labels, temperature=temperature, return_entropy=return_entropy)
    blocks = block_sizes or default_block_sizes(impl, h, v)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    kernel = lambda hh, ww, ll: IMPLS.get(impl)(
        hh, ww, ll, inv_temp=1.0 / float(temperature), with_entropy=bool(return_entropy), blocks=blocks,
        interpret=interpret)
    flat = (hidden.reshape(n, h), w, labels.reshape(n).astype(jnp.int32))
    if impl.startswith("pallas"):  # opaque to the partitioner: one call per token shard of the mesh
        logp, ent = per_shard.token_logprobs(kernel, *flat)
    else:
        logp, ent = kernel(*flat)
    shape = labels.shape
    return (logp.reshape(shape), ent.reshape(shape)) if return_entropy else logp.reshape(shape)
