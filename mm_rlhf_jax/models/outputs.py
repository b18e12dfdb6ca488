"""Model outputs and the KV cache (plain pytrees)."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values, head-major, plus slot bookkeeping.

    k, v:        a tuple of L arrays [B, Hkv, S, D] (one buffer per layer, so a decode
                 step updates each in place and attention reads it with no slice copy),
                 or one stacked [L, B, Hkv, S, D] array for a scan_layers decoder
    segment_ids: int32[B, S]; 0 marks an empty or padding slot
    index:       int32[]; the next slot to write (all rows write in lockstep,
                 prompts are left-padded so they end at the same slot)

    Head-major because decode attention (kernels.decode_attention) reads it as
    plain batched matmuls over (B, Hkv) without a transpose.
    """

    k: Any
    v: Any
    segment_ids: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, num_layers, batch, max_len, num_kv_heads, head_dim, dtype=jnp.bfloat16, stacked=False):
        shape = (batch, num_kv_heads, max_len, head_dim)
        if stacked:
            k, v = jnp.zeros((num_layers,) + shape, dtype), jnp.zeros((num_layers,) + shape, dtype)
        else:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
        return cls(k=k, v=v, segment_ids=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]

    def grow(self, extra: int) -> "KVCache":
        """The same cache with `extra` empty slots appended (one copy; the sampler grows it per decode chunk)."""
        pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, extra), (0, 0)])  # noqa: E731
        return self.replace(k=jax.tree.map(pad, self.k), v=jax.tree.map(pad, self.v),
                            segment_ids=jnp.pad(self.segment_ids, ((0, 0), (0, extra))))

    def repeat_rows(self, k: int) -> "KVCache":
        """Each row repeated k times consecutively ([B, ...] -> [B*k, ...]): a prefilled prompt shared by a group."""
        rep = lambda x, axis: jnp.repeat(x, k, axis=axis)  # noqa: E731
        stacked = not isinstance(self.k, tuple)
        axis = 1 if stacked else 0
        return self.replace(k=jax.tree.map(lambda x: rep(x, axis), self.k),
                            v=jax.tree.map(lambda x: rep(x, axis), self.v),
                            segment_ids=rep(self.segment_ids, 0))


@flax.struct.dataclass
class ModelOutput:
    """logits: f32[B, T, V] (f32[B, 1, V] with compute_logits="last") or None; hidden_states: [B, T, H]
    after the final norm."""

    logits: Any
    hidden_states: jax.Array
    cache: KVCache | None = None
