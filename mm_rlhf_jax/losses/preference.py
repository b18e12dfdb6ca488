"""DPO-family preference losses, MM-DPO's dynamic beta and LongPO's short-to-long loss.

All inputs are per-sequence summed log-probs f32[B]; outputs are per-pair f32[B]
(reduce outside, so packing and sharding reduce exactly). Conventions follow
TRL's DPOTrainer: "logits" = (pi_c - ref_c) - (pi_r - ref_r), implicit rewards
beta * (pi - ref).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from mm_rlhf_jax.registry import Registry

# name -> f(logits f32[B], beta f32[B], label_smoothing) -> losses f32[B]
PAIR_LOSSES: Registry[Callable] = Registry("preference loss")
# Losses defined on length-normalised log-ratios (pass chosen_lengths / rejected_lengths to dpo_loss).
LENGTH_NORMALISED = frozenset({"ipo"})


@PAIR_LOSSES.register("sigmoid")
def _sigmoid(logits, beta, label_smoothing):
    # Label smoothing gives conservative DPO (cDPO); 0 is standard DPO.
    return (
        -jax.nn.log_sigmoid(beta * logits) * (1.0 - label_smoothing)
        - jax.nn.log_sigmoid(-beta * logits) * label_smoothing
    )


@PAIR_LOSSES.register("hinge")
def _hinge(logits, beta, label_smoothing):
    del label_smoothing
    return jax.nn.relu(1.0 - beta * logits)


@PAIR_LOSSES.register("ipo")
def _ipo(logits, beta, label_smoothing):
    # beta is IPO's tau; logits should be length-normalised (see dpo_loss).
    del label_smoothing
    return (logits - 1.0 / (2.0 * beta)) ** 2


@PAIR_LOSSES.register("robust")
def _robust(logits, beta, label_smoothing):
    # rDPO (Chowdhury et al. 2024): unbiased under label-flip rate label_smoothing < 0.5.
    clean = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * logits)
    flipped = -label_smoothing * jax.nn.log_sigmoid(-beta * logits)
    return (clean - flipped) / (1.0 - 2.0 * label_smoothing)


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths=None,
    rejected_lengths=None,
):
    """Per-pair DPO-family loss.

    Args:
      policy_*_logps, ref_*_logps: f32[B] summed response log-probs.
      beta: scalar or f32[B] (MM-DPO's per-pair beta).
      loss_type: a PAIR_LOSSES name: sigmoid, ipo, hinge, robust.
      label_smoothing: cDPO / rDPO noise rate (robust needs 0 <= x < 0.5).
      chosen_lengths, rejected_lengths: response token counts. When given, the
        log-ratios are divided by them before the loss (TRL >= 1.x does this for
        ipo; the paper's IPO uses average log-probs). When None the log-probs
        are used as given.
    Returns:
      (losses f32[B], chosen_rewards f32[B], rejected_rewards f32[B]) where
      rewards = beta * (policy - ref) on the un-normalised log-ratios, as TRL logs them.
    """
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    loss_fn = PAIR_LOSSES.get(loss_type)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    chosen_ratio = f32(policy_chosen_logps) - f32(ref_chosen_logps)
    rejected_ratio = f32(policy_rejected_logps) - f32(ref_rejected_logps)
    beta = f32(beta)
    c, r = chosen_ratio, rejected_ratio
    if chosen_lengths is not None:
        c = c / jnp.maximum(f32(chosen_lengths), 1.0)
    if rejected_lengths is not None:
        r = r / jnp.maximum(f32(rejected_lengths), 1.0)
    losses = loss_fn(c - r, beta, label_smoothing)
    chosen_rewards = jax.lax.stop_gradient(beta * chosen_ratio)
    rejected_rewards = jax.lax.stop_gradient(beta * rejected_ratio)
    return losses, chosen_rewards, rejected_rewards


def reward_terms(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps) -> dict:
    """Per-pair values (f32[B]) whose means are `reward_metrics` (for weighted or masked means)."""
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margin": chosen_rewards - rejected_rewards,
        "rewards/accuracy": (chosen_rewards > rejected_rewards).astype(jnp.float32),
        "logps/chosen": policy_chosen_logps,
        "logps/rejected": policy_rejected_logps,
    }


def reward_metrics(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps) -> dict:
    """Batch means of the implicit rewards, their margin and accuracy, and the policy log-probs (all f32[B])."""
    terms = reward_terms(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps)
    return {k: jnp.mean(v) for k, v in terms.items()}


def dynamic_beta(delta, *, beta, w, k):
    """MM-DPO dynamic reward scaling: beta(delta) = beta * (1 + w * (1 - exp(-k * delta))).

    delta is the reward-model margin r(chosen) - r(rejected), f32[B]. The paper
    bounds beta(delta) to [beta, (1 + w) beta], which holds only for delta >= 0;
    a negative margin (the RM disagrees with the human label) is clamped to 0,
    i.e. such pairs get the base beta. Unknown margins (NaN) also get the base beta here; MM-DPO runs
    refuse training pairs without delta (algorithms/mm_dpo/beta.py), so this never replaces a margin there.
    """
    delta = jnp.asarray(delta, jnp.float32)
    delta = jnp.where(jnp.isnan(delta), 0.0, jnp.maximum(delta, 0.0))
    return beta * (1.0 + w * (1.0 - jnp.exp(-k * delta)))


def released_beta(logits, *, beta, w, key, keep_fraction: float = 0.8, min_beta: float = 1e-3):
    """The batch-level beta the MM-RLHF release actually executes (implicit_beta=True).

    Gaussian weights around the batch mean of the implicit-reward logits,
    a weighted sample of keep_fraction of them without replacement, and
    beta * (1 + w * (mean(sample) - mean(all))), clamped at min_beta. One scalar
    for the whole (globally gathered) batch; the paper reports this beta-DPO-style
    adjustment does not help MLLMs: kept as a named option for ablations.
    """
    a = jax.lax.stop_gradient(jnp.asarray(logits, jnp.float32).reshape(-1))
    n = a.shape[0]
    mean = a.mean()
    std = jnp.std(a, ddof=1) if n > 1 else jnp.zeros(())  # torch.std is unbiased
    weight = jnp.exp(-0.5 * ((a - mean) / (std + 1e-7)) ** 2)
    m = max(int(n * keep_fraction), 1)
    idx = jax.random.choice(key, n, (m,), replace=False, p=weight / weight.sum())
    return jnp.maximum(beta * (1.0 + w * (a[idx].mean() - mean)), min_beta)


def longpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    short_ref_chosen_logps,
    short_ref_rejected_logps,
    chosen_nll,
    *,
    beta,
    lam,
    nll_weight=1.0,
):
    """LongPO: nll_weight * chosen_nll + lam * -log sigmoid(beta * ((pc - ref_c) - (pr - ref_r))).

    The reference log-probs come from the short-context model on the short
    inputs (summed over turns for multi-turn samples, as the released code
    does); chosen_nll is the per-example mean token NLL of the policy on the
    chosen long sequence (padding excluded). lam weights the preference term;
    the NLL weight is 1 in the paper (Eq. 14) and the released code, 0 in its
    "w/o NLL" ablation. Returns losses f32[B].
    """
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    logits = (f32(policy_chosen_logps) - f32(short_ref_chosen_logps)) - (
        f32(policy_rejected_logps) - f32(short_ref_rejected_logps)
    )
    return nll_weight * f32(chosen_nll) - lam * jax.nn.log_sigmoid(beta * logits)
