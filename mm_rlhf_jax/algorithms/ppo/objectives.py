"""PPO, GRPO and RLOO as whole presets: `ppo.advantage` picks an algorithm, and with it every choice below.

`resolve(p)` is the one place a `ppo` block becomes an Objective: each knob
left at None (config_lib.ppo_block declares them as placeholders) takes the
value of the advantage's entry in ALGORITHMS; a knob set explicitly wins, and
a combination that makes no sense is an error naming the knob.

| ppo.advantage     | gae (PPO)        | grpo (GRPO)                          | rloo (RLOO)                        |
|-------------------|------------------|--------------------------------------|------------------------------------|
| critic            | yes (GAE values) | no                                   | no                                 |
| whiten_advantages | True             | False                                | False (TRL normalize_advantages)   |
| kl_mode           | reward           | loss (beta = kl_coef)                | reward (sequence-level penalty)    |
| kl_estimator      | k1               | k3 = exp(ref-logp) - (ref-logp) - 1  | k1 = logp_old - logp_ref           |
| policy_loss       | ppo (token clip) | ppo (token clip)                     | rloo (sequence-ratio clip)         |
| loss_aggregation  | token            | sequence (TRL loss_type "grpo")      | sequence (mean over sequences)     |
| scale_rewards     | -                | group: (r - mean_g) / (std_g + 1e-4) | -                                  |

Sources: DeepSeekMath (arXiv 2402.03300: the 1/G sum_i 1/|o_i| sum_t objective
with the k3 KL inside it) and TRL GRPOTrainer (main, mid-2026: loss_type "grpo",
scale_rewards "group", beta * per-token KL added to the per-token loss before
the aggregation); Ahmadian et al. 2024 (arXiv 2402.14740) and TRL RLOOTrainer
(k1 summed over the sequence and subtracted from the reward, normalize_advantages
False, the clipped sequence-ratio surrogate averaged over sequences: TRL's
current loss, chosen here). The paper's unclipped REINFORCE, -A_i log pi(y_i | x),
is policy_loss=reinforce (it needs epochs = num_minibatches = 1; with those the
clipped loss has the same gradient). Not taken from TRL: its GRPO default beta
= 0 (kl_coef is every preset's one coefficient) and its default loss_type
"dapo" (the paper's GRPO is the per-sequence mean; loss_aggregation=token gives
TRL's dapo / bnpo, constant its dr_grpo). Epochs and minibatches stay shared knobs.

Critic use is a property of the estimator, not a knob: gae reads the critic's
values; grpo and rloo baseline each sample against the other samples of its
prompt, so they train no critic (and need samples_per_prompt >= 2).
"""

import dataclasses

import ml_collections

from mm_rlhf_jax.losses.advantages import REWARD_SCALES
from mm_rlhf_jax.losses.kl import KL_ESTIMATORS
from mm_rlhf_jax.losses.ppo import LOSS_AGGREGATIONS, POLICY_LOSSES
from mm_rlhf_jax.registry import Registry

# Where the KL to the reference goes: (coefficient in the reward, coefficient in the loss), times kl_coef.
KL_PLACEMENT = {"reward": (1.0, 0.0), "loss": (0.0, 1.0), "none": (0.0, 0.0)}


@dataclasses.dataclass(frozen=True)
class Objective:
    """A PPO-family algorithm with every choice made (hashable: a static jit argument is fine)."""

    advantage: str  # losses.advantages.ADVANTAGE_ESTIMATORS
    critic: bool  # a learned value model feeds the estimator (not overridable)
    whiten_advantages: bool  # masked whitening over all response tokens of the rollout batch
    kl_mode: str  # KL_PLACEMENT
    kl_estimator: str  # losses.kl.KL_ESTIMATORS
    policy_loss: str  # losses.ppo.POLICY_LOSSES
    loss_aggregation: str  # losses.ppo.LOSS_AGGREGATIONS
    scale_rewards: str | None  # grpo's (REWARD_SCALES); None where the estimator has no such choice


# The ppo-block knobs an algorithm presets (each None in config_lib.ppo_block until set).
PRESET_KNOBS = ("whiten_advantages", "kl_mode", "kl_estimator", "policy_loss", "loss_aggregation", "scale_rewards")

ALGORITHMS: Registry[Objective] = Registry("PPO-family algorithm (ppo.advantage)")
ALGORITHMS.register("gae")(Objective(
    advantage="gae", critic=True, whiten_advantages=True, kl_mode="reward", kl_estimator="k1", policy_loss="ppo",
    loss_aggregation="token", scale_rewards=None))
ALGORITHMS.register("grpo")(Objective(
    advantage="grpo", critic=False, whiten_advantages=False, kl_mode="loss", kl_estimator="k3", policy_loss="ppo",
    loss_aggregation="sequence", scale_rewards="group"))
ALGORITHMS.register("rloo")(Objective(
    advantage="rloo", critic=False, whiten_advantages=False, kl_mode="reward", kl_estimator="k1", policy_loss="rloo",
    loss_aggregation="sequence", scale_rewards=None))

# Knob -> the names it accepts (checked here, so an error names the knob rather than a registry).
_CHOICES = {
    "kl_mode": lambda: sorted(KL_PLACEMENT),
    "kl_estimator": KL_ESTIMATORS.names,
    "policy_loss": POLICY_LOSSES.names,
    "loss_aggregation": LOSS_AGGREGATIONS.names,
    "scale_rewards": lambda: sorted(REWARD_SCALES),
}


def resolve(p: ml_collections.ConfigDict) -> Objective:
    """The Objective of ppo block p: ALGORITHMS[p.advantage] with p's explicitly set knobs on top."""
    if p.advantage not in ALGORITHMS:
        raise ValueError(f"unknown ppo.advantage {p.advantage!r}; use {ALGORITHMS.names()}")
    preset = ALGORITHMS.get(p.advantage)
    overrides = {k: p[k] for k in PRESET_KNOBS if p[k] is not None}
    for knob, value in overrides.items():
        if getattr(preset, knob) is None:
            raise ValueError(f"ppo.{knob}={value!r} does not apply to ppo.advantage={p.advantage!r}; leave it unset")
        if knob in _CHOICES and value not in _CHOICES[knob]():
            raise ValueError(f"unknown ppo.{knob} {value!r}; use {_CHOICES[knob]()}")
    o = dataclasses.replace(preset, **overrides)
    _check_combination(o, p)
    return o


def _check_combination(o: Objective, p: ml_collections.ConfigDict) -> None:
    loss = POLICY_LOSSES.get(o.policy_loss)
    if loss.per_sequence and o.loss_aggregation != "sequence":
        raise ValueError(f"ppo.policy_loss={o.policy_loss!r} has one term per sequence: set "
                         f"ppo.loss_aggregation='sequence' (got {o.loss_aggregation!r})")
    if loss.on_policy and (p.epochs, p.num_minibatches) != (1, 1):
        raise ValueError(f"ppo.policy_loss={o.policy_loss!r} is on-policy (no importance ratio): set ppo.epochs=1 and "
                         f"ppo.num_minibatches=1 (got {p.epochs} and {p.num_minibatches}), or use policy_loss='rloo'")
    if not o.critic and p.samples_per_prompt < 2:
        raise ValueError(f"ppo.advantage={o.advantage!r} compares samples of a prompt: set samples_per_prompt >= 2")


def kl_coefficients(o: Objective, kl_coef: float) -> tuple[float, float]:
    """(coefficient of the KL in the token reward, coefficient of the KL in the actor loss)."""
    in_reward, in_loss = KL_PLACEMENT[o.kl_mode]
    return in_reward * kl_coef, in_loss * kl_coef
