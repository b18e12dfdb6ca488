"""MM-DPO train and eval steps: pure functions of (state, batch).

loss = alpha * mean_pairs(dpo_loss(beta_i)) + gamma * NLL(chosen response tokens)

beta_i comes from a registered beta mode:
  constant  one beta for every pair (plain DPO)
  paper     MM-DPO dynamic reward scaling: beta * (1 + w (1 - exp(-k delta_i))),
            delta_i the reward model's margin for the pair (papers.md §1(a))
  released  the batch-level beta the MM-RLHF code executes (implicit_beta=True)
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from mm_rlhf_jax.data.batch import is_packed
from mm_rlhf_jax.losses import preference
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.train import forward, packed_forward, state as state_lib

# name -> f(delta f32[B], logits f32[B], rng, *, beta, w, k) -> beta scalar or f32[B]
BETA_MODES: Registry[Callable] = Registry("beta mode")
BETA_MODES.register("constant")(lambda delta, logits, rng, *, beta, w, k: jnp.float32(beta))
BETA_MODES.register("paper")(
    lambda delta, logits, rng, *, beta, w, k: preference.dynamic_beta(delta, beta=beta, w=w, k=k))
BETA_MODES.register("released")(
    lambda delta, logits, rng, *, beta, w, k: preference.released_beta(logits, beta=beta, w=w, key=rng))


def counts(batch) -> dict:
    """The global normalisers of a batch: its pairs and its chosen response tokens."""
    if is_packed(batch):
        return {"pairs": jnp.sum(batch["pair_valid"].astype(jnp.float32)),
                "chosen_tokens": jnp.sum(batch["chosen_mask"].astype(jnp.float32))}
    return {"pairs": jnp.float32(batch["input_ids"].shape[0]),
            "chosen_tokens": jnp.sum(jnp.asarray(batch["loss_mask"])[:, 0].astype(jnp.float32))}


def pair_arrays(module, params, batch):
    """(policy logps f32[B, 2], response token counts f32[B, 2], ref logps f32[B, 2], delta f32[B] | None,
    valid bool[B] | None) with B = pairs, or pair slots R * K of a packed batch (valid marks the filled ones)."""
    if not is_packed(batch):
        logps, tokens = forward.pair_logps(module, params, batch)
        return logps, tokens, batch["ref_logps"].astype(jnp.float32), batch.get("delta"), None
    logps, tokens = packed_forward.pair_logps(module, params, batch)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731  [R, K, ...] -> [R * K, ...]
    return (flat(logps), flat(tokens), flat(batch["ref_logps"].astype(jnp.float32)), flat(batch["delta"]),
            flat(batch["pair_valid"]))


def dpo_terms(module, params, batch, rng, c: ml_collections.ConfigDict, n: dict):
    """(loss, metrics) of (a microbatch of) a batch whose global normalisers are n (see counts).

    Every term is a sum over the microbatch's pairs or tokens divided by the
    whole batch's count, so microbatches add up to the full-batch values; a
    packed batch's empty slots add nothing. c is the config's `dpo` block. The
    released beta mode is computed per microbatch, as the release computes it
    per device batch.
    """
    logps, tokens, ref, delta, valid = pair_arrays(module, params, batch)
    if valid is not None and c.beta_mode == "released":
        raise ValueError("dpo.beta_mode='released' samples a fixed share of a batch's pairs, which a packed batch "
                         "(a varying pair count) cannot reproduce; use data.packing=False")
    pc, pr, rc, rr = logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1]
    logits = jax.lax.stop_gradient((pc - rc) - (pr - rr))
    beta = BETA_MODES.get(c.beta_mode)(delta, logits, rng, beta=c.beta, w=c.w, k=c.k)
    lengths = {}
    if c.loss_type in preference.LENGTH_NORMALISED:
        lengths = dict(chosen_lengths=tokens[:, 0], rejected_lengths=tokens[:, 1])
    losses, chosen_r, rejected_r = preference.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=c.loss_type,
                                                       label_smoothing=c.label_smoothing, **lengths)
    beta = jnp.broadcast_to(beta, pc.shape)
    if valid is None:
        share = pc.shape[0] / n["pairs"]  # this microbatch's share of the pair means
        pair_mean = lambda x: jnp.mean(x) * share  # noqa: E731
        reward_metrics = {k: v * share for k, v in preference.reward_metrics(chosen_r, rejected_r, pc, pr).items()}
    else:  # empty slots (where, not a product: their terms need not be finite) add nothing
        pair_mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / n["pairs"]  # noqa: E731
        reward_metrics = {k: pair_mean(v) for k, v in preference.reward_terms(chosen_r, rejected_r, pc, pr).items()}
        losses, pc = jnp.where(valid, losses, 0.0), jnp.where(valid, pc, 0.0)
    dpo = jnp.sum(losses) / n["pairs"]
    # SFT anchor: token-mean NLL over all chosen response tokens of the batch.
    sft = -jnp.sum(pc) / jnp.maximum(n["chosen_tokens"], 1.0)
    loss = c.alpha * dpo + c.gamma * sft
    metrics = {
        "train/loss": loss,
        "dpo/loss": dpo,
        "dpo/sft_nll": sft,
        "dpo/beta": pair_mean(beta),
        **reward_metrics,
    }
    return loss, metrics


def train_step(state, batch, *, module, tx, mask, c, microbatches: int = 1):
    rng = jax.random.fold_in(state.rng, state.step)
    return state_lib.minimize(lambda params, b, n: dpo_terms(module, params, b, rng, c, n), state, batch, tx, mask,
                              counts_fn=counts, microbatches=microbatches)


def policy_logps_step(params, batch, *, module):
    """Summed response log-probs f32[B, 2], or f32[R, K, 2] of a packed batch (reference precompute, evals)."""
    if is_packed(batch):
        return packed_forward.pair_logps(module, params, batch)[0]
    return forward.pair_logps(module, params, batch)[0]
