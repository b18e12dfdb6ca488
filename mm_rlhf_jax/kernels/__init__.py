"""Attention and token log-prob kernels. Callers import only these names.

`target_platform` / `current_target` (kernels.dispatch) select the platform and TPU
generation the kernels are traced for, e.g. for ahead-of-time TPU compiles on a CPU
host (see kernels/README.md).
"""

from mm_rlhf_jax.kernels.attention.api import attention
from mm_rlhf_jax.kernels.attention.decode import decode_attention
from mm_rlhf_jax.kernels.attention.context_parallel import context_parallel_attention, zigzag_permutation
from mm_rlhf_jax.kernels.dispatch import Target, current_target, target_platform
from mm_rlhf_jax.kernels.token_logprobs.api import next_token_logprobs, token_logprobs
