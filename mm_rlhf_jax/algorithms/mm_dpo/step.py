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

from mm_rlhf_jax.losses import preference
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.train import forward, state as state_lib

# name -> f(delta f32[B], logits f32[B], rng, *, beta, w, k) -> beta scalar or f32[B]
BETA_MODES: Registry[Callable] = Registry("beta mode")
BETA_MODES.register("constant")(lambda delta, logits, rng, *, beta, w, k: jnp.float32(beta))
BETA_MODES.register("paper")(
    lambda delta, logits, rng, *, beta, w, k: preference.dynamic_beta(delta, beta=beta, w=w, k=k))
BETA_MODES.register("released")(
    lambda delta, logits, rng, *, beta, w, k: preference.released_beta(logits, beta=beta, w=w, key=rng))


def counts(batch) -> dict:
    """The global normalisers of a batch: its pairs and its chosen response tokens."""
    return {"pairs": jnp.float32(batch["input_ids"].shape[0]),
            "chosen_tokens": jnp.sum(jnp.asarray(batch["loss_mask"])[:, 0].astype(jnp.float32))}


def dpo_terms(module, params, batch, rng, c: ml_collections.ConfigDict, n: dict):
    """(loss, metrics) of (a microbatch of) a batch whose global normalisers are n (see counts).

    Every term is a sum over the microbatch's pairs or tokens divided by the
    whole batch's count, so microbatches add up to the full-batch values. c is
    the config's `dpo` block. The released beta mode is computed per microbatch,
    as the release computes it per device batch.
    """
    logps, tokens = forward.pair_logps(module, params, batch)
    ref = batch["ref_logps"].astype(jnp.float32)
    pc, pr, rc, rr = logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1]
    logits = jax.lax.stop_gradient((pc - rc) - (pr - rr))
    beta = BETA_MODES.get(c.beta_mode)(batch.get("delta"), logits, rng, beta=c.beta, w=c.w, k=c.k)
    lengths = {}
    if c.loss_type in preference.LENGTH_NORMALISED:
        lengths = dict(chosen_lengths=tokens[:, 0], rejected_lengths=tokens[:, 1])
    losses, chosen_r, rejected_r = preference.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=c.loss_type,
                                                       label_smoothing=c.label_smoothing, **lengths)
    share = pc.shape[0] / n["pairs"]  # this microbatch's share of the pair means
    dpo = jnp.sum(losses) / n["pairs"]
    # SFT anchor: token-mean NLL over all chosen response tokens of the batch.
    sft = -jnp.sum(pc) / jnp.maximum(n["chosen_tokens"], 1.0)
    loss = c.alpha * dpo + c.gamma * sft
    metrics = {
        "train/loss": loss,
        "dpo/loss": dpo,
        "dpo/sft_nll": sft,
        "dpo/beta": jnp.mean(jnp.broadcast_to(beta, pc.shape)) * share,
        **{k: v * share for k, v in preference.reward_metrics(chosen_r, rejected_r, pc, pr).items()},
    }
    return loss, metrics


def train_step(state, batch, *, module, tx, mask, c, microbatches: int = 1):
    rng = jax.random.fold_in(state.rng, state.step)
    return state_lib.minimize(lambda params, b, n: dpo_terms(module, params, b, rng, c, n), state, batch, tx, mask,
                              counts_fn=counts, microbatches=microbatches)


def policy_logps_step(params, batch, *, module):
    """Summed response log-probs f32[B, 2] (reference precompute and held-out evals)."""
    return forward.pair_logps(module, params, batch)[0]
