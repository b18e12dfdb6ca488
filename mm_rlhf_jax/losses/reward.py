"""Reward-model losses: Bradley-Terry, MM-RLHF's tie and centering terms, critique NLL.

The critique-based RM (MM-RLHF §3.2) trains the LM head on teacher critiques
(NLL) and a scalar head on (prompt, response, critique) with Bradley-Terry.
The released code adds a centering term and a tie term; both are exposed with
their weights so the paper's plain sum is the special case center=tie=0.
"""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class RewardLossTerms:
    """Per-batch sums and counts (reduce across devices/microbatches before dividing)."""

    bt_sum: jax.Array  # sum over non-tie pairs of -log sigmoid(r_c - r_r)
    bt_count: jax.Array
    tie_sum: jax.Array  # sum over tie pairs of (r_c - r_r)^2
    tie_count: jax.Array
    center_sum: jax.Array  # sum over pairs of (r_c + r_r)^2
    pair_count: jax.Array
    critique_sum: jax.Array  # sum over examples with a critique of (nll_c + nll_r)
    critique_count: jax.Array


def reward_loss_terms(r_chosen, r_rejected, *, is_tie=None, critique_nll=None, has_critique=None, weight=None):
    """Sums and counts of every RM loss term.

    Args:
      r_chosen, r_rejected: f32[B] scalar rewards.
      is_tie: bool[B]; tie pairs are pulled together instead of ranked.
      critique_nll: f32[B, 2] mean token NLL of the chosen/rejected critiques.
      has_critique: bool[B]; examples without a teacher critique skip the NLL.
      weight: f32[B] example weights (0 for padding examples).
    """
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    rc, rr = f32(r_chosen), f32(r_rejected)
    w = jnp.ones_like(rc) if weight is None else f32(weight)
    tie = jnp.zeros_like(rc) if is_tie is None else f32(is_tie)
    diff = rc - rr
    terms = dict(
        bt_sum=jnp.sum(w * (1 - tie) * -jax.nn.log_sigmoid(diff)),
        bt_count=jnp.sum(w * (1 - tie)),
        tie_sum=jnp.sum(w * tie * diff**2),
        tie_count=jnp.sum(w * tie),
        center_sum=jnp.sum(w * (rc + rr) ** 2),
        pair_count=jnp.sum(w),
        critique_sum=jnp.zeros(()),
        critique_count=jnp.zeros(()),
    )
    if critique_nll is not None:
        hc = jnp.ones_like(rc) if has_critique is None else f32(has_critique)
        terms["critique_sum"] = jnp.sum(w * hc * f32(critique_nll).sum(-1))
        terms["critique_count"] = jnp.sum(w * hc)
    return RewardLossTerms(**terms)


def combine_reward_loss(t: RewardLossTerms, *, score_weight=1.0, tie_weight=1.0, center_weight=0.01,
                        critique_weight=1.0):
    """Scalar loss and metrics from (already globally reduced) terms.

    loss = score_w * (mean BT + tie_w * mean tie) + center_w * mean center
           + critique_w * sum(critique NLL) / #pairs
    (the released RewardTrainer.compute_loss with float_rewards_weight=score_w,
    center_rewards_coefficient=center_w, critic_rewards_weight=critique_w: its
    critique term is averaged over all pairs, pairs without a critique adding 0).
    """
    mean = lambda s, n: s / jnp.maximum(n, 1.0)
    bt, tie = mean(t.bt_sum, t.bt_count), mean(t.tie_sum, t.tie_count)
    center = mean(t.center_sum, t.pair_count)
    critique = mean(t.critique_sum, t.pair_count)
    loss = score_weight * (bt + tie_weight * tie) + center_weight * center + critique_weight * critique
    metrics = {"rm/bt": bt, "rm/tie": tie, "rm/center": center,
               "rm/critique_nll": mean(t.critique_sum, 2.0 * t.critique_count)}
    return loss, metrics
