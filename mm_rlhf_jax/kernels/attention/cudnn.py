"""cuDNN flash attention through `jax.nn.dot_product_attention`: the GPU default.

cuDNN's fused kernel (FA2/FA3-class on Ampere / Hopper) covers causal and
sliding-window self-attention with GQA in bf16 / f16; the Pallas Triton kernel
(pallas_gpu.py, FA2-class, on a backend jax 0.11 deprecates) is kept for what it
does not express: packed segments, shared-prompt branches, logit soft-cap, a query
offset (KV cache, context parallelism) and f32. `supports` is the rule `auto` uses.
"""

import jax
import jax.numpy as jnp

from mm_rlhf_jax.kernels.attention import common

_DTYPES = (jnp.bfloat16, jnp.float16)


def supports(q, k, *, segment_ids, branch_ids, q_offset, logit_soft_cap) -> bool:
    """Whether cuDNN computes this call exactly (static checks only)."""
    static_zero_offset = isinstance(q_offset, int) and not isinstance(q_offset, bool) and q_offset == 0
    return (segment_ids is None and branch_ids is None and logit_soft_cap is None and static_zero_offset
            and q.dtype in _DTYPES and q.shape[1] == k.shape[1] and q.shape[-1] % 8 == 0
            and q.shape[-1] <= 128)


def attention_cudnn(q, k, v, ids: common.Ids, spec: common.MaskSpec, blocks=None, interpret=None):
    """q[B, T, Hq, D], k/v[B, T, Hkv, D] -> [B, T, Hq, D]; ids must be the defaults
    (no segments / branches, offset 0): `supports` is checked by the caller."""
    del ids, blocks, interpret
    window = None
    if spec.window is not None:  # visible iff 0 <= i - j < W (causal) or i - j < W
        window = (spec.window - 1, 0 if spec.causal else q.shape[1])
    return jax.nn.dot_product_attention(q, k, v, scale=spec.scale, is_causal=spec.causal,
                                        local_window_size=window, implementation="cudnn")
