"""Per-token log-probs from hidden states, and their masked reductions.

Training never builds [B, T, V] logits: hidden states go through
kernels.token_logprobs, and a response token t is scored from the hidden state
at t - 1 (next-token prediction).
"""

import jax.numpy as jnp

from mm_rlhf_jax import kernels


def shifted_token_logprobs(hidden, lm_head_w, input_ids, *, temperature: float = 1.0,
                           return_entropy: bool = False, impl: str = "auto"):
    """log p(input_ids[:, t] | < t) for t >= 1, aligned to input_ids.

    Args:
      hidden: [N, T, H] final hidden states; lm_head_w: [H, V]; input_ids: int[N, T].
    Returns:
      f32[N, T] with position 0 set to 0 (it has no prediction), and entropy
      f32[N, T] of the predictive distribution for token t if return_entropy.
    """
    # All T positions go through the kernel (the last against a dummy label), so a sequence-sharded
    # token axis still divides: slicing hidden[:, :-1] would leave N * (T - 1) tokens.
    return kernels.next_token_logprobs(hidden, lm_head_w, input_ids, temperature=temperature,
                                       return_entropy=return_entropy, impl=impl)


def masked_sum(x, mask):
    """(sum over the last axis of x * mask, count of mask) in f32."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * mask, axis=-1), jnp.sum(mask, axis=-1)
