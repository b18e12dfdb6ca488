"""Reward head (MM-RLHF) at the last non-pad token and the per-token value head, against numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.models import heads
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder

CFG = DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                    architecture="qwen2", qkv_bias=True, dtype=jnp.float32)


@pytest.fixture(scope="module")
def wrapped():
    model = heads.ModelWithHeads(trunk=Decoder(CFG), reward_head=heads.RewardHead(16, num_labels=1),
                                 value_head=heads.ValueHead())
    ids = jnp.zeros((1, 4), jnp.int32)
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids)["params"])
    # Random values everywhere (biases too), so a wrong formula cannot hide behind zero init.
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.randn(*x.shape), jnp.float32), abstract)
    return model, params


def test_last_token_index_by_hand():
    right = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(heads.last_token_index(right), [2, 4, 0])
    np.testing.assert_array_equal(heads.last_token_index(left), [4, 4, 4])
    # MM-RLHF's formula agrees for right padding only.
    np.testing.assert_array_equal(right.cumsum(-1)[:, -1] - 1, [2, 4, 0])


@pytest.mark.parametrize("padding", ["right", "left"])
def test_reward_and_value_against_numpy(wrapped, padding):
    model, params = wrapped
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 64, (3, 7))
    mask = np.ones((3, 7), np.int32)
    if padding == "right":
        mask[0, 4:] = 0
        mask[2, 1:] = 0
        last = [3, 6, 0]
    else:
        mask[0, :3] = 0
        mask[2, :6] = 0
        last = [6, 6, 6]
    out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(params, jnp.asarray(ids), jnp.asarray(mask))
    h = np.asarray(out.hidden_states, np.float64)
    r = params["reward_head"]
    w1, b1 = np.asarray(r["dense"]["kernel"]), np.asarray(r["dense"]["bias"])
    w2, b2 = np.asarray(r["out_proj"]["kernel"]), np.asarray(r["out_proj"]["bias"])
    expected = np.stack([np.tanh(h[b, last[b]] @ w1 + b1) @ w2 + b2 for b in range(3)])
    assert out.rewards.shape == (3, 1) and out.rewards.dtype == jnp.float32
    np.testing.assert_allclose(out.rewards, expected, rtol=1e-5, atol=1e-6)
    v = params["value_head"]["value"]
    values = h @ np.asarray(v["kernel"])[:, 0] + np.asarray(v["bias"])[0]
    assert out.values.shape == (3, 7)
    np.testing.assert_allclose(out.values, values, rtol=1e-5, atol=1e-6)
    assert out.logits is None  # the trunk ran with compute_logits=False
    # The trunk's hidden states are the plain decoder's.
    plain = jax.jit(lambda p, i, m: Decoder(CFG).apply({"params": p}, i, attention_mask=m, compute_logits=False))
    np.testing.assert_allclose(out.hidden_states, plain(params["trunk"], ids, mask).hidden_states, atol=1e-6)


def test_reward_dropout_only_in_training(wrapped):
    model = heads.RewardHead(16, dropout_rate=0.5)
    h = jax.random.normal(jax.random.key(1), (2, 5, 16))
    params = jax.jit(model.init)(jax.random.key(2), h)
    apply = jax.jit(lambda p, x, rng, det: model.apply(p, x, deterministic=det, rngs={"dropout": rng}),
                    static_argnums=3)
    eval_a, eval_b = apply(params, h, jax.random.key(3), True), apply(params, h, jax.random.key(4), True)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = apply(params, h, jax.random.key(3), False)
    assert np.isfinite(np.asarray(train)).all() and not np.allclose(train, eval_a)
