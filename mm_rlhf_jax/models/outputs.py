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

    @property
    def _lead(self) -> int:
        """Axes before the batch axis of k / v (1 for the stacked [L, B, Hkv, S, D] layout)."""
        return 0 if isinstance(self.k, tuple) else 1

    def put_row(self, src: "KVCache", src_row, dst_row, at, segment_id) -> "KVCache":
        """Row src_row of `src` (slots [0, P)) written into row dst_row at slots [at, at + P), in place.

        Continuous batching moves a prefilled prompt into a free decode slot. Its real
        slots get `segment_id` (the padding keeps 0), so the row's previous occupant
        (another id) stays invisible to it. src_row / dst_row / at: int32 scalars.
        """
        lead = self._lead

        def put(dst, piece_src):
            piece = jax.lax.dynamic_slice_in_dim(piece_src, src_row, 1, axis=lead)
            starts = (0,) * lead + (dst_row, 0, at, 0)
            return jax.lax.dynamic_update_slice(dst, piece.astype(dst.dtype), starts)

        seg = jax.lax.dynamic_slice_in_dim(src.segment_ids, src_row, 1, axis=0)
        seg = jnp.where(seg != 0, segment_id, 0).astype(jnp.int32)
        return self.replace(k=jax.tree.map(put, self.k, src.k), v=jax.tree.map(put, self.v, src.v),
                            segment_ids=jax.lax.dynamic_update_slice(self.segment_ids, seg, (dst_row, at)))

    def roll_left(self, shift) -> "KVCache":
        """Every row moved `shift` (int32 scalar) slots to the front, index with it; the slots freed at the end
        are emptied. Entries only move, so a row's attention (relative slot order, explicit RoPE positions)
        is unchanged; continuous batching uses it to reuse the slots of finished rows."""
        seq = self._lead + 2
        roll = lambda x: jnp.roll(x, -shift, axis=seq)  # noqa: E731
        segs = jnp.roll(self.segment_ids, -shift, axis=1)
        segs = jnp.where(jnp.arange(self.max_len)[None] < self.max_len - shift, segs, 0)
        return self.replace(k=jax.tree.map(roll, self.k), v=jax.tree.map(roll, self.v), segment_ids=segs,
                            index=self.index - shift)


@flax.struct.dataclass
class ModelOutput:
    """logits: f32[B, T, V] (f32[B, 1, V] with compute_logits="last") or None; hidden_states: [B, T, H]
    after the final norm."""

    logits: Any
    hidden_states: jax.Array
    cache: KVCache | None = None
