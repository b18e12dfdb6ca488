"""rollout.weights: a bf16-compute / f32-storage model samples from bf16 weight matrices cast once, with the
same outputs as casting at every use."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.rollout import weights
from mm_rlhf_jax.rollout.generate import Generator, _TokenIds
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import make_mesh


def test_sampling_weights_cast_once_same_outputs():
    cfg = DecoderConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.bfloat16,
                        param_dtype=jnp.float32, initializer_range=0.3)
    model = Decoder(cfg)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"])
    assert weights.compute_dtype(model) == jnp.bfloat16
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    kw = dict(max_new_tokens=12, batch_size=4, sampling=SamplingConfig("temperature", 1.2), stop_ids=(-1,))
    cast = Generator(model, _TokenIds(0, ()), mesh, **kw)
    plain = Generator(model, _TokenIds(0, ()), mesh, weights_dtype=None, **kw)
    prepared = cast.prepare(params)
    assert prepared["layers_0"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
    assert prepared["embed_tokens"]["embedding"].dtype == jnp.bfloat16
    assert prepared["norm"]["weight"].dtype == jnp.float32  # vectors keep their dtype
    assert plain.prepare(params) is params
    items = [{"prompt_ids": np.asarray(p, np.int32)} for p in ([5, 6, 7], [9, 10, 11, 12, 13], [20])]
    a, b = cast(params, items, seed=1), plain(params, items, seed=1)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.logprobs, y.logprobs)
