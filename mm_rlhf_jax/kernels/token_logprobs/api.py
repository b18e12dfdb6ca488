"""`token_logprobs`: fused LM head + log-softmax + gather, never holding [B, T, V]."""

from mm_rlhf_jax.kernels.token_logprobs import reference


def token_logprobs(hidden, w, labels, *, temperature: float = 1.0, return_entropy: bool = False, impl: str = "auto"):
    """Per-token log p(labels | hidden) under logits = hidden @ w / temperature.

    Args:
      hidden: [B, T, H]; w: [H, V]; labels: int[B, T] (any valid id at masked positions).
    Returns:
      f32[B, T] log-probs, and f32[B, T] entropies if return_entropy.
    """
    del impl  # Only the reference path exists so far.
    return reference.token_logprobs_reference(
        hidden, w, labels, temperature=temperature, return_entropy=return_entropy
    )
