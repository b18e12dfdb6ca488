"""PPO / GRPO / RLOO pieces against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.losses import advantages, kl, ppo


def naive_gae(r, v, gamma, lam):
    adv, last = np.zeros(len(r)), 0.0
    for t in reversed(range(len(r))):
        nv = v[t + 1] if t + 1 < len(r) else 0.0
        delta = r[t] + gamma * nv - v[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_by_hand_and_against_loop():
    # A 3-token response at positions 1..3, gamma=1, lam=0.5: r=(0,0,1), v=(0.5,0.2,0.4).
    # d2 = 1-0.4 = 0.6; d1 = 0+0.4-0.2 = 0.2; d0 = 0+0.2-0.5 = -0.3
    # A2 = 0.6; A1 = 0.2+0.5*0.6 = 0.5; A0 = -0.3+0.5*0.5 = -0.05; returns = A + V.
    r = jnp.array([[0.0, 0.0, 0.0, 1.0, 0.0]])
    v = jnp.array([[9.0, 0.5, 0.2, 0.4, 9.0]])  # values outside the response are ignored
    m = jnp.array([[0, 1, 1, 1, 0]])
    adv, ret = advantages.gae(r, v, m, gamma=1.0, lam=0.5)
    np.testing.assert_allclose(adv[0], [0, -0.05, 0.5, 0.6, 0], atol=1e-6)
    np.testing.assert_allclose(ret[0], [0, 0.45, 0.7, 1.0, 0], atol=1e-6)
    rng = np.random.default_rng(0)
    rr, vv = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    adv, _ = advantages.gae(rr, vv, np.ones((4, 7)), gamma=0.9, lam=0.8)
    for i in range(4):
        np.testing.assert_allclose(adv[i], naive_gae(rr[i], vv[i], 0.9, 0.8), atol=1e-5)


def test_clipped_policy_loss_by_hand():
    # ratios e^{0.5}=1.6487 (A=+1 -> clipped at 1.2), e^{-0.5}=0.6065 (A=-2 -> clipped at 0.8), masked token.
    logp = jnp.array([[0.5, -0.5, 3.0]])
    old = jnp.zeros((1, 3))
    a = jnp.array([[1.0, -2.0, 5.0]])
    m = jnp.array([[1, 1, 0]])
    t = ppo.clipped_policy_loss(logp, old, a, m, clip_eps=0.2)
    # token0: max(-1.6487, -1.2) = -1.2 (clipped); token1: max(1.2131, 1.6) = 1.6 (clipped)
    assert float(t.loss_sum) == pytest.approx(-1.2 + 1.6, rel=1e-5)
    assert float(t.clipfrac_sum) == 2 and float(t.count) == 2
    k = (math.exp(0.5) - 1 - 0.5) + (math.exp(-0.5) - 1 + 0.5)
    assert float(t.approx_kl_sum) == pytest.approx(k, rel=1e-5)


def test_value_loss_clipping_by_hand():
    v, old, ret = jnp.array([[1.0, 0.0]]), jnp.array([[0.5, 0.0]]), jnp.array([[0.0, 1.0]])
    s, n = ppo.value_loss(v, old, ret, jnp.ones((1, 2)), clip_eps=0.2)
    # token0: max((1-0)^2, (0.7-0)^2) = 1 ; token1: max(1, 1) = 1  -> 0.5*(1+1)
    assert float(s) == pytest.approx(1.0) and float(n) == 2


def test_grpo_and_rloo_by_hand():
    rewards = jnp.array([[0.0, 1.0], [0.0, 0.0], [0.0, 3.0], [0.0, 2.0]])  # sequence rewards 1,0,3,2
    mask = jnp.ones((4, 2))
    adv, _ = advantages.ADVANTAGE_ESTIMATORS.get("grpo")(rewards, mask, group_size=2)
    s = math.sqrt(0.5)  # std (ddof=1) of {1, 0} and of {3, 2}
    np.testing.assert_allclose(adv[:, 0], [0.5 / s, -0.5 / s, 0.5 / s, -0.5 / s], rtol=1e-5)
    adv, _ = advantages.ADVANTAGE_ESTIMATORS.get("rloo")(rewards, mask, group_size=2)
    np.testing.assert_allclose(adv[:, 1], [1, -1, 1, -1])
    with pytest.raises(ValueError, match="group_size"):
        advantages.ADVANTAGE_ESTIMATORS.get("rloo")(rewards[:3], mask[:3], group_size=2)


def test_kl_estimators_and_shaped_rewards():
    d = np.array([0.3, -0.7])
    np.testing.assert_allclose(kl.kl_estimate(d, 0.0, "k1"), d)
    np.testing.assert_allclose(kl.kl_estimate(d, 0.0, "k2"), d**2 / 2)
    np.testing.assert_allclose(kl.kl_estimate(d, 0.0, "k3"), np.exp(-d) - 1 + d, rtol=1e-6)
    r = ppo.kl_shaped_rewards(jnp.array([2.0]), jnp.array([[0.1, 0.2, 0.3, 9.0]]), jnp.array([[1, 1, 1, 0]]),
                              kl_coef=0.5)
    np.testing.assert_allclose(r[0], [-0.05, -0.1, 2.0 - 0.15, 0.0], rtol=1e-6)


def test_whiten():
    x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    m = jnp.array([[1, 1, 1, 0]])
    w = advantages.whiten(x, m)
    np.testing.assert_allclose(w[0], [-math.sqrt(1.5), 0, math.sqrt(1.5), 0], rtol=1e-5)
