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

from mm_rlhf_jax.data.batch import is_packed
from mm_rlhf_jax.losses import reward as reward_losses
from mm_rlhf_jax.losses.logprobs import masked_sum, shifted_token_logprobs
from mm_rlhf_jax.train import forward, packed_forward, state as state_lib


def packed_rm_outputs(module, params, batch, *, with_critique_nll: bool, kw: dict):
    """rm_outputs of a packed batch, per pair slot: f32[R * K, 2] each (empty slots: reward garbage, NLL 0)."""
    out = packed_forward.forward_packed(module, params, batch, **kw)
    rewards = packed_forward.last_token_values(out.token_rewards[..., 0], batch["seq_last"])
    nll = None
    if with_critique_nll:
        sums, counts = packed_forward.pair_logps(module, params, batch, hidden=out.hidden_states)
        nll = (-sums / jnp.maximum(counts, 1.0)).reshape(-1, 2)
    return rewards.reshape(-1, 2), nll


def rm_outputs(module, params, batch, *, with_critique_nll: bool, rng=None):
    """(rewards f32[B, 2], critique mean NLL f32[B, 2] or None); rng enables dropout.

    A packed batch gives B = its pair slots R * K (see packed_rm_outputs).
    """
    kw = {} if rng is None else dict(deterministic=False, rngs={"dropout": rng})
    if is_packed(batch):
        return packed_rm_outputs(module, params, batch, with_critique_nll=with_critique_nll, kw=kw)
    b, n, t = batch["input_ids"].shape
    out = forward.forward_pairs(module, params, batch, **kw)
    rewards = out.rewards[:, 0].reshape(b, n)
    nll = None
    if with_critique_nll:
        lp = shifted_token_logprobs(out.hidden_states, module.lm_head_weight(params),
                                    batch["input_ids"].reshape(b * n, t))
        sums, counts = masked_sum(lp, batch["loss_mask"].reshape(b * n, t))
        nll = (-sums / jnp.maximum(counts, 1.0)).reshape(b, n)
    return rewards, nll


def pair_weights(batch):
    """f32[B] 1 for every pair (None: plain sums), or for the filled slots of a packed batch's R * K."""
    return batch["pair_valid"].reshape(-1).astype(jnp.float32) if is_packed(batch) else None


def counts(batch) -> dict:
    """The global normalisers of a batch: non-tie pairs, tie pairs, pairs, pairs with a teacher critique."""
    tie = jnp.asarray(batch["is_tie"]).reshape(-1).astype(jnp.float32)
    w = pair_weights(batch)
    w = jnp.ones_like(tie) if w is None else w
    has = batch.get("has_critique")
    return {"bt_count": jnp.sum(w * (1.0 - tie)), "tie_count": jnp.sum(w * tie), "pair_count": jnp.sum(w),
            "critique_count": jnp.zeros(()) if has is None else
            jnp.sum(w * jnp.asarray(has).reshape(-1).astype(jnp.float32))}


def rm_loss(module, params, batch, rng, c: ml_collections.ConfigDict, n: dict, *, critique: bool):
    """(loss, metrics) of (a microbatch of) a batch with global normalisers n (see counts).

    c is the config's `reward` block; critique: whether sequences carry critiques.
    The loss terms' sums are this microbatch's, their counts the whole batch's,
    so microbatches add up to the full-batch loss.
    """
    critique_weight = c.critique_weight if critique else 0.0
    rewards, nll = rm_outputs(module, params, batch, with_critique_nll=critique_weight > 0, rng=rng)
    w = pair_weights(batch)
    flat = lambda x: None if x is None else jnp.asarray(x).reshape(-1)  # noqa: E731  packed [R, K] -> [R * K]
    is_tie, has_critique = flat(batch["is_tie"]), flat(batch.get("has_critique"))
    if w is not None:  # an empty slot's "reward" is the head at its row's token 0: zeroed, weighted out
        rewards = jnp.where(w[:, None] > 0, rewards, 0.0)
    terms = reward_losses.reward_loss_terms(rewards[:, 0], rewards[:, 1], is_tie=is_tie, critique_nll=nll,
                                            has_critique=has_critique, weight=w)
    terms = terms.replace(bt_count=n["bt_count"], tie_count=n["tie_count"], pair_count=n["pair_count"],
                          critique_count=n["critique_count"] if nll is not None else terms.critique_count)
    loss, metrics = reward_losses.combine_reward_loss(
        terms, score_weight=c.score_weight, tie_weight=c.tie_weight, center_weight=c.center_weight,
        critique_weight=critique_weight)
    non_tie = (1.0 - is_tie.astype(jnp.float32)) * (1.0 if w is None else w)
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
    """Rewards f32[B, 2] of (already complete) critic-prompt + critique sequences; packed: f32[R, K, 2]."""
    rewards = rm_outputs(module, params, batch, with_critique_nll=False)[0]
    return rewards.reshape(batch["pair_valid"].shape + (2,)) if is_packed(batch) else rewards
