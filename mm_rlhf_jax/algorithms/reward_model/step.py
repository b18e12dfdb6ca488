"""Critique-based reward model (MM-RLHF §3.2) train and scoring steps.

Each pair holds two sequences [critic prompt(x, y) ; critique c] (chosen and
rejected). The LM head learns the teacher critiques (token NLL, teacher
forcing) and a scalar RewardHead reads the last non-pad token:

loss = score_w * (BT(r_c - r_r) on non-ties + tie_w * (r_c - r_r)^2 on ties)
       + center_w * (r_c + r_r)^2 + critique_w * (NLL_c + NLL_r)

With critique=False ("reward_scalar" data: no critique in the sequence) the
critique term is dropped: the paper's scalar-only ablation.
"""

import jax
import jax.numpy as jnp
import ml_collections

from mm_rlhf_jax.losses import reward as reward_losses
from mm_rlhf_jax.losses.logprobs import masked_sum, shifted_token_logprobs
from mm_rlhf_jax.train import forward, state as state_lib


def rm_outputs(module, params, batch, *, with_critique_nll: bool, rng=None):
    """(rewards f32[B, 2], critique mean NLL f32[B, 2] or None); rng enables dropout."""
    b, n, t = batch["input_ids"].shape
    kw = {} if rng is None else dict(deterministic=False, rngs={"dropout": rng})
    out = forward.forward_pairs(module, params, batch, **kw)
    rewards = out.rewards[:, 0].reshape(b, n)
    nll = None
    if with_critique_nll:
        lp = shifted_token_logprobs(out.hidden_states, module.lm_head_weight(params),
                                    batch["input_ids"].reshape(b * n, t))
        sums, counts = masked_sum(lp, batch["loss_mask"].reshape(b * n, t))
        nll = (-sums / jnp.maximum(counts, 1.0)).reshape(b, n)
    return rewards, nll


def rm_loss(module, params, batch, rng, c: ml_collections.ConfigDict, *, critique: bool):
    """(loss, metrics); c is the config's `reward` block, critique whether sequences carry critiques."""
    critique_weight = c.critique_weight if critique else 0.0
    rewards, nll = rm_outputs(module, params, batch, with_critique_nll=critique_weight > 0, rng=rng)
    terms = reward_losses.reward_loss_terms(rewards[:, 0], rewards[:, 1], is_tie=batch["is_tie"],
                                            critique_nll=nll, has_critique=batch.get("has_critique"))
    loss, metrics = reward_losses.combine_reward_loss(
        terms, score_weight=c.score_weight, tie_weight=c.tie_weight, center_weight=c.center_weight,
        critique_weight=critique_weight)
    non_tie = 1.0 - batch["is_tie"].astype(jnp.float32)
    correct = (rewards[:, 0] > rewards[:, 1]).astype(jnp.float32)
    metrics.update({
        "train/loss": loss,
        "rm/accuracy": jnp.sum(correct * non_tie) / jnp.maximum(jnp.sum(non_tie), 1.0),
        "rm/reward_chosen": jnp.mean(rewards[:, 0]),
        "rm/reward_rejected": jnp.mean(rewards[:, 1]),
    })
    return loss, metrics


def train_step(state, batch, *, module, tx, mask, c, critique: bool):
    rng = jax.random.fold_in(state.rng, state.step)
    return state_lib.minimize(lambda params, b: rm_loss(module, params, b, rng, c, critique=critique), state,
                              batch, tx, mask)


def score_step(params, batch, *, module):
    """Rewards f32[B, 2] of (already complete) critic-prompt + critique sequences."""
    return rm_outputs(module, params, batch, with_critique_nll=False)[0]
