"""MM-DPO on packed pairs == MM-DPO on the same pairs unpacked: loss, metrics and gradients (f32), text and
multimodal (several images and videos per row); microbatched packed steps; the reference pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mm_rlhf_jax.algorithms.mm_dpo import step as dpo_step
from mm_rlhf_jax.config_lib import dpo_block
from mm_rlhf_jax.data import packing
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.train import state as state_lib

from tests.train.packed_reference import Synthetic, from_slots, packed_text_batch
from tests.train.pair_reference import assert_same_update, pair_batch, tiny_lm


def loss_and_grads(module, params, batch, c):
    def f(p):
        return dpo_step.dpo_terms(module, p, batch, jax.random.PRNGKey(0), c, dpo_step.counts(batch))
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


def assert_same(module, params, unpacked, packed, c):
    (loss_u, m_u), g_u = loss_and_grads(module, params, unpacked, c)
    (loss_p, m_p), g_p = loss_and_grads(module, params, packed, c)
    assert m_u.keys() == m_p.keys()
    for k in m_u:
        np.testing.assert_allclose(m_p[k], m_u[k], rtol=2e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
    zero = jax.tree.map(jnp.zeros_like, params)
    assert_same_update(zero, g_p, g_u, rtol=2e-5)  # one global norm over every parameter's gradient


@pytest.mark.parametrize("loss_type,sft_norm", [("sigmoid", "tokens"), ("ipo", "tokens"), ("sigmoid", "sequences")])
def test_packed_text_pairs_give_the_unpacked_loss_and_gradients(loss_type, sft_norm):
    module = tiny_lm(dtype=jnp.float32)
    params = hf.init_params(module, jax.random.PRNGKey(0))
    unpacked = pair_batch(np.random.default_rng(1), 7, 24, 300)
    packed = packed_text_batch(unpacked, packing.PackingLayout(row_length=64, pairs_per_row=4, rows=3))
    assert packed["pair_valid"].sum() == 7 and (packed["pair_valid"].sum(1) > 1).all()  # several pairs per row
    assert_same(module, params, unpacked, packed, dpo_block(loss_type=loss_type, sft_norm=sft_norm))
    # The reference / eval pass: per-slot log-probs are the unpacked per-pair ones.
    pol_u = jax.jit(functools.partial(dpo_step.policy_logps_step, module=module))(params, unpacked)
    pol_p = jax.jit(functools.partial(dpo_step.policy_logps_step, module=module))(params, packed)
    assert pol_p.shape == (3, 4, 2)
    np.testing.assert_allclose(from_slots(packed, pol_p), pol_u, rtol=1e-5)


def test_microbatched_packed_step_equals_the_full_packed_step():
    module = tiny_lm(dtype=jnp.float32)
    params = hf.init_params(module, jax.random.PRNGKey(0))
    unpacked = pair_batch(np.random.default_rng(2), 10, 24, 300)
    packed = packed_text_batch(unpacked, packing.PackingLayout(row_length=64, pairs_per_row=4, rows=8))
    assert packed["pair_valid"][1::2].any()  # both microbatches (strided rows) hold pairs
    tx = optax.sgd(0.1)
    mask = jax.tree.map(lambda _: True, params)
    out = {}
    for k in (1, 2):
        state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                     rng=jax.random.PRNGKey(1))
        step = jax.jit(functools.partial(dpo_step.train_step, module=module, tx=tx, mask=mask, c=dpo_block(),
                                         microbatches=k))
        out[k] = jax.device_get(step(state, packed))
    (s1, m1), (s2, m2) = out[1], out[2]
    for key in m1:
        np.testing.assert_allclose(m2[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert_same_update(jax.device_get(params), s2.params, s1.params)


def test_released_beta_is_refused_on_packed_batches():
    module = tiny_lm(dtype=jnp.float32)
    params = hf.init_params(module, jax.random.PRNGKey(0))
    unpacked = pair_batch(np.random.default_rng(3), 2, 16, 300)
    packed = packed_text_batch(unpacked, packing.PackingLayout(row_length=32, pairs_per_row=2, rows=2))
    with pytest.raises(ValueError, match="beta_mode='released'"):
        loss_and_grads(module, params, packed, dpo_block(beta_mode="released"))


def test_packed_multimodal_pairs_give_the_unpacked_loss_and_gradients(tmp_path):
    """Synthetic MM-RLHF pairs with images (1-3 anyres tiles) and videos (4 frames), several per row."""
    syn = Synthetic(str(tmp_path))
    indices = list(range(0, 40, 5))  # a mix of image and video pairs
    layout = syn.layout(rows=3, pairs_per_row=4)
    unpacked, packed = syn.both(indices, layout)
    media_per_row = (packed["media_tiles"] > 0).sum(1)
    assert media_per_row.max() >= 3 and packed["has_video"].any() and (packed["image_sizes"][..., 0] > 0).any()
    assert packed["pixel_values"].dtype == np.uint8
    params = hf.init_params(syn.module, jax.random.PRNGKey(0))
    assert_same(syn.module, params, unpacked, packed, dpo_block())
