"""Critique RM on packed pairs (the critic prompt's shared prefix once, the two answers + critiques as branches)
== the same pairs unpacked: loss, metrics and gradients (f32), text and multimodal with ties; scoring."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.algorithms.reward_model import step as rm_step
from mm_rlhf_jax.algorithms.reward_model.spec import build_module
from mm_rlhf_jax.config_lib import reward_model_block
from mm_rlhf_jax.data import packing
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.models.heads import ModelWithHeads, RewardHead

from tests.train.packed_reference import Synthetic, from_slots, packed_text_batch
from tests.train.pair_reference import assert_same_update, pair_batch

C = reward_model_block(score_weight=0.7, tie_weight=1.3, center_weight=0.05, critique_weight=0.4)


def loss_and_grads(module, params, batch, critique):
    def f(p):
        return rm_step.rm_loss(module, p, batch, None, C, rm_step.counts(batch), critique=critique)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


def assert_same(module, params, unpacked, packed, critique):
    (loss_u, m_u), g_u = loss_and_grads(module, params, unpacked, critique)
    (loss_p, m_p), g_p = loss_and_grads(module, params, packed, critique)
    for k in m_u:
        np.testing.assert_allclose(m_p[k], m_u[k], rtol=2e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
    assert_same_update(jax.tree.map(jnp.zeros_like, params), g_p, g_u, rtol=2e-5)


@pytest.mark.parametrize("critique", [True, False])
def test_packed_text_pairs_give_the_unpacked_rm_loss_and_gradients(critique):
    dc = DecoderConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32, initializer_range=0.3)
    module = ModelWithHeads(trunk=Decoder(dc), reward_head=RewardHead(32, initializer_range=0.5))
    params = jax.jit(lambda k: nn.meta.unbox(module.init(k, jnp.zeros((1, 4), jnp.int32))["params"]))(
        jax.random.PRNGKey(0))
    unpacked = pair_batch(np.random.default_rng(4), 6, 24, 300)
    unpacked["is_tie"] = np.array([False, True, False, False, True, False])
    unpacked["has_critique"] = np.array([True, True, False, True, True, True])
    packed = packed_text_batch(unpacked, packing.PackingLayout(row_length=64, pairs_per_row=3, rows=3,
                                                               kind="reward"))
    assert (packed["pair_valid"].sum(1) > 1).any()
    assert_same(module, params, unpacked, packed, critique)
    score = functools.partial(rm_step.score_step, module=module)
    np.testing.assert_allclose(from_slots(packed, jax.jit(score)(params, packed)), jax.jit(score)(params, unpacked),
                               rtol=1e-5, atol=2e-5)  # rewards of magnitude 0.3-4.5


def test_packed_multimodal_critic_pairs_give_the_unpacked_rm_loss_and_gradients(tmp_path):
    syn = Synthetic(str(tmp_path), kind="reward")
    ties = [i for i in range(len(syn.source)) if syn.source[i]["record"].is_tie][:2]
    indices = sorted(set(range(0, 30, 6)) | set(ties))
    layout = syn.layout(rows=4, pairs_per_row=4)
    unpacked, packed = syn.both(indices, layout)
    assert len(ties) == 2 and packed["is_tie"].sum() == 2 and packed["has_critique"].any()
    assert (packed["media_tiles"] > 0).sum(1).max() >= 2
    # The shared prefix is the critic prompt up to the answer: instruction, image tokens and question.
    assert (packed["branch_ids"] == 0).sum() > (packed["branch_ids"] == 1).sum()
    module, _ = build_module(syn.config)
    from mm_rlhf_jax.models import hf

    params = hf.init_params(module, jax.random.PRNGKey(0))
    assert_same(module, params, unpacked, packed, critique=True)
