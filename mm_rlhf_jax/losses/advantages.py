"""Advantage estimators for PPO-style updates, registered by name.

All take per-token arrays f32[B, T] with a response mask and return
(advantages f32[B, T], returns f32[B, T]) zeroed outside the mask:
  gae    GAE(gamma, lambda) over token rewards with a learned critic (PPO)
  grpo   group-relative sequence reward (DeepSeekMath; TRL GRPOTrainer), by scale_rewards:
           group  (r - mean_g) / (std_g + 1e-4)      (the paper; TRL's default)
           batch  (r - mean_g) / (std_batch + 1e-4)  (TRL "batch": std over the whole rollout batch)
           none   r - mean_g                         (Dr. GRPO: no question-level difficulty bias)
         std with Bessel's correction (torch's .std(), as TRL).
  rloo   leave-one-out baseline, r_i - mean_{j != i} r_j over the group (RLOO; TRL RLOOTrainer)
The group estimators read a sequence reward (the sum of token rewards, so a
KL in the reward becomes a sequence-level penalty) and a group size: rows
[g*G, (g+1)*G) are the G samples of prompt g. Every estimator takes the same
keywords and ignores those it has no use for.
"""

import jax
import jax.numpy as jnp

from mm_rlhf_jax.registry import Registry

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


def gae(rewards, values, mask, *, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation by a reverse scan over time.

    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},
    with V and A zero past the last response token (masked positions are skipped:
    the recursion runs over response tokens only, so left or inner padding is fine
    as long as the mask marks the response).
    """
    r, v, m = (jnp.asarray(x, jnp.float32) for x in (rewards, values, mask))

    def step(carry, xs):
        next_value, next_adv = carry
        r_t, v_t, m_t = xs
        delta = r_t + gamma * next_value - v_t
        adv = delta + gamma * lam * next_adv
        # Outside the response carry the future through unchanged.
        adv = jnp.where(m_t > 0, adv, next_adv)
        value = jnp.where(m_t > 0, v_t, next_value)
        return (value, adv), adv * m_t

    init = (jnp.zeros(r.shape[0]), jnp.zeros(r.shape[0]))
    _, adv = jax.lax.scan(step, init, (r.T, v.T, m.T), reverse=True)
    adv = adv.T
    return adv, (adv + v) * m


@ADVANTAGE_ESTIMATORS.register("gae")
def _gae(rewards, mask, *, values, gamma=1.0, lam=0.95, group_size=1, scale_rewards=None):
    del group_size, scale_rewards
    return gae(rewards, values, mask, gamma=gamma, lam=lam)


def _sequence_rewards(rewards, mask, group_size):
    seq = jnp.sum(jnp.asarray(rewards, jnp.float32) * mask, axis=-1)
    if seq.shape[0] % group_size:
        raise ValueError(f"batch of {seq.shape[0]} sequences is not a multiple of group_size={group_size}")
    return seq.reshape(-1, group_size)


# TRL's constant in the GRPO denominator (std + 1e-4): a group whose samples all got the same reward
# has advantage 0, not 0/0.
GROUP_STD_EPS = 1e-4

# scale_rewards -> the std a grpo advantage is divided by, from the sequence rewards f32[groups, G].
REWARD_SCALES = {
    "group": lambda seq: seq.std(-1, ddof=1, keepdims=True),
    "batch": lambda seq: jnp.std(seq, ddof=1),
    "none": None,
}


def grpo_advantages(seq, *, scale_rewards: str = "group"):
    """f32[groups, G] sequence rewards -> f32[groups, G] group-relative advantages (module docstring)."""
    if scale_rewards not in REWARD_SCALES:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; use {sorted(REWARD_SCALES)}")
    adv = seq - seq.mean(-1, keepdims=True)
    scale = REWARD_SCALES[scale_rewards]
    return adv if scale is None else adv / (scale(seq) + GROUP_STD_EPS)


@ADVANTAGE_ESTIMATORS.register("grpo")
def _grpo(rewards, mask, *, values=None, gamma=1.0, lam=1.0, group_size=2, scale_rewards="group"):
    del values, gamma, lam
    adv = grpo_advantages(_sequence_rewards(rewards, mask, group_size), scale_rewards=scale_rewards)
    adv = adv.reshape(-1, 1) * mask
    return adv, adv


@ADVANTAGE_ESTIMATORS.register("rloo")
def _rloo(rewards, mask, *, values=None, gamma=1.0, lam=1.0, group_size=2, scale_rewards=None):
    del values, gamma, lam, scale_rewards
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2")
    seq = _sequence_rewards(rewards, mask, group_size)
    baseline = (seq.sum(-1, keepdims=True) - seq) / (group_size - 1)
    adv = (seq - baseline).reshape(-1, 1) * mask
    return adv, adv


def whiten(x, mask, *, shift_mean: bool = True, eps: float = 1e-8):
    """Masked whitening of advantages (mean/variance over all response tokens of the batch)."""
    m = jnp.asarray(mask, jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / n
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m
