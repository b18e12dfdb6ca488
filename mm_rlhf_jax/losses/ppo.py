"""PPO-family losses, returned as (sum, count) pairs so packing, microbatching and sharding reduce exactly.

Token-level inputs are f32[B, T] with a response mask; divide sums by counts
after any cross-device/microbatch reduction.

  POLICY_LOSSES      ppo        token ratio, clipped (PPO; GRPO: TRL GRPOTrainer)
                     rloo       sequence ratio exp(sum_t logp - sum_t old_logp), clipped (TRL RLOOTrainer)
                     reinforce  -A_i * sum_t logp: the RLOO paper's REINFORCE estimator (on-policy only)
  LOSS_AGGREGATIONS  token      sum over tokens / response tokens of the minibatch (PPO; TRL "dapo", and
                                TRL "bnpo" too, because our normaliser is always the whole minibatch)
                     sequence   mean over sequences of each sequence's token mean (TRL "grpo", DeepSeekMath)
                     constant   sum over tokens / (sequences x max_new_tokens) (TRL "dr_grpo", Dr. GRPO)

A policy loss weighs its per-token (or per-sequence) terms by the aggregation's
weights f32[B, T]; the step divides the weighted sum by the aggregation's global
normaliser. Its clip-fraction and approx-KL sums are per token (masked), whatever
the aggregation, so those diagnostics always read as fractions of tokens.
"""

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from mm_rlhf_jax.registry import Registry


@flax.struct.dataclass
class PolicyLossTerms:
    loss_sum: jax.Array  # sum of the loss terms times the aggregation weights
    clipfrac_sum: jax.Array  # response tokens whose term was clipped (a clipped sequence counts all its tokens)
    approx_kl_sum: jax.Array  # k3 estimate of KL(old || new) on the sampled tokens
    count: jax.Array  # response tokens


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss fn(logp, old_logp, advantages, mask, *, weights, clip_eps, clip_eps_high).

    per_sequence: one term per sequence (its weight is the row's total aggregation weight, so only the
    `sequence` aggregation gives each sequence weight 1). on_policy: the estimator assumes the sampling
    policy is the one being updated (no importance ratio), so it is exact only with one update per rollout.
    """

    fn: Callable[..., PolicyLossTerms]
    per_sequence: bool = False
    on_policy: bool = False

    def __call__(self, *args, **kwargs) -> PolicyLossTerms:
        return self.fn(*args, **kwargs)


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def _weights(mask, weights):
    return jnp.asarray(mask if weights is None else weights, jnp.float32)


def _token_approx_kl(log_ratio, m):
    return jnp.sum((jnp.expm1(log_ratio) - log_ratio) * m)


def clipped_policy_loss(logp, old_logp, advantages, mask, *, clip_eps: float = 0.2,
                        clip_eps_high: float | None = None, weights=None) -> PolicyLossTerms:
    """-min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A) per token (eps_high defaults to eps).

    weights f32[B, T] (default: the mask) weigh each token's term in loss_sum.
    """
    m = jnp.asarray(mask, jnp.float32)
    w = _weights(m, weights)
    log_ratio = jnp.asarray(logp, jnp.float32) - jnp.asarray(old_logp, jnp.float32)
    ratio = jnp.exp(log_ratio)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)
    per_token = jnp.maximum(unclipped, clipped)
    return PolicyLossTerms(
        loss_sum=jnp.sum(per_token * w),
        clipfrac_sum=jnp.sum((clipped > unclipped).astype(jnp.float32) * m),
        approx_kl_sum=_token_approx_kl(log_ratio, m),
        count=jnp.sum(m),
    )


def sequence_advantage(advantages, mask):
    """f32[B]: each row's advantage, constant over its response tokens (the mean over them; 0 if empty)."""
    m = jnp.asarray(mask, jnp.float32)
    return jnp.sum(jnp.asarray(advantages, jnp.float32) * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)


def sequence_clipped_policy_loss(logp, old_logp, advantages, mask, *, clip_eps: float = 0.2,
                                 clip_eps_high: float | None = None, weights=None) -> PolicyLossTerms:
    """-min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps_high) A_i), rho_i = exp(sum_t logp - sum_t old_logp).

    TRL RLOOTrainer's loss: the whole response is one action, so the ratio is
    the sequence likelihood ratio. On the sampling policy (rho = 1) its gradient
    is -A_i grad log pi(y_i | x), the RLOO paper's REINFORCE estimator.
    """
    m = jnp.asarray(mask, jnp.float32)
    row_w = jnp.sum(_weights(m, weights), -1)
    token_log_ratio = (jnp.asarray(logp, jnp.float32) - jnp.asarray(old_logp, jnp.float32)) * m
    ratio = jnp.exp(jnp.sum(token_log_ratio, -1))
    a = sequence_advantage(advantages, m)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -a * ratio
    clipped = -a * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)
    per_seq = jnp.maximum(unclipped, clipped)
    tokens = jnp.sum(m, -1)
    return PolicyLossTerms(
        loss_sum=jnp.sum(per_seq * row_w),
        clipfrac_sum=jnp.sum((clipped > unclipped).astype(jnp.float32) * tokens),
        approx_kl_sum=_token_approx_kl(token_log_ratio, m),
        count=jnp.sum(tokens),
    )


def reinforce_policy_loss(logp, old_logp, advantages, mask, *, clip_eps: float = 0.2,
                          clip_eps_high: float | None = None, weights=None) -> PolicyLossTerms:
    """-A_i * sum_t logp_{i,t}: REINFORCE with the advantage as a fixed weight (RLOO paper, Ahmadian et al.).

    No ratio and no clipping (clip_eps unused): exact only while the policy is
    the one that sampled (one update per rollout batch).
    """
    del clip_eps, clip_eps_high
    m = jnp.asarray(mask, jnp.float32)
    row_w = jnp.sum(_weights(m, weights), -1)
    seq_logp = jnp.sum(jnp.asarray(logp, jnp.float32) * m, -1)
    log_ratio = (jnp.asarray(logp, jnp.float32) - jnp.asarray(old_logp, jnp.float32)) * m
    return PolicyLossTerms(
        loss_sum=jnp.sum(-sequence_advantage(advantages, m) * seq_logp * row_w),
        clipfrac_sum=jnp.zeros((), jnp.float32),
        approx_kl_sum=_token_approx_kl(log_ratio, m),
        count=jnp.sum(m),
    )


POLICY_LOSSES.register("ppo")(PolicyLoss(clipped_policy_loss))
POLICY_LOSSES.register("rloo")(PolicyLoss(sequence_clipped_policy_loss, per_sequence=True))
POLICY_LOSSES.register("reinforce")(PolicyLoss(reinforce_policy_loss, per_sequence=True, on_policy=True))


# ------------------------------------------------------------------------------------------ aggregations


@dataclasses.dataclass(frozen=True)
class LossAggregation:
    """loss = sum_{i,t} weights(mask)[i,t] * l_{i,t} / counts[normaliser] (counts: the minibatch's, global)."""

    weights: Callable[[jax.Array], jax.Array]  # f32[B, T] response mask -> f32[B, T]
    normaliser: str  # "tokens" | "sequences" | "token_slots" (algorithms/ppo/step.counts)


def _per_sequence_mean_weights(mask):
    # 1 / |o_i| on each response token: a row contributes its token mean; an empty row contributes 0 (as TRL's
    # clamp(min=1)) but still counts as a sequence.
    m = jnp.asarray(mask, jnp.float32)
    return m / jnp.maximum(jnp.sum(m, -1, keepdims=True), 1.0)


LOSS_AGGREGATIONS: Registry[LossAggregation] = Registry("loss aggregation")
LOSS_AGGREGATIONS.register("token")(LossAggregation(lambda m: jnp.asarray(m, jnp.float32), "tokens"))
LOSS_AGGREGATIONS.register("sequence")(LossAggregation(_per_sequence_mean_weights, "sequences"))
LOSS_AGGREGATIONS.register("constant")(LossAggregation(lambda m: jnp.asarray(m, jnp.float32), "token_slots"))


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
    sequence reward on the last response token. f32[B, T].

    A sequence estimator (grpo, rloo) sums them: score - kl_coef * sum_t kl_t, the
    sequence-level penalty of TRL's RLOOTrainer (k1: sum_t old_logp - ref_logp)."""
    m = jnp.asarray(mask, jnp.float32)
    t = m.shape[-1]
    last = t - 1 - jnp.argmax(m[:, ::-1] > 0, axis=-1)
    final = jax.nn.one_hot(last, t) * jnp.asarray(sequence_reward, jnp.float32)[:, None]
    return (final - kl_coef * kl) * m
