"""LLaVA's multimodal projector: vision features -> LM embedding space (linear_1, act, linear_2)."""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mm_rlhf_jax.models import layers
from mm_rlhf_jax.sharding.rules import constrain


class MultiModalProjector(nn.Module):
    """[..., Ev] -> [..., E]. Column- then row-parallel under tensor parallelism."""

    out_features: int  # the LM hidden size
    act: str = "gelu"  # transformers' projector_hidden_act
    use_bias: bool = True
    dtype: Any = jnp.bfloat16
    param_dtype: Any = jnp.float32
    initializer_range: float = 0.02

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(
            nn.Dense, self.out_features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        )
        std = self.initializer_range
        h = dense(kernel_init=layers.init(("vision_embed", "mlp"), std), bias_init=layers.zeros(("mlp",)),
                  name="linear_1")(x)
        h = layers.activation(self.act)(h)
        h = constrain(h, ("act_batch",) + (None,) * (h.ndim - 2) + ("act_mlp",))
        return dense(kernel_init=layers.init(("mlp", "embed"), std), bias_init=layers.zeros(("embed",)),
                     name="linear_2")(h)
