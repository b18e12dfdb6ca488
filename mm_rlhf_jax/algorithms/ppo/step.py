"""PPO phases as pure functions (host orchestration: trainer.py; rollouts: rollout.generate).

Roles: actor (trained policy), critic (value model: the actor's architecture
plus a ValueHead, trained), reference (frozen initial policy) and reward (host
side: rewards.router). Shared by PPO and Align-Pro (whose actor is the prompter).

Sequence layout of a rollout row (prompts left-padded, as the sampler wants):

    input_ids       [ pad .. pad  prompt .. prompt | response .. stop  0 .. 0 ]   int32[N, L], L = P + M
    attention_mask  [ 0   .. 0    1      .. 1      | 1        .. 1     0 .. 0 ]
    positions       cumsum(attention_mask) - 1 (each row starts at 0, as in the sampler)
    response_mask   1 on generated tokens up to and including the stop token    f32[N, L]

Token t's log-prob and value are read from position t - 1 (next-token
prediction), so every per-token array is aligned with input_ids.

  experience_step  old log-probs (actor), reference log-probs, values (critic),
                   KL-shaped token rewards, advantages (ADVANTAGE_ESTIMATORS: gae,
                   grpo, rloo) and returns; optional advantage whitening
  update_step      one minibatch: policy loss (+ KL loss) aggregated by the
                   objective's loss_aggregation, - token-mean entropy bonus, for
                   the actor; clipped value loss for the critic; both updated

Which estimator, KL placement and estimator, policy loss and aggregation: the
Objective of the ppo block (objectives.resolve: PPO, GRPO and RLOO presets).
Every loss is a (sum, count) pair from losses/ divided once, after the global
(cross-device) sum, so sharding and microbatching never change the value.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from mm_rlhf_jax.algorithms.ppo import objectives
from mm_rlhf_jax.losses.advantages import ADVANTAGE_ESTIMATORS, whiten
from mm_rlhf_jax.losses.kl import kl_estimate
from mm_rlhf_jax.losses.logprobs import shifted_token_logprobs
from mm_rlhf_jax.losses.ppo import LOSS_AGGREGATIONS, POLICY_LOSSES, entropy_bonus, kl_shaped_rewards, value_loss
from mm_rlhf_jax.train import state as state_lib


@flax.struct.dataclass
class RLState:
    """step: rollout+update cycles done (the host loop's step); critic None for critic-free estimators."""

    step: jax.Array
    actor: state_lib.TrainState
    critic: Any
    rng: jax.Array


def sequences(prompt_ids, prompt_mask, tokens, mask) -> dict:
    """The rollout rows in the layout of the module docstring."""
    input_ids = jnp.concatenate([prompt_ids, tokens], axis=1).astype(jnp.int32)
    attention_mask = jnp.concatenate([prompt_mask, mask], axis=1).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0).astype(jnp.int32)
    response_mask = jnp.concatenate([jnp.zeros_like(prompt_mask), mask], axis=1).astype(jnp.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "positions": positions,
            "response_mask": response_mask}


def token_logprobs(module, params, seqs, *, temperature: float, entropy: bool = False):
    """f32[N, L] log pi(token t | < t) at `temperature` (and its entropy), via kernels.token_logprobs."""
    out = module.apply({"params": params}, seqs["input_ids"], attention_mask=seqs["attention_mask"],
                       positions=seqs["positions"], compute_logits=False)
    return shifted_token_logprobs(out.hidden_states, module.lm_head_weight(params), seqs["input_ids"],
                                  temperature=temperature, return_entropy=entropy)


def token_values(critic_module, params, seqs):
    """f32[N, L]: V(state before token t), read from the value head at t - 1."""
    out = critic_module.apply({"params": params}, seqs["input_ids"], attention_mask=seqs["attention_mask"],
                              positions=seqs["positions"])
    return jnp.pad(out.values[:, :-1], ((0, 0), (1, 0)))


def experience_step(actor_params, ref_params, critic_params, prompts, rollout, scores, *, actor_module,
                    critic_module, c):
    """(experience dict of f32/int32[N, L] arrays, metrics) for one rollout batch.

    rollout: {"tokens", "mask"} int32[N, M]; scores f32[N] sequence rewards (router output).
    """
    o = objectives.resolve(c)
    if o.critic != (critic_module is not None):
        need = "reads a critic's values: pass its module" if o.critic else "trains no critic: pass None"
        raise ValueError(f"ppo.advantage={o.advantage!r} {need} as critic_module")
    seqs = sequences(prompts["prompt_ids"], prompts["prompt_mask"], rollout["tokens"], rollout["mask"])
    m = seqs["response_mask"]
    old_logp, ent = token_logprobs(actor_module, actor_params, seqs, temperature=c.temperature, entropy=True)
    ref_logp = token_logprobs(actor_module, ref_params, seqs, temperature=c.temperature)
    values = jnp.zeros_like(m) if critic_module is None else token_values(critic_module, critic_params, seqs) * m
    kl_reward_coef, _ = objectives.kl_coefficients(o, c.kl_coef)
    kl = kl_estimate(old_logp, ref_logp, o.kl_estimator) * m
    token_rewards = kl_shaped_rewards(scores, kl, m, kl_coef=kl_reward_coef)
    adv, returns = ADVANTAGE_ESTIMATORS.get(o.advantage)(
        token_rewards, m, values=values, gamma=c.gamma, lam=c.lam, group_size=c.samples_per_prompt,
        scale_rewards=o.scale_rewards)
    if o.whiten_advantages:
        adv = whiten(adv, m)
    n = jnp.maximum(jnp.sum(m), 1.0)
    exp = {**seqs, "old_logp": old_logp * m, "ref_logp": ref_logp * m, "old_values": values,
           "advantages": adv, "returns": returns}
    per_seq_kl = jnp.sum(kl, axis=1)
    metrics = {
        "rollout/kl": jnp.sum(kl) / n,  # per token, the configured estimator
        "rollout/kl_per_sequence": jnp.mean(per_seq_kl),
        "rollout/entropy": jnp.sum(ent * m) / n,
        "rollout/score": jnp.mean(scores),
        "rollout/advantage_mean": jnp.sum(adv * m) / n,
        "rollout/return_mean": jnp.sum(returns * m) / n,
        "rollout/value_mean": jnp.sum(values * m) / n,
    }
    return exp, metrics


def counts(mb, max_new_tokens: int) -> dict:
    """The global normalisers of a minibatch (losses.ppo.LOSS_AGGREGATIONS): response tokens, sequences
    (rows, empty responses included, as TRL) and token slots (rows x max_new_tokens, Dr. GRPO's constant)."""
    m = mb["response_mask"]
    rows = jnp.asarray(m.shape[0], jnp.float32)
    return {"tokens": jnp.sum(m), "sequences": rows, "token_slots": rows * max_new_tokens}


def actor_loss(module, params, mb, c, counts_: dict | None = None):
    """(loss, metrics) of the actor on minibatch mb (actor_objective on its log-probs and entropy).

    counts_: the whole minibatch's normalisers when mb is one of its microbatches (default: mb's own).
    """
    logp, ent = token_logprobs(module, params, mb, temperature=c.temperature, entropy=True)
    return actor_objective(logp, ent, mb, c, counts_ or counts(mb, c.max_new_tokens))


def actor_objective(logp, ent, mb, c, n: dict):
    """(loss, metrics): aggregated policy loss + kl_coef * KL loss - entropy_coef * token-mean entropy.

    logp, ent f32[B, T] (the policy being updated); mb: the experience rows (old_logp,
    ref_logp, advantages, response_mask f32[B, T]); n: counts() of the whole minibatch.
    With kl_mode=loss the KL estimate joins the policy loss token by token and is
    aggregated with it (TRL's GRPO: per_token_loss + beta * per_token_kl);
    clipfrac, approx_kl and entropy are always token means.
    """
    o = objectives.resolve(c)
    m = mb["response_mask"]
    agg = LOSS_AGGREGATIONS.get(o.loss_aggregation)
    w = agg.weights(m)
    terms = POLICY_LOSSES.get(o.policy_loss)(logp, mb["old_logp"], mb["advantages"], m, weights=w,
                                             clip_eps=c.clip_eps, clip_eps_high=c.clip_eps_high or None)
    norm = jnp.maximum(n[agg.normaliser], 1.0)
    tokens = jnp.maximum(n["tokens"], 1.0)
    _, kl_loss_coef = objectives.kl_coefficients(o, c.kl_coef)
    kl = jnp.sum(kl_estimate(logp, mb["ref_logp"], o.kl_estimator) * w) / norm
    ent_sum, _ = entropy_bonus(ent, m)
    policy = terms.loss_sum / norm
    loss = policy + kl_loss_coef * kl - c.entropy_coef * ent_sum / tokens
    return loss, {"ppo/policy_loss": policy, "ppo/kl_loss": kl, "ppo/entropy": ent_sum / tokens,
                  "ppo/clipfrac": terms.clipfrac_sum / tokens, "ppo/approx_kl": terms.approx_kl_sum / tokens,
                  "ppo/actor_loss": loss}


def critic_loss(module, params, mb, c, counts_: dict | None = None):
    """(loss, metrics): vf_coef * token-mean clipped value loss (normalisers as actor_loss)."""
    v = token_values(module, params, mb)
    total, _ = value_loss(v, mb["old_values"], mb["returns"], mb["response_mask"], clip_eps=c.value_clip or None)
    vl = total / jnp.maximum((counts_ or counts(mb, c.max_new_tokens))["tokens"], 1.0)
    return c.vf_coef * vl, {"ppo/value_loss": vl}


def update_step(state: RLState, experience: dict, idx, *, actor_module, critic_module, actor_tx, critic_tx,
                actor_mask, critic_mask, c, microbatches: int = 1):
    """One minibatch (rows `idx` int32[mb] of the experience) update of actor and critic.

    microbatches > 1 accumulates each gradient over that many microbatches of the
    minibatch (state.accumulate_grads), with the whole minibatch's counts as normalisers.
    """
    mb = jax.tree.map(lambda x: x[idx], experience)
    n = counts(mb, c.max_new_tokens)
    (a_loss, metrics), grads = state_lib.accumulate_grads(
        lambda p, b, k: actor_loss(actor_module, p, b, c, k), state.actor.params, actor_mask, mb, n, microbatches)
    actor, opt = state_lib.apply_gradients(state.actor, grads, actor_tx, actor_mask)
    metrics = {**metrics, "ppo/actor_grad_norm": opt["train/grad_norm"]}
    critic, total = state.critic, a_loss
    if critic_module is not None:
        (c_loss, cm), cgrads = state_lib.accumulate_grads(
            lambda p, b, k: critic_loss(critic_module, p, b, c, k), state.critic.params, critic_mask, mb, n,
            microbatches)
        critic, copt = state_lib.apply_gradients(state.critic, cgrads, critic_tx, critic_mask)
        metrics = {**metrics, **cm, "ppo/critic_grad_norm": copt["train/grad_norm"]}
        total = total + c_loss
    return state.replace(actor=actor, critic=critic), {**metrics, "train/loss": total}
