"""MM-DPO train and eval steps: pure functions of (state, batch).

loss = alpha * mean_pairs(dpo_loss(beta_i)) + gamma * NLL(chosen response tokens)

The NLL (SFT anchor) is normalised by `dpo.sft_norm` (SFT_NORMS): "tokens", the token mean over every
chosen response token of the batch (long answers weigh more), or "sequences", the mean over pairs of each
chosen answer's token mean (the release: torch CrossEntropyLoss at per-device batch 1, averaged over
devices and accumulation steps; papers.md §1, review-papers b2). The paper does not say.

beta_i comes from a registered beta mode (beta.py): constant, paper (the reward model's margin delta),
ls_factor (the release's per-pair field) or released (the release's batch-level beta).
"""

import jax
import jax.numpy as jnp
import ml_collections

from mm_rlhf_jax.algorithms.mm_dpo.beta import BETA_MODES
from mm_rlhf_jax.data.batch import is_packed
from mm_rlhf_jax.losses import preference
from mm_rlhf_jax.train import forward, packed_forward, state as state_lib

SFT_NORMS = ("tokens", "sequences")


def counts(batch) -> dict:
    """The global normalisers of a batch: its pairs and its chosen response tokens."""
    if is_packed(batch):
        return {"pairs": jnp.sum(batch["pair_valid"].astype(jnp.float32)),
                "chosen_tokens": jnp.sum(batch["chosen_mask"].astype(jnp.float32))}
    return {"pairs": jnp.float32(batch["input_ids"].shape[0]),
            "chosen_tokens": jnp.sum(jnp.asarray(batch["loss_mask"])[:, 0].astype(jnp.float32))}


def pair_arrays(module, params, batch):
    """(policy logps f32[B, 2], response token counts f32[B, 2], ref logps f32[B, 2], per-pair fields
    {"delta", "ls_factor": f32[B] | None}, valid bool[B] | None) with B = pairs, or pair slots R * K of a
    packed batch (valid marks the filled ones)."""
    fields = ("delta", "ls_factor")
    if not is_packed(batch):
        logps, tokens = forward.pair_logps(module, params, batch)
        return (logps, tokens, batch["ref_logps"].astype(jnp.float32), {k: batch.get(k) for k in fields}, None)
    logps, tokens = packed_forward.pair_logps(module, params, batch)
    flat = lambda x: None if x is None else x.reshape((-1,) + x.shape[2:])  # noqa: E731  [R, K, ...] -> [R * K, ...]
    return (flat(logps), flat(tokens), flat(batch["ref_logps"].astype(jnp.float32)),
            {k: flat(batch.get(k)) for k in fields}, flat(batch["pair_valid"]))


def dpo_terms(module, params, batch, rng, c: ml_collections.ConfigDict, n: dict):
    """(loss, metrics) of (a microbatch of) a batch whose global normalisers are n (see counts).

    Every term is a sum over the microbatch's pairs or tokens divided by the
    whole batch's count, so microbatches add up to the full-batch values; a
    packed batch's empty slots add nothing. c is the config's `dpo` block. The
    released beta mode is computed per microbatch, as the release computes it
    per device batch.
    """
    logps, tokens, ref, pair_fields, valid = pair_arrays(module, params, batch)
    if valid is not None and c.beta_mode == "released":
        raise ValueError("dpo.beta_mode='released' samples a fixed share of a batch's pairs, which a packed batch "
                         "(a varying pair count) cannot reproduce; use data.packing=False")
    pc, pr, rc, rr = logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1]
    logits = jax.lax.stop_gradient((pc - rc) - (pr - rr))
    beta = BETA_MODES.get(c.beta_mode)(pair_fields, logits, rng, beta=c.beta, w=c.w, k=c.k)
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
    if c.sft_norm == "tokens":  # token mean over all chosen response tokens of the batch
        sft = -jnp.sum(pc) / jnp.maximum(n["chosen_tokens"], 1.0)
    elif c.sft_norm == "sequences":  # mean over pairs of per-answer token means (empty slots: pc = 0)
        sft = -jnp.sum(pc / jnp.maximum(tokens[:, 0], 1.0)) / n["pairs"]
    else:
        raise ValueError(f"dpo.sft_norm={c.sft_norm!r}: use one of {SFT_NORMS}")
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
