"""Reward-model loss terms against a direct transcription of the released compute_loss."""

import numpy as np
import pytest

from mm_rlhf_jax.losses import reward


def released_loss(rc, rr, tie, crit, no_critic, *, tie_w, float_w, center_w, critic_w):
    """RewardTrainer.compute_loss of the MM-RLHF release, in numpy (papers.md §1(f) excerpt 2)."""
    nt = ~tie
    loss_reward = np.mean(np.log1p(np.exp(-(rc[nt] - rr[nt]))))
    if tie.any():
        loss_reward += tie_w * np.mean((rc[tie] - rr[tie]) ** 2)
    loss_reward *= float_w
    loss_reward += center_w * np.mean((rc + rr) ** 2)
    loss_critic = critic_w * crit.sum(-1) * (1 - no_critic)
    return loss_reward + loss_critic.mean()


def test_combined_loss_matches_released_code():
    rng = np.random.default_rng(0)
    b = 8
    rc, rr = rng.normal(size=b), rng.normal(size=b)
    tie = np.array([0, 0, 1, 0, 0, 1, 0, 0], bool)
    crit = rng.uniform(0.5, 3.0, size=(b, 2))
    has = np.array([1, 1, 1, 0, 1, 1, 1, 0], bool)
    weights = dict(tie_w=0.5, float_w=1.0, center_w=0.01, critic_w=1.0)
    expected = released_loss(rc, rr, tie, crit, (~has).astype(float), **weights)
    terms = reward.reward_loss_terms(rc, rr, is_tie=tie, critique_nll=crit, has_critique=has)
    loss, metrics = reward.combine_reward_loss(terms, score_weight=1.0, tie_weight=0.5, center_weight=0.01,
                                               critique_weight=1.0)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["rm/critique_nll"]) == pytest.approx(crit[has].mean(), rel=1e-5)


def test_padding_examples_have_zero_weight():
    rc, rr = np.array([1.0, 5.0]), np.array([0.0, -5.0])
    full = reward.reward_loss_terms(rc[:1], rr[:1])
    padded = reward.reward_loss_terms(rc, rr, weight=np.array([1.0, 0.0]))
    for a, b in zip(full.__dict__.values(), padded.__dict__.values()):
        assert float(a) == pytest.approx(float(b))
    assert float(full.bt_sum) == pytest.approx(np.log1p(np.exp(-1.0)))
