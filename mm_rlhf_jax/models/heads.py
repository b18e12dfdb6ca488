"""Scalar heads on a trunk's final hidden states: MM-RLHF reward head and a per-token value head.

`ModelWithHeads` runs the trunk (Decoder or LlavaOnevision) once with
`compute_logits=False` and applies the requested heads to its hidden states,
so a critic / reward model never builds [B, T, V] logits.

"Last non-pad token": the highest index t with attention_mask[b, t] == 1.
  - right padding ([x x x 0 0]): sum(mask) - 1, MM-RLHF's
    `attention_mask.cumsum(-1)[:, -1] - 1`;
  - left padding ([0 0 x x x]): T - 1 (the MM-RLHF formula would be wrong here);
  - no mask: T - 1; an all-zero row also gives T - 1 (its reward is meaningless).
"""

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mm_rlhf_jax.models import layers


def last_token_index(attention_mask) -> jax.Array:
    """{0,1}[B, T] -> int32[B]: index of each row's last non-pad token (see module docstring)."""
    mask = jnp.asarray(attention_mask) != 0
    t = mask.shape[-1]
    return (t - 1 - jnp.argmax(mask[:, ::-1], axis=-1)).astype(jnp.int32)


def gather_tokens(x, index):
    """x[B, T, ...], index int[B] -> x[b, index[b]] of shape [B, ...]."""
    return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


class RewardHead(nn.Module):
    """MM-RLHF's RewardHead: out_proj(dropout(tanh(dense(dropout(h))))) -> f32[..., num_labels].

    dropout_rate is transformers' `attention_dropout` in the reference code (0 for Qwen2).
    """

    hidden_size: int
    num_labels: int = 1
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    initializer_range: float = 0.02

    @nn.compact
    def __call__(self, h, *, deterministic: bool = True):
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        std = self.initializer_range
        x = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        x = jnp.tanh(dense(self.hidden_size, kernel_init=layers.init(("embed", "mlp"), std),
                           bias_init=layers.zeros(("mlp",)), name="dense")(x))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        out = dense(self.num_labels, kernel_init=layers.init(("mlp", None), std), bias_init=layers.zeros((None,)),
                    name="out_proj")(x)
        return out.astype(jnp.float32)


class ValueHead(nn.Module):
    """Per-token value: Dense(E -> 1) -> f32[..., T]."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    initializer_range: float = 0.02

    @nn.compact
    def __call__(self, h):
        out = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype,
                       kernel_init=layers.init(("embed", None), self.initializer_range),
                       bias_init=layers.zeros((None,)), name="value")(h)
        return out[..., 0].astype(jnp.float32)


@flax.struct.dataclass
class HeadsOutput:
    """hidden_states [B, T, E]; rewards f32[B, num_labels] at the last non-pad token;
    token_rewards f32[B, T, num_labels]; values f32[B, T]; logits only if asked. Absent heads give None."""

    hidden_states: jax.Array
    rewards: Any = None
    token_rewards: Any = None
    values: Any = None
    logits: Any = None
    cache: Any = None


class ModelWithHeads(nn.Module):
    """A trunk plus named heads; params are {"trunk": ..., "reward_head": ..., "value_head": ...}.

    Loading a pretrained trunk: `params = {"trunk": trunk_params, **fresh_head_params}`.
    """

    trunk: nn.Module
    reward_head: RewardHead | None = None
    value_head: ValueHead | None = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, deterministic: bool = True, compute_logits: bool | str = False,
                 **trunk_kwargs) -> HeadsOutput:
        """Runs the trunk once; extra kwargs (pixel_values, positions, ...) go to the trunk."""
        out = self.trunk(input_ids, attention_mask=attention_mask, compute_logits=compute_logits, **trunk_kwargs)
        h = out.hidden_states
        rewards = token_rewards = values = None
        if self.reward_head is not None:
            token_rewards = self.reward_head(h, deterministic=deterministic)
            mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else attention_mask
            rewards = gather_tokens(token_rewards, last_token_index(mask))
        if self.value_head is not None:
            values = self.value_head(h)
        return HeadsOutput(hidden_states=h, rewards=rewards, token_rewards=token_rewards, values=values,
                           logits=out.logits, cache=out.cache)

    def lm_head_weight(self, params) -> jax.Array:
        return self.trunk.lm_head_weight(nn.meta.unbox(params)["trunk"])

    def init_cache(self, batch: int, max_len: int, dtype=None):
        """The trunk's KV cache (heads keep no state), for sampling critiques with the RM's LM head."""
        return self.trunk.init_cache(batch, max_len, dtype)
