"""PPO losses, returned as (sum, count) pairs so packing, microbatching and sharding reduce exactly.

Token-level inputs are f32[B, T] with a response mask; divide sums by counts
after any cross-device/microbatch reduction.
"""

import flax.struct
import jax
import jax.numpy as jnp

from mm_rlhf_jax.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")


@flax.struct.dataclass
class PolicyLossTerms:
    loss_sum: jax.Array
    clipfrac_sum: jax.Array
    approx_kl_sum: jax.Array  # k3 estimate of KL(old || new) on the sampled tokens
    count: jax.Array


@POLICY_LOSSES.register("ppo")
def clipped_policy_loss(logp, old_logp, advantages, mask, *, clip_eps: float = 0.2,
                        clip_eps_high: float | None = None) -> PolicyLossTerms:
    """-min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A) per token (eps_high defaults to eps)."""
    m = jnp.asarray(mask, jnp.float32)
    log_ratio = jnp.asarray(logp, jnp.float32) - jnp.asarray(old_logp, jnp.float32)
    ratio = jnp.exp(log_ratio)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)
    per_token = jnp.maximum(unclipped, clipped)
    return PolicyLossTerms(
        loss_sum=jnp.sum(per_token * m),
        clipfrac_sum=jnp.sum((clipped > unclipped).astype(jnp.float32) * m),
        approx_kl_sum=jnp.sum((jnp.expm1(log_ratio) - log_ratio) * m),
        count=jnp.sum(m),
    )


def value_loss(values, old_values, returns, mask, *, clip_eps: float | None = 0.2):
    """(sum, count) of 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, +-eps)."""
    m = jnp.asarray(mask, jnp.float32)
    v = jnp.asarray(values, jnp.float32)
    loss = (v - returns) ** 2
    if clip_eps is not None:
        v_clipped = old_values + jnp.clip(v - old_values, -clip_eps, clip_eps)
        loss = jnp.maximum(loss, (v_clipped - returns) ** 2)
    return jnp.sum(0.5 * loss * m), jnp.sum(m)


def entropy_bonus(entropy, mask):
    """(sum, count) of per-token policy entropy (added to the objective with a coefficient)."""
    m = jnp.asarray(mask, jnp.float32)
    return jnp.sum(jnp.asarray(entropy, jnp.float32) * m), jnp.sum(m)


def kl_shaped_rewards(sequence_reward, kl, mask, *, kl_coef: float):
    """Token rewards for in-reward KL: -kl_coef * kl_t on every response token, plus the
    sequence reward on the last response token. f32[B, T]."""
    m = jnp.asarray(mask, jnp.float32)
    t = m.shape[-1]
    last = t - 1 - jnp.argmax(m[:, ::-1] > 0, axis=-1)
    final = jax.nn.one_hot(last, t) * jnp.asarray(sequence_reward, jnp.float32)[:, None]
    return (final - kl_coef * kl) * m
