"""Model outputs and the KV cache (plain pytrees)."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values stacked over layers, plus slot bookkeeping.

    k, v:        [L, B, S, Hkv, D]
    segment_ids: int32[B, S]; 0 marks an empty or padding slot
    index:       int32[]; the next slot to write (all rows write in lockstep,
                 prompts are left-padded so they end at the same slot)
    """

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, num_layers, batch, max_len, num_kv_heads, head_dim, dtype=jnp.bfloat16):
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            segment_ids=jnp.zeros((batch, max_len), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


@flax.struct.dataclass
class ModelOutput:
    """logits: f32[B, T, V] or None; hidden_states: [B, T, H] after the final norm."""

    logits: Any
    hidden_states: jax.Array
    cache: KVCache | None = None
