"""PPO phases against the loss functions and hand computations, on their own numbers.

The log-prob reference here materialises [B, T, V] logits (module.apply with
compute_logits=True, log_softmax, gather): independent of the
kernels.token_logprobs path the steps use.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train.pair_reference import assert_same_update

from mm_rlhf_jax.losses.kl import kl_estimate
from mm_rlhf_jax.losses.ppo import kl_shaped_rewards, value_loss
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.models.heads import ModelWithHeads, ValueHead
from mm_rlhf_jax.algorithms.ppo import objectives, step as ppo_step
from mm_rlhf_jax.algorithms.ppo.trainer import sampling_config
from mm_rlhf_jax.config_lib import optim_block, ppo_block
from mm_rlhf_jax.rollout import left_pad, sample
from mm_rlhf_jax.rollout.generate import apply_fn
from mm_rlhf_jax.train import partition, state as state_lib
from mm_rlhf_jax.train.optim import make_optimizer

V, STOP, G = 48, 3, 2
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]


def cfg(**kw):
    base = dict(max_new_tokens=6, temperature=0.7, samples_per_prompt=G, advantage="gae", kl_coef=0.1,
                entropy_coef=0.01)
    base.update(kw)
    return ppo_block(**base)


@pytest.fixture(scope="module")
def models():
    dc = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                       architecture="qwen2", qkv_bias=True, dtype=jnp.float32, initializer_range=0.3)
    actor = Decoder(dc)
    critic = ModelWithHeads(trunk=actor, value_head=ValueHead(initializer_range=0.3))
    return actor, random_params(actor, 1), random_params(actor, 2), critic, random_params(critic, 3)


def random_params(module, seed):
    """N(0, 0.3) weights, unit RMSNorm weights, from numpy on the abstract shapes (an XLA init compile costs ~6 s)."""
    shapes = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))))
    rng = np.random.default_rng(seed)
    fill = lambda path, x: (jnp.ones(x.shape, x.dtype) if "norm" in jax.tree_util.keystr(path)
                            else jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype))
    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


@pytest.fixture(scope="module")
def rolled(models):
    """One rollout shared by every estimator (sampling depends only on temperature and max_new_tokens)."""
    return rollout(models, cfg())


@pytest.fixture(scope="module")
def gae_experience(models, rolled):
    return experience(models, cfg(), rolled=rolled)


class Hashable:
    """Static jit argument by identity (modules and params tuples, configs)."""

    def __init__(self, value):
        self.value = value


@functools.partial(jax.jit, static_argnums=(0, 3))
def reference_logprobs(module, params, seqs, temperature):
    logits = module.apply({"params": params}, seqs["input_ids"], attention_mask=seqs["attention_mask"],
                          positions=seqs["positions"]).logits / temperature
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    lp = jnp.take_along_axis(logp, seqs["input_ids"][:, 1:, None], -1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    pad = lambda x: jnp.pad(x, ((0, 0), (1, 0)))
    return pad(lp), pad(ent)


def numpy_gae(r, v, m, gamma, lam):
    """GAE by the textbook recursion over each row's response tokens (a plain loop)."""
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        idx = np.nonzero(m[b])[0]
        next_v = next_a = 0.0
        for t in idx[::-1]:
            delta = r[b, t] + gamma * next_v - v[b, t]
            next_a = delta + gamma * lam * next_a
            adv[b, t], next_v = next_a, v[b, t]
    return adv, (adv + v) * m


def rollout(models, c, seed=0):
    actor, params = models[0], models[1]
    ids, mask = left_pad([p for p in PROMPTS for _ in range(G)], 0)
    prompts = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask)}
    out = jax.jit(lambda p, pr, rng: sample(apply_fn(actor), p, pr["prompt_ids"], pr["prompt_mask"], actor.init_cache,
                                            max_new_tokens=c.max_new_tokens, stop_ids=(STOP,), rng=rng,
                                            sampling=sampling_config(c)))(params, prompts, jax.random.PRNGKey(seed))
    scores = jnp.asarray(np.random.default_rng(seed).uniform(0, 1, len(ids)), jnp.float32)
    return prompts, out, scores


def experience(models, c, with_critic=True, seed=0, rolled=None):
    actor, params, ref, critic, cparams = models
    prompts, out, scores = rolled or rollout(models, c, seed)
    fn = jax.jit(functools.partial(ppo_step.experience_step, actor_module=actor,
                                   critic_module=critic if with_critic else None, c=c))
    exp, metrics = fn(params, ref, cparams if with_critic else None, prompts,
                      {"tokens": out.tokens, "mask": out.mask}, scores)
    return prompts, out, scores, exp, metrics


def test_experience_logprobs_match_the_sampler_and_a_full_logits_reference(models, gae_experience):
    prompts, out, scores, exp, _ = gae_experience
    assert int(out.mask.sum()) > len(PROMPTS) * G  # responses of several tokens
    p = prompts["prompt_ids"].shape[1]
    m = np.asarray(out.mask)
    # The sampler's behaviour log-probs (temperature 0.7) are the experience's old log-probs.
    np.testing.assert_allclose(np.asarray(exp["old_logp"])[:, p:] * m, np.asarray(out.logprobs) * m, atol=2e-5)
    seqs = {k: exp[k] for k in ("input_ids", "attention_mask", "positions")}
    ref_lp, _ = reference_logprobs(models[0], models[2], seqs, 0.7)  # jitted, static module
    np.testing.assert_allclose(np.asarray(exp["ref_logp"]), np.asarray(ref_lp * exp["response_mask"]), atol=2e-5)
    assert float(jnp.abs(exp["ref_logp"] - exp["old_logp"]).max()) > 0.1  # a real KL to the reference


def test_gae_experience_equals_the_loss_functions_on_its_own_numbers(models, gae_experience):
    c = cfg()
    prompts, out, scores, exp, metrics = gae_experience
    m = exp["response_mask"]
    apply = jax.jit(lambda p, e: models[3].apply({"params": p}, e["input_ids"], attention_mask=e["attention_mask"],
                                                 positions=e["positions"]).values)
    out_values = apply(models[4], exp)
    values = jnp.pad(out_values[:, :-1], ((0, 0), (1, 0))) * m  # V(state before token t)
    np.testing.assert_allclose(np.asarray(exp["old_values"]), np.asarray(values), atol=1e-5)
    kl = kl_estimate(exp["old_logp"], exp["ref_logp"], "k1") * m
    rewards = kl_shaped_rewards(scores, kl, m, kl_coef=0.1)
    adv, ret = numpy_gae(np.asarray(rewards), np.asarray(values), np.asarray(m), c.gamma, c.lam)
    np.testing.assert_allclose(np.asarray(exp["returns"]), ret, atol=1e-5)
    mm = np.asarray(m)
    mean = (adv * mm).sum() / mm.sum()
    std = np.sqrt((((adv - mean) ** 2) * mm).sum() / mm.sum())
    np.testing.assert_allclose(np.asarray(exp["advantages"]), (adv - mean) / std * mm, atol=1e-4)
    # Hand check of the reward shaping: the score sits on the last response token, minus 0.1 * k1.
    row = 0
    idx = np.nonzero(np.asarray(m[row]))[0]
    r = np.asarray(rewards[row])
    np.testing.assert_allclose(r[idx[-1]], float(scores[row]) - 0.1 * float(kl[row, idx[-1]]), atol=1e-6)
    np.testing.assert_allclose(metrics["rollout/kl"], float(jnp.sum(kl) / jnp.sum(m)), rtol=1e-5)


def make_state(models, c, with_critic=True, lr=1e-3, microbatches=1):
    actor, params, _, critic, cparams = models
    tx = make_optimizer(optim_block(name="adam", lr=lr, warmup_ratio=0.0, schedule="constant", grad_clip=0.0), 10)
    amask = partition.trainable_mask(params)
    st = lambda p, m: state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=jax.jit(tx.init)(
        partition.split(p, m)[0]), rng=jax.random.PRNGKey(0))
    cmask = partition.trainable_mask(cparams) if with_critic else None
    state = ppo_step.RLState(step=jnp.zeros((), jnp.int32), actor=st(params, amask),
                             critic=st(cparams, cmask) if with_critic else None, rng=jax.random.PRNGKey(0))
    update = jax.jit(functools.partial(ppo_step.update_step, actor_module=actor,
                                       critic_module=critic if with_critic else None, actor_tx=tx, critic_tx=tx,
                                       actor_mask=amask, critic_mask=cmask, c=c, microbatches=microbatches))
    return state, update


def trl_reduce(per_token, m, aggregation):
    """TRL's reductions, written as TRL writes them: loss_type "grpo" (per-sequence mean, then mean) or
    "dapo"/"bnpo" (over all tokens of the batch)."""
    if aggregation == "sequence":
        return jnp.mean(jnp.sum(per_token * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0))
    assert aggregation == "token"
    return jnp.sum(per_token * m) / jnp.sum(m)


def trl_policy_terms(logp, old_logp, adv, m, policy_loss, eps):
    """(per-token loss or per-sequence loss, clipped-token indicator) of TRL's GRPO / RLOO losses."""
    if policy_loss == "ppo":  # GRPOTrainer: coef_1 = exp(logp - old), coef_2 = clamp(coef_1, 1 - eps, 1 + eps)
        coef_1 = jnp.exp(logp - old_logp)
        coef_2 = jnp.clip(coef_1, 1 - eps, 1 + eps)
        return -jnp.minimum(coef_1 * adv, coef_2 * adv), (coef_2 * adv < coef_1 * adv).astype(jnp.float32)
    assert policy_loss == "rloo"  # RLOOTrainer: the sequence log-ratio of the summed token log-probs
    a = jnp.sum(adv * m, -1) / jnp.sum(m, -1)
    coef_1 = jnp.exp(jnp.sum(logp * m, -1) - jnp.sum(old_logp * m, -1))
    coef_2 = jnp.clip(coef_1, 1 - eps, 1 + eps)
    clipped = (coef_2 * a < coef_1 * a).astype(jnp.float32)[:, None] * m
    return -jnp.minimum(coef_1 * a, coef_2 * a), clipped


@functools.partial(jax.jit, static_argnums=(0, 4))
def expected_losses(models, state, exp, idx, c):
    """The update's losses recomputed with TRL's formulas on the minibatch and a full-logits reference."""
    models, c = models.value, c.value
    o = objectives.resolve(c)
    mb = jax.tree.map(lambda x: x[idx], exp)
    m = mb["response_mask"]
    logp, ent = reference_logprobs.__wrapped__(models[0], state.actor.params, mb, c.temperature)
    pg, clipped = trl_policy_terms(logp, mb["old_logp"], mb["advantages"], m, o.policy_loss, c.clip_eps)
    kl_tok = kl_estimate(logp, mb["ref_logp"], o.kl_estimator)
    if o.policy_loss == "rloo":
        policy = jnp.mean(pg)
    else:
        policy = trl_reduce(pg, m, o.loss_aggregation)
    kl = trl_reduce(kl_tok, m, o.loss_aggregation)
    n = jnp.sum(m)
    ent = jnp.sum(ent * m) / n
    coef = c.kl_coef if o.kl_mode == "loss" else 0.0
    log_ratio = logp - mb["old_logp"]
    out = {"ppo/policy_loss": policy, "ppo/clipfrac": jnp.sum(clipped * m) / n,
           "ppo/approx_kl": jnp.sum((jnp.exp(log_ratio) - 1 - log_ratio) * m) / n, "ppo/kl_loss": kl,
           "ppo/entropy": ent, "ppo/actor_loss": policy + coef * kl - c.entropy_coef * ent}
    if state.critic is not None:
        v = models[3].apply({"params": state.critic.params}, mb["input_ids"], attention_mask=mb["attention_mask"],
                            positions=mb["positions"]).values
        v = jnp.pad(v[:, :-1], ((0, 0), (1, 0)))
        vs, vc = value_loss(v, mb["old_values"], mb["returns"], m, clip_eps=c.value_clip)
        out["ppo/value_loss"] = vs / vc
    return out


def check_updates(models, c, exp, with_critic):
    state, update = make_state(models, c, with_critic, lr=3e-2)  # a big step so later ratios clip
    idx = jnp.arange(0, len(PROMPTS) * G, 2, dtype=jnp.int32)
    # First minibatch: the policy is the one that sampled, ratio = 1, so the clipped loss is -mean(A): over
    # tokens (PPO), or over sequences of their constant advantage (GRPO, RLOO).
    m, a = exp["response_mask"][idx], exp["advantages"][idx]
    if objectives.resolve(c).loss_aggregation == "sequence":
        first = float(-jnp.mean(jnp.sum(a * m, -1) / jnp.sum(m, -1)))
    else:
        first = float(-jnp.sum(a * m) / jnp.sum(m))
    static = Hashable(models), Hashable(c)
    for k in range(3):
        want = expected_losses(static[0], state, exp, idx, static[1])
        state, got = update(state, exp, idx)
        assert ("ppo/value_loss" in got) == with_critic
        for key, value in want.items():
            np.testing.assert_allclose(float(got[key]), float(value), rtol=2e-4, atol=2e-6, err_msg=key)
        if k == 0:
            np.testing.assert_allclose(float(got["ppo/policy_loss"]), first, rtol=1e-4, atol=1e-6)
            assert float(got["ppo/approx_kl"]) == pytest.approx(0.0, abs=1e-9)
    assert float(got["ppo/clipfrac"]) > 0  # after two big steps some ratios are clipped
    assert int(state.actor.step) == 3


def test_gae_updates_equal_the_loss_functions(models, gae_experience):
    """Critic + GAE, KL in the reward, entropy bonus: actor and critic losses, three updates."""
    check_updates(models, cfg(), gae_experience[3], with_critic=True)


def test_grpo_advantages_hand_computed_and_updates_equal_the_loss_functions(models, rolled):
    """advantage=grpo alone: no critic, group-normalised advantages unwhitened, k3 KL in the loss,
    per-sequence mean of the token losses (TRL loss_type="grpo")."""
    c = cfg(advantage="grpo")
    _, _, scores, exp, _ = experience(models, c, with_critic=False, rolled=rolled)
    s = np.asarray(scores).reshape(-1, G)  # kl in the loss: the sequence reward is the score
    expected = (s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + 1e-4)
    m = np.asarray(exp["response_mask"])
    np.testing.assert_allclose(np.asarray(exp["advantages"]), expected.reshape(-1, 1) * m, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(exp["old_values"]).max()) == 0.0
    check_updates(models, c, exp, with_critic=False)


def test_rloo_advantages_hand_computed_and_updates_equal_trls_loss(models, rolled):
    """advantage=rloo alone: k1 KL summed over the sequence in the reward, the sequence reward minus the
    mean of the other samples of its prompt, unwhitened; TRL RLOOTrainer's sequence-ratio clipped loss."""
    c = cfg(advantage="rloo", kl_coef=0.1)
    _, _, scores, exp, _ = experience(models, c, with_critic=False, rolled=rolled)
    m = np.asarray(exp["response_mask"])
    kl = np.asarray(kl_estimate(exp["old_logp"], exp["ref_logp"], "k1")) * m
    seq = (np.asarray(scores) - 0.1 * kl.sum(1)).reshape(-1, G)  # score - kl_coef * sequence KL
    expected = seq - (seq.sum(1, keepdims=True) - seq) / (G - 1)  # G = 2: the other sample's reward
    np.testing.assert_allclose(np.asarray(exp["advantages"]), expected.reshape(-1, 1) * m, rtol=1e-4, atol=1e-5)
    assert np.abs(expected).max() > 0.05
    check_updates(models, c, exp, with_critic=False)


def test_experience_refuses_a_critic_the_objective_does_not_match(models, rolled):
    with pytest.raises(ValueError, match="ppo.advantage='grpo' trains no critic"):
        experience(models, cfg(advantage="grpo"), with_critic=True, rolled=rolled)
    with pytest.raises(ValueError, match="ppo.advantage='gae' reads a critic's values"):
        experience(models, cfg(), with_critic=False, rolled=rolled)


def test_accumulated_update_equals_the_full_minibatch_update(models, gae_experience):
    """A minibatch of 4 rows in 2 microbatches == the minibatch at once: losses, grad norms, new params."""
    exp = gae_experience[3]
    idx = jnp.arange(0, len(PROMPTS) * G, 2, dtype=jnp.int32)
    out = []
    for k in (1, 2):
        state, update = make_state(models, cfg(), True, lr=3e-2, microbatches=k)
        out.append(jax.device_get(update(state, exp, idx)))
    (s1, m1), (s2, m2) = out
    for key in m1:
        np.testing.assert_allclose(m2[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    old = jax.device_get((models[1], models[4]))
    assert_same_update(old, (s2.actor.params, s2.critic.params), (s1.actor.params, s1.critic.params), rtol=1e-4)


def test_accumulated_grpo_update_equals_the_full_minibatch_update(models, rolled):
    """Per-sequence means and the sequence count survive microbatching: 2 microbatches == 1 (GRPO preset)."""
    c = cfg(advantage="grpo")
    exp = experience(models, c, with_critic=False, rolled=rolled)[3]
    idx = jnp.arange(0, len(PROMPTS) * G, 2, dtype=jnp.int32)
    out = []
    for k in (1, 2):
        state, update = make_state(models, c, False, lr=3e-2, microbatches=k)
        out.append(jax.device_get(update(state, exp, idx)))
    (s1, m1), (s2, m2) = out
    assert float(m1["ppo/kl_loss"]) != 0.0  # the k3 term is in play
    for key in m1:
        np.testing.assert_allclose(m2[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert_same_update(jax.device_get(models[1]), s2.actor.params, s1.actor.params, rtol=1e-4)
