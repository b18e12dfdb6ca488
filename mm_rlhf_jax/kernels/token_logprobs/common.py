"""Shared pieces of the token log-prob implementations: input checks, block sizes,
padding, and the per-tile math of the forward statistics and the backward.

Notation (per token n, vocab column j): z = (h @ w) / temperature,
lse = logsumexp_j z, logp = z[label] - lse, entropy H = lse - sum_j p_j z_j with
p = exp(z - lse). Given cotangents g (of logp) and e (of H):
  dz_j = g * (onehot_j - p_j) - e * p_j * (z_j - lse + H)
and d(logits) = dz / temperature, dh = d(logits) @ w.T, dw = h.T @ d(logits).
"""

import dataclasses

import jax.numpy as jnp

from mm_rlhf_jax.kernels.attention.reference import MASK_VALUE

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles over tokens (n), vocabulary (v) and hidden (h).

    *_bwd: the backward (the dh kernel of pallas_tpu); *_dw: the dw kernel of
    pallas_tpu (None: same as *_bwd). The two want different shapes: dh keeps an
    f32 [block_n, H] accumulator, dw an f32 [H, block_v] one.
    """

    block_n: int
    block_v: int
    block_h: int
    block_n_bwd: int
    block_v_bwd: int
    block_n_dw: int | None = None
    block_v_dw: int | None = None

    @property
    def dw(self) -> tuple[int, int]:
        return (self.block_n_dw or self.block_n_bwd, self.block_v_dw or self.block_v_bwd)


def validate(hidden, w, labels, temperature):
    """Checks shapes/dtypes; returns (N, H, V)."""
    if hidden.ndim < 1 or w.ndim != 2:
        raise ValueError(f"token_logprobs: hidden must be [..., H] and w [H, V]; got {hidden.shape}, {w.shape}")
    if hidden.shape[-1] != w.shape[0]:
        raise ValueError(f"token_logprobs: hidden size {hidden.shape[-1]} != w rows {w.shape[0]} (w is [H, V])")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"token_logprobs: labels {labels.shape} must match hidden {hidden.shape[:-1]}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"token_logprobs: labels must be integer, got {labels.dtype}")
    for name, x in (("hidden", hidden), ("w", w)):
        if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise ValueError(f"token_logprobs: {name} must be f32/bf16/f16, got {x.dtype}")
    if not float(temperature) > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    n = 1
    for s in hidden.shape[:-1]:
        n *= s
    return n, w.shape[0], w.shape[1]


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pad_to(x, shape):
    """Zero-pads x at the end of every axis up to `shape`."""
    widths = [(0, s - d) for d, s in zip(x.shape, shape)]
    return x if all(w == (0, 0) for w in widths) else jnp.pad(x, widths)


def finish_stats(m, l, t, sz):
    """Merged per-token statistics (max, sum exp(z - max), target logit, sum p z with
    p relative to max) -> (logp, lse, entropy), each f32[N]."""
    lse = m + jnp.log(l)
    return t - lse, lse, lse - sz / l


def mask_vocab(z, col, v: int):
    """Hides padded vocabulary columns (col >= V) from the softmax."""
    return jnp.where(col < v, z, MASK_VALUE)


def dz_tile(z, onehot, lse, ent, g, ge, inv_temp: float, with_entropy: bool):
    """d loss / d logits of a tile; z[bn, bv] f32, lse/ent/g/ge broadcastable [bn, 1]."""
    p = jnp.exp(z - lse)
    dz = g * (onehot.astype(_F32) - p)
    if with_entropy:
        dz = dz - ge * p * (z - lse + ent)
    return dz * inv_temp
