"""Attention and token log-prob kernels. Callers import only these two functions."""

from mm_rlhf_jax.kernels.attention.api import attention
from mm_rlhf_jax.kernels.token_logprobs.api import token_logprobs
from mm_rlhf_jax.kernels.attention.context_parallel import context_parallel_attention, zigzag_permutation
