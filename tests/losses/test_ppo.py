"""PPO / GRPO / RLOO pieces against hand-computed values."""

import math

import jax
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
    np.testing.assert_allclose(adv[:, 0], [0.5 / (s + 1e-4), -0.5 / (s + 1e-4)] * 2, rtol=1e-6)
    adv, _ = advantages.ADVANTAGE_ESTIMATORS.get("rloo")(rewards, mask, group_size=2)
    np.testing.assert_allclose(adv[:, 1], [1, -1, 1, -1])
    with pytest.raises(ValueError, match="group_size"):
        advantages.ADVANTAGE_ESTIMATORS.get("rloo")(rewards[:3], mask[:3], group_size=2)


def test_grpo_advantages_per_scale_rewards_by_hand():
    """TRL GRPOTrainer: (r - mean_group) / (std + 1e-4), std with Bessel's correction; groups of 3."""
    seq = jnp.array([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    # group 1: mean 1/3, deviations (2/3, -1/3, -1/3), std = sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3);
    # group 2: all equal -> 0 (the 1e-4 keeps 0/0 away).
    group = advantages.grpo_advantages(seq, scale_rewards="group")
    np.testing.assert_allclose(group, [[1.15450057, -0.57725029, -0.57725029], [0, 0, 0]], rtol=1e-6)
    # batch: the std of all six rewards {1, 0, 0, 2, 2, 2} = sqrt((174 / 36) / 5) = 0.98319208.
    batch = advantages.grpo_advantages(seq, scale_rewards="batch")
    np.testing.assert_allclose(batch, [[0.67799455, -0.33899727, -0.33899727], [0, 0, 0]], rtol=1e-6)
    none = advantages.grpo_advantages(seq, scale_rewards="none")  # Dr. GRPO
    np.testing.assert_allclose(none, [[2 / 3, -1 / 3, -1 / 3], [0, 0, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown scale_rewards"):
        advantages.grpo_advantages(seq, scale_rewards="global")
    # Through the estimator: token rewards sum to the sequence reward, broadcast on the response tokens.
    rewards = jnp.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    mask = jnp.array([[1, 1], [1, 1], [1, 0], [1, 0], [1, 1], [1, 1]], jnp.float32)
    adv, ret = advantages.ADVANTAGE_ESTIMATORS.get("grpo")(rewards, mask, group_size=3, scale_rewards="group")
    np.testing.assert_allclose(adv, group.reshape(-1, 1) * mask, rtol=1e-6)
    np.testing.assert_array_equal(adv, ret)


def test_rloo_advantages_with_sequence_kl_penalty_by_hand():
    """TRL RLOOTrainer: r_i = score_i - beta * sum_t (logp_old - logp_ref), A_i = r_i - mean_{j != i} r_j."""
    scores = jnp.array([1.0, 0.0, 2.0])
    k1 = jnp.array([[0.2, 0.2, 9.0], [0.4, 0.0, 0.0], [-0.2, 0.0, 9.0]])  # 9: outside the response
    mask = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 0]], jnp.float32)
    token_rewards = ppo.kl_shaped_rewards(scores, k1 * mask, mask, kl_coef=0.5)
    # r = (1 - 0.5 * 0.4, 0 - 0.5 * 0.4, 2 + 0.5 * 0.2) = (0.8, -0.2, 2.1)
    # baselines: (-0.2 + 2.1) / 2 = 0.95, (0.8 + 2.1) / 2 = 1.45, (0.8 - 0.2) / 2 = 0.3
    adv, _ = advantages.ADVANTAGE_ESTIMATORS.get("rloo")(token_rewards, mask, group_size=3)
    np.testing.assert_allclose(adv[:, 0], [0.8 - 0.95, -0.2 - 1.45, 2.1 - 0.3], rtol=1e-5)
    np.testing.assert_array_equal(adv[:, 2], [0, 0, 0])


def test_k3_kl_is_trls_grpo_estimator():
    """exp(ref - logp) - (ref - logp) - 1, per token, non-negative."""
    logp = jnp.array([-1.0, -2.0, -0.3])
    ref = jnp.array([-1.5, -1.0, -0.3])
    # ref - logp = -0.5: e^-0.5 + 0.5 - 1 = 0.10653066; ref - logp = 1: e - 1 - 1 = 0.71828183; equal: 0
    np.testing.assert_allclose(kl.kl_estimate(logp, ref, "k3"), [math.exp(-0.5) - 0.5, math.e - 2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(kl.kl_estimate(logp, ref, "k3"), [0.10653066, 0.71828183, 0.0], rtol=1e-6)


# Two responses of unequal length on the sampling policy (ratio 1, so each token's clipped loss is -A):
# row 0 one token with A = +1, row 1 three tokens with A = -1.
AGG_MASK = jnp.array([[1, 0, 0], [1, 1, 1]], jnp.float32)
AGG_ADV = jnp.array([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])


def aggregated(name, max_new_tokens=4):
    agg = ppo.LOSS_AGGREGATIONS.get(name)
    logp = jnp.zeros((2, 3))
    terms = ppo.clipped_policy_loss(logp, logp, AGG_ADV, AGG_MASK, weights=agg.weights(AGG_MASK))
    counts = {"tokens": 4.0, "sequences": 2.0, "token_slots": 2.0 * max_new_tokens}
    return float(terms.loss_sum / counts[agg.normaliser])


def test_loss_aggregations_differ_on_unequal_lengths_by_hand():
    # token (PPO; TRL dapo/bnpo): (-1 + 1 + 1 + 1) / 4 tokens = 0.5
    assert aggregated("token") == pytest.approx(0.5, abs=1e-7)
    # sequence (TRL grpo): mean of (-1 / 1, 3 / 3) = 0: the short positive answer weighs as much as the long one
    assert aggregated("sequence") == pytest.approx(0.0, abs=1e-7)
    # constant (TRL dr_grpo): (-1 + 3) / (2 sequences x 4 max_new_tokens) = 0.25
    assert aggregated("constant") == pytest.approx(0.25, abs=1e-7)


def test_clipped_policy_loss_weights_default_to_the_mask():
    """PPO-clip is unchanged: weights=None is the mask, and the token aggregation's weights are the mask."""
    logp = jnp.array([[0.5, -0.5, 3.0]])
    a, m, old = jnp.array([[1.0, -2.0, 5.0]]), jnp.array([[1, 1, 0]]), jnp.zeros((1, 3))
    plain = ppo.clipped_policy_loss(logp, old, a, m, clip_eps=0.2)
    w = ppo.LOSS_AGGREGATIONS.get("token").weights(m)
    token = ppo.clipped_policy_loss(logp, old, a, m, clip_eps=0.2, weights=w)
    for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(token)):
        np.testing.assert_array_equal(x, y)
    assert float(plain.loss_sum) == pytest.approx(-1.2 + 1.6, rel=1e-5)


def test_rloo_sequence_ratio_loss_by_hand():
    """TRL RLOOTrainer: rho_i = exp(sum_t logp - sum_t old), -min(rho A, clip(rho) A), mean over sequences."""
    old = jnp.zeros((2, 3))
    logp = jnp.array([[0.1, 0.2, 7.0], [-0.1, 7.0, 7.0]])  # 7: outside the response, ignored
    adv = jnp.array([[1.0, 1.0, 0.0], [-2.0, 0.0, 0.0]])
    m = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
    w = ppo.LOSS_AGGREGATIONS.get("sequence").weights(m)
    t = ppo.POLICY_LOSSES.get("rloo")(logp, old, adv, m, weights=w, clip_eps=0.2)
    # row 0: rho = e^0.3 = 1.34986, A = 1 -> clipped at 1.2 -> -1.2
    # row 1: rho = e^-0.1 = 0.904837 (inside the clip range), A = -2 -> 1.809675
    np.testing.assert_allclose(float(t.loss_sum) / 2, (-1.2 + 2 * math.exp(-0.1)) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(t.loss_sum) / 2, 0.30483742, rtol=1e-6)
    assert float(t.clipfrac_sum) == 2 and float(t.count) == 3  # row 0 clipped: its 2 tokens
    # The token-ratio PPO loss on the same numbers clips only token 2 of row 0 and differs.
    tok = ppo.clipped_policy_loss(logp, old, adv, m, clip_eps=0.2, weights=w)
    assert abs(float(tok.loss_sum) - float(t.loss_sum)) > 0.01


def test_reinforce_loss_by_hand_and_same_gradient_as_rloo_on_policy():
    """RLOO paper: -A_i log pi(y_i | x); at ratio 1 the clipped sequence surrogate has its gradient."""
    logp = jnp.array([[-1.0, -2.0], [-0.5, 0.0]])
    adv = jnp.array([[1.0, 1.0], [-2.0, 0.0]])
    m = jnp.array([[1, 1], [1, 0]], jnp.float32)
    w = ppo.LOSS_AGGREGATIONS.get("sequence").weights(m)
    t = ppo.POLICY_LOSSES.get("reinforce")(logp, logp, adv, m, weights=w)
    # row 0: -1 * (-3) = 3; row 1: -(-2) * (-0.5) = -1; mean over sequences = 1
    assert float(t.loss_sum) / 2 == pytest.approx(1.0, rel=1e-6)
    grad = lambda name: jax.grad(lambda lp: ppo.POLICY_LOSSES.get(name)(lp, logp, adv, m, weights=w).loss_sum)(logp)
    np.testing.assert_allclose(grad("rloo"), grad("reinforce"), rtol=1e-6)
    np.testing.assert_allclose(grad("reinforce"), [[-1, -1], [2, 0]], rtol=1e-6)
    assert ppo.POLICY_LOSSES.get("reinforce").on_policy and ppo.POLICY_LOSSES.get("rloo").per_sequence
    assert not ppo.POLICY_LOSSES.get("ppo").per_sequence


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
