"""ppo.advantage as a whole preset (objectives.resolve), and the actor objective it selects, by hand."""

import math

import jax.numpy as jnp
import pytest

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.ppo import objectives, step as ppo_step
from mm_rlhf_jax.config_lib import ppo_block


def test_each_advantage_implies_its_algorithm():
    gae, grpo, rloo = (objectives.resolve(ppo_block(advantage=a)) for a in ("gae", "grpo", "rloo"))
    assert gae == objectives.Objective(advantage="gae", critic=True, whiten_advantages=True, kl_mode="reward",
                                       kl_estimator="k1", policy_loss="ppo", loss_aggregation="token",
                                       scale_rewards=None)
    # DeepSeekMath / TRL GRPOTrainer(loss_type="grpo"): no critic, no whitening, k3 KL in the loss.
    assert grpo == objectives.Objective(advantage="grpo", critic=False, whiten_advantages=False, kl_mode="loss",
                                        kl_estimator="k3", policy_loss="ppo", loss_aggregation="sequence",
                                        scale_rewards="group")
    # TRL RLOOTrainer: k1 sequence penalty in the reward, sequence-ratio clipped loss, mean over sequences.
    assert rloo == objectives.Objective(advantage="rloo", critic=False, whiten_advantages=False, kl_mode="reward",
                                        kl_estimator="k1", policy_loss="rloo", loss_aggregation="sequence",
                                        scale_rewards=None)


def test_the_schema_leaves_preset_knobs_unset_and_the_command_line_path_resolves():
    c = config_lib.schema("ppo")
    assert all(c.ppo[k] is None for k in objectives.PRESET_KNOBS)
    # What --config.ppo.advantage=grpo does to the tiny preset.
    tiny_grpo = config_lib.override(config_lib.preset("ppo", "tiny"), {"ppo.advantage": "grpo"})
    assert objectives.resolve(tiny_grpo.ppo) == objectives.ALGORITHMS.get("grpo")
    assert objectives.resolve(config_lib.preset("ppo", "tiny").ppo) == objectives.ALGORITHMS.get("gae")


def test_explicit_knobs_win_over_the_preset():
    o = objectives.resolve(ppo_block(advantage="grpo", loss_aggregation="constant", scale_rewards="none",
                                     kl_mode="reward", kl_estimator="k1", whiten_advantages=True))
    assert (o.loss_aggregation, o.scale_rewards, o.kl_mode, o.kl_estimator, o.whiten_advantages) == (
        "constant", "none", "reward", "k1", True)
    assert not o.critic
    o = objectives.resolve(ppo_block(advantage="rloo", policy_loss="reinforce", epochs=1, num_minibatches=1))
    assert o.policy_loss == "reinforce" and o.kl_mode == "reward"
    # An explicit value equal to the preset's is the same objective.
    assert objectives.resolve(ppo_block(advantage="gae", kl_mode="reward")) == objectives.ALGORITHMS.get("gae")


@pytest.mark.parametrize("overrides,match", [
    (dict(advantage="ppo"), r"unknown ppo.advantage 'ppo'; use \['gae', 'grpo', 'rloo'\]"),
    (dict(advantage="gae", scale_rewards="group"), r"ppo.scale_rewards='group' does not apply to ppo.advantage='gae'"),
    (dict(advantage="rloo", scale_rewards="batch"), r"ppo.scale_rewards='batch' does not apply"),
    (dict(advantage="grpo", scale_rewards="global"), r"unknown ppo.scale_rewards 'global'"),
    (dict(advantage="grpo", kl_mode="both"), r"unknown ppo.kl_mode 'both'; use \['loss', 'none', 'reward'\]"),
    (dict(advantage="grpo", kl_estimator="k4"), r"unknown ppo.kl_estimator 'k4'"),
    (dict(advantage="grpo", loss_aggregation="dapo"), r"unknown ppo.loss_aggregation 'dapo'"),
    (dict(advantage="gae", policy_loss="grpo"), r"unknown ppo.policy_loss 'grpo'"),
    (dict(advantage="rloo", loss_aggregation="token"), r"ppo.policy_loss='rloo' has one term per sequence: set "
                                                       r"ppo.loss_aggregation='sequence'"),
    (dict(advantage="rloo", policy_loss="reinforce"), r"ppo.policy_loss='reinforce' is on-policy .* set ppo.epochs=1"),
    (dict(advantage="grpo", samples_per_prompt=1), r"ppo.advantage='grpo' compares samples .* samples_per_prompt >= 2"),
])
def test_bad_combinations_name_the_knob(overrides, match):
    with pytest.raises(ValueError, match=match):
        objectives.resolve(ppo_block(**overrides))


def test_kl_coefficients_follow_the_placement():
    for mode, want in (("reward", (0.2, 0.0)), ("loss", (0.0, 0.2)), ("none", (0.0, 0.0))):
        o = objectives.resolve(ppo_block(advantage="grpo", kl_mode=mode))
        assert objectives.kl_coefficients(o, 0.2) == want


# The GRPO objective of TRL on a hand example: two responses of unequal length, the policy is the sampling
# policy (ratio 1: each token's clipped loss is -A), beta = kl_coef = 0.1, k3 KL in the loss.
#   row 0: 1 token,  A = +1, logp = ref                  -> per-token loss (-1)
#   row 1: 3 tokens, A = -1, ref - logp = (1, 0, 0)      -> per-token loss (1 + 0.1 (e - 2), 1, 1)
MASK = jnp.array([[1, 0, 0], [1, 1, 1]], jnp.float32)
LOGP = jnp.array([[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
MB = {"response_mask": MASK, "old_logp": LOGP, "ref_logp": jnp.array([[-1.0, 0.0, 0.0], [0.0, -1.0, -1.0]]),
      "advantages": jnp.array([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])}
K3 = math.e - 2  # exp(1) - 1 - 1


def objective(**ppo):
    c = ppo_block(**{"kl_coef": 0.1, "max_new_tokens": 4, "entropy_coef": 0.0, **ppo})
    ent = jnp.full((2, 3), 0.7)
    return ppo_step.actor_objective(LOGP, ent, MB, c, ppo_step.counts(MB, c.max_new_tokens))


def test_grpo_objective_is_the_per_sequence_mean_of_clipped_loss_plus_beta_k3():
    loss, m = objective(advantage="grpo")
    # TRL loss_type="grpo": ((per_token_loss * mask).sum(-1) / mask.sum(-1)).mean()
    want = (-1.0 + (3.0 + 0.1 * K3) / 3.0) / 2.0  # = 0.0119714
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(m["ppo/policy_loss"]) == pytest.approx(0.0, abs=1e-7)
    assert float(m["ppo/kl_loss"]) == pytest.approx(K3 / 3.0 / 2.0, rel=1e-5)
    assert float(m["ppo/approx_kl"]) == pytest.approx(0.0, abs=1e-7) and float(m["ppo/clipfrac"]) == 0.0


def test_token_mean_differs_from_the_per_sequence_mean_on_unequal_lengths():
    seq, _ = objective(advantage="grpo")
    tok, _ = objective(advantage="grpo", loss_aggregation="token")  # TRL dapo / bnpo
    const, _ = objective(advantage="grpo", loss_aggregation="constant")  # TRL dr_grpo, max_new_tokens 4
    assert float(tok) == pytest.approx((-1.0 + 3.0 + 0.1 * K3) / 4.0, rel=1e-5)  # = 0.5179570
    assert float(const) == pytest.approx((-1.0 + 3.0 + 0.1 * K3) / 8.0, rel=1e-5)  # = 0.2589785
    assert abs(float(tok) - float(seq)) > 0.5


def test_entropy_bonus_is_a_token_mean_under_every_aggregation():
    for agg in ("token", "sequence", "constant"):
        base, _ = objective(advantage="grpo", loss_aggregation=agg)
        with_ent, m = objective(advantage="grpo", loss_aggregation=agg, entropy_coef=0.5)
        assert float(base) - float(with_ent) == pytest.approx(0.5 * 0.7, rel=1e-5)
        assert float(m["ppo/entropy"]) == pytest.approx(0.7, rel=1e-6)


def test_ppo_objective_is_the_token_mean_with_no_kl_in_the_loss():
    loss, m = objective(advantage="gae")  # KL in the reward: the loss has none of it
    assert float(loss) == pytest.approx((-1.0 + 3.0) / 4.0, rel=1e-6)
    # The k1 estimate is still reported: logp - ref = (0 | -1, 0, 0) over 4 tokens.
    assert float(m["ppo/kl_loss"]) == pytest.approx(-0.25, rel=1e-6)
