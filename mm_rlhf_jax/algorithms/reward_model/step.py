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


def counts(batch) -> dict:
    """The global normalisers of a batch: non-tie pairs, tie pairs, pairs, pairs with a teacher critique."""
    tie = jnp.asarray(batch["is_tie"]).astype(jnp.float32)
    has = batch.get("has_critique")
    return {"bt_count": jnp.sum(1.0 - tie), "tie_count": jnp.sum(tie), "pair_count": jnp.float32(tie.shape[0]),
            "critique_count": jnp.zeros(()) if has is None else jnp.sum(jnp.asarray(has).astype(jnp.float32))}


def rm_loss(module, params, batch, rng, c: ml_collections.ConfigDict, n: dict, *, critique: bool):
    """(loss, metrics) of (a microbatch of) a batch with global normalisers n (see counts).

    c is the config's `reward` block; critique: whether sequences carry critiques.
    The loss terms' sums are this microbatch's, their counts the whole batch's,
    so microbatches add up to the full-batch loss.
    """
    critique_weight = c.critique_weight if critique else 0.0
    rewards, nll = rm_outputs(module, params, batch, with_critique_nll=critique_weight > 0, rng=rng)
    terms = reward_losses.reward_loss_terms(rewards[:, 0], rewards[:, 1], is_tie=batch["is_tie"],
                                            critique_nll=nll, has_critique=batch.get("has_critique"))
    terms = terms.replace(bt_count=n["bt_count"], tie_count=n["tie_count"], pair_count=n["pair_count"],
                          critique_count=n["critique_count"] if nll is not None else terms.critique_count)
    loss, metrics = reward_losses.combine_reward_loss(
        terms, score_weight=c.score_weight, tie_weight=c.tie_weight, center_weight=c.center_weight,
        critique_weight=critique_weight)
    non_tie = 1.0 - batch["is_tie"].astype(jnp.float32)
    correct = (rewards[:, 0] > rewards[:, 1]).astype(jnp.float32)
    pairs = jnp.maximum(n["pair_count"], 1.0)
    metrics.update({
        "train/loss": loss,
        "rm/accuracy": jnp.sum(correct * non_tie) / jnp.maximum(n["bt_count"], 1.0),
        "rm/reward_chosen": jnp.sum(rewards[:, 0]) / pairs,
        "rm/reward_rejected": jnp.sum(rewards[:, 1]) / pairs,
    })
    return loss, metrics


def train_step(state, batch, *, module, tx, mask, c, critique: bool, microbatches: int = 1):
    # One dropout key for every microbatch (the default head_dropout is 0).
    rng = jax.random.fold_in(state.rng, state.step)
    return state_lib.minimize(lambda params, b, n: rm_loss(module, params, b, rng, c, n, critique=critique), state,
                              batch, tx, mask, counts_fn=counts, microbatches=microbatches)


def score_step(params, batch, *, module):
    """Rewards f32[B, 2] of (already complete) critic-prompt + critique sequences."""
    return rm_outputs(module, params, batch, with_critique_nll=False)[0]
