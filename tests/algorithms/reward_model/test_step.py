"""Critique-RM train step against a hand computation on its own numbers.

The reference materialises [B*2, T, V] logits (module.apply with
compute_logits=True, log_softmax, gather) and reads the reward at each row's
last attended token itself, then assembles Bradley-Terry, tie, centering and
critique-NLL terms in numpy: independent of the chunked token-logprob kernel,
forward_pairs' reshapes and losses.reward that the step uses.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.train.pair_reference import assert_same_update

from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.models.heads import ModelWithHeads, RewardHead
from mm_rlhf_jax.algorithms.reward_model import step as rm_step
from mm_rlhf_jax.train import partition, state as state_lib

V, B, T = 40, 4, 10
# Non-default weights so a dropped or swapped weight changes the loss.
WEIGHTS = dict(score_weight=0.7, tie_weight=1.3, center_weight=0.05, critique_weight=0.4)


def reward_block(**kw):
    return ml_collections.ConfigDict({**WEIGHTS, **kw})


@pytest.fixture(scope="module")
def model():
    dc = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       architecture="qwen2", qkv_bias=True, dtype=jnp.float32, initializer_range=0.3)
    module = ModelWithHeads(trunk=Decoder(dc), reward_head=RewardHead(32, initializer_range=0.5))
    params = jax.jit(lambda k: nn.meta.unbox(module.init(k, jnp.zeros((1, 4), jnp.int32))["params"]))(
        jax.random.PRNGKey(0))
    return module, params


@pytest.fixture(scope="module")
def batch():
    """[B, 2, T] right-padded critic sequences; critique tokens marked by loss_mask; one tie, one without critique."""
    rng = np.random.default_rng(0)
    lengths = np.array([[10, 7], [6, 9], [8, 8], [5, 10]])
    prompt_len = np.array([[4, 3], [3, 5], [5, 4], [5, 10]])  # pair 3: no critique tokens at all
    ids = rng.integers(3, V, size=(B, 2, T)).astype(np.int32)
    pos = np.arange(T)
    attn = (pos < lengths[..., None]).astype(np.int32)
    loss_mask = ((pos >= prompt_len[..., None]) & (pos < lengths[..., None])).astype(np.float32)
    ids = np.where(attn == 1, ids, 0)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask,
            "is_tie": np.array([False, True, False, False]), "has_critique": np.array([True, True, True, False])}


def reference_terms(module, params, batch):
    """(rewards f32[B, 2], mean critique NLL f32[B, 2]) via full logits."""
    ids = jnp.asarray(batch["input_ids"]).reshape(B * 2, T)
    attn = jnp.asarray(batch["attention_mask"]).reshape(B * 2, T)
    out = jax.jit(lambda p: module.apply({"params": p}, ids, attention_mask=attn, compute_logits=True))(params)
    last = np.asarray(batch["attention_mask"]).reshape(B * 2, T).sum(-1) - 1
    rewards = np.asarray(out.token_rewards)[np.arange(B * 2), last, 0].reshape(B, 2)
    logp = np.asarray(jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32), axis=-1))
    tok_lp = np.take_along_axis(logp, np.asarray(ids)[:, 1:, None], -1)[..., 0]
    m = np.asarray(batch["loss_mask"]).reshape(B * 2, T)[:, 1:]
    nll = (-(tok_lp * m).sum(-1) / np.maximum(m.sum(-1), 1.0)).reshape(B, 2)
    return rewards.astype(np.float64), nll.astype(np.float64)


def hand_loss(rewards, nll, batch, c, *, critique: bool):
    d = rewards[:, 0] - rewards[:, 1]
    tie = np.asarray(batch["is_tie"])
    bt = np.mean(np.logaddexp(0.0, -d[~tie]))  # -log sigmoid(d)
    tie_term = np.mean(d[tie] ** 2)
    center = np.mean((rewards[:, 0] + rewards[:, 1]) ** 2)
    loss = c.score_weight * (bt + c.tie_weight * tie_term) + c.center_weight * center
    if critique:
        has = np.asarray(batch["has_critique"])
        loss += c.critique_weight * np.sum(nll[has].sum(-1)) / B
    return loss, dict(bt=bt, tie=tie_term, center=center)


def sgd_step(module, params, batch, c, mask, lr, *, critique=True):
    """(new params, metrics) of one jitted train_step with plain SGD (update = -lr * grad)."""
    tx = optax.sgd(lr)
    trainable, _ = partition.split(params, mask)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable),
                                 rng=jax.random.PRNGKey(0))
    new, metrics = jax.jit(lambda s, b: rm_step.train_step(s, b, module=module, tx=tx, mask=mask, c=c,
                                                           critique=critique))(
        state, batch)
    assert int(new.step) == 1
    return new.params, jax.device_get(metrics)


@pytest.fixture(scope="module")
def reference(model, batch):
    return reference_terms(*model, batch)


LR = 0.1
TRAINABLE = ("reward_head/.*", "trunk/layers_1/.*")


@pytest.fixture(scope="module")
def critique_step(model, batch):
    """One SGD step with WEIGHTS on the reward head and the last trunk layer only."""
    module, params = model
    mask = partition.trainable_mask(params, TRAINABLE)
    return (mask, *sgd_step(module, params, batch, reward_block(), mask, LR))


def test_loss_matches_hand_computation(model, batch, reference, critique_step):
    module, params = model
    c = reward_block()
    rewards, nll = reference
    expected, parts = hand_loss(rewards, nll, batch, c, critique=True)
    _, _, metrics = critique_step  # the step's metrics are computed at the pre-update params
    np.testing.assert_allclose(metrics["train/loss"], expected, rtol=2e-5)
    np.testing.assert_allclose(metrics["rm/bt"], parts["bt"], rtol=2e-5)
    np.testing.assert_allclose(metrics["rm/tie"], parts["tie"], rtol=2e-5)
    np.testing.assert_allclose(metrics["rm/center"], parts["center"], rtol=2e-5)
    has = batch["has_critique"]
    np.testing.assert_allclose(metrics["rm/critique_nll"], nll[has].mean(), rtol=2e-5)
    non_tie = ~batch["is_tie"]
    np.testing.assert_allclose(metrics["rm/accuracy"], np.mean(rewards[non_tie, 0] > rewards[non_tie, 1]))
    # The critique term is really there (the terms differ by a visible amount).
    assert expected - hand_loss(rewards, nll, batch, c, critique=False)[0] > 0.1
    # Scores of complete sequences (inference) are the same rewards.
    scores = jax.jit(lambda p, b: rm_step.score_step(p, b, module=module))(params, batch)
    np.testing.assert_allclose(np.asarray(scores), rewards, rtol=1e-5, atol=1e-6)


def test_step_updates_only_trainable_params(model, batch, reference, critique_step):
    _, params = model
    mask, new, _ = critique_step
    moved = 0
    for m, old, upd in zip(jax.tree.leaves(mask), jax.tree.leaves(params), jax.tree.leaves(new)):
        if m:
            moved += int(not np.array_equal(np.asarray(upd), np.asarray(old)))
        else:
            np.testing.assert_array_equal(np.asarray(upd), np.asarray(old))
    assert moved == sum(jax.tree.leaves(mask)) and not all(jax.tree.leaves(mask))
    # A hand-derived gradient: the output bias b shifts both rewards, so BT and tie terms do not depend on
    # it and d loss / d b = center_w * d mean((r_c + r_r)^2) / d b = center_w * 4 * mean(r_c + r_r).
    rewards, _ = reference
    grad_b = WEIGHTS["center_weight"] * 4.0 * np.mean(rewards.sum(-1))
    b_old = np.asarray(params["reward_head"]["out_proj"]["bias"])
    np.testing.assert_allclose(np.asarray(new["reward_head"]["out_proj"]["bias"]), b_old - LR * grad_b,
                               rtol=1e-5, atol=1e-7)


def test_scalar_mode_has_no_critique_term(model, batch, reference):
    module, params = model
    c = reward_block()  # a non-zero critique_weight: scalar mode must ignore it
    rewards, nll = reference
    mask = jax.tree.map(lambda _: True, params)
    new, metrics = sgd_step(module, params, batch, c, mask, LR, critique=False)
    np.testing.assert_allclose(metrics["train/loss"], hand_loss(rewards, nll, batch, c, critique=False)[0],
                               rtol=2e-5)
    assert float(metrics["rm/critique_nll"]) == 0.0
    # Nothing depends on next-token predictions: the LM head gets no gradient, the rest of the trunk does.
    np.testing.assert_array_equal(np.asarray(new["trunk"]["lm_head"]["kernel"]),
                                  np.asarray(params["trunk"]["lm_head"]["kernel"]))
    assert not np.array_equal(np.asarray(new["trunk"]["embed_tokens"]["embedding"]),
                              np.asarray(params["trunk"]["embed_tokens"]["embedding"]))


def test_accumulated_step_equals_the_full_batch_step(model, batch):
    """2 microbatches (the tie and the critique-less pair land in different ones) == the full batch."""
    module, params = model
    mask = jax.tree.map(lambda _: True, params)
    tx = optax.sgd(LR)
    out = {}
    for k in (1, 2):
        state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                     rng=jax.random.PRNGKey(0))
        step = jax.jit(lambda s, b, k=k: rm_step.train_step(s, b, module=module, tx=tx, mask=mask, c=reward_block(),
                                                            critique=True, microbatches=k))
        out[k] = jax.device_get(step(state, batch))
    (s1, m1), (s2, m2) = out[1], out[2]
    for key in m1:
        np.testing.assert_allclose(m2[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert_same_update(jax.device_get(params), s2.params, s1.params)
