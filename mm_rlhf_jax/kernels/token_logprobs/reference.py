"""Pure-jnp token log-probs: materialises [B, T, V] logits. Tests and tiny shapes only."""

import jax
import jax.numpy as jnp


def token_logprobs_reference(hidden, w, labels, *, temperature: float = 1.0, return_entropy: bool = False):
    """hidden[B, T, H] @ w[H, V] -> log p(labels) f32[B, T] (and entropy f32[B, T])."""
    logits = jnp.einsum("bth,hv->btv", hidden, w, preferred_element_type=jnp.float32)
    logits = logits / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if not return_entropy:
        return logp
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy
