"""Rotary position embeddings (rotate-half layout, as in transformers' Llama/Qwen2)."""

import math

import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.models.config import RopeScaling


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling = RopeScaling()) -> np.ndarray:
    """Inverse frequencies f32[head_dim // 2], computed on the host (static)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    if scaling.kind == "default":
        return inv
    if scaling.kind == "linear":
        # Position interpolation: positions / factor == frequencies / factor.
        return inv / scaling.factor
    if scaling.kind == "llama3":
        old = scaling.original_max_position_embeddings
        low_wavelen = old / scaling.low_freq_factor
        high_wavelen = old / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        smooth = (old / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported RoPE scaling {scaling.kind!r}; use default, linear or llama3")


def apply_rope(x, positions, inv_freq: np.ndarray):
    """Rotates x[B, T, H, D] by positions[B, T]; computed in f32, returned in x.dtype."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D/2]
    cos = jnp.cos(freqs)[:, :, None, :]
    sin = jnp.sin(freqs)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
