"""Sampling weights in the compute dtype.

A model trained with f32 master weights and bf16 compute casts every weight
matrix to bf16 at each use: a decode step would read all weights in f32 (twice
the bytes of the step's main memory traffic) and cast them again, every token.
The generator casts them once per `prepare` instead. Only floating arrays of
rank >= 2 (matmul kernels, embeddings, conv kernels) are cast: the layers
promote exactly those to the compute dtype before use (layers.Linear,
nn.Dense, nn.Embed), so sampling gives the same outputs; vectors (norm scales,
biases) keep their dtype.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from mm_rlhf_jax.models.config import DecoderConfig


def compute_dtype(module) -> Any:
    """The one compute dtype of a Decoder, LLaVA-OV (text == vision) or ModelWithHeads trunk; else None."""
    if hasattr(module, "trunk"):
        return compute_dtype(module.trunk)
    cfg = getattr(module, "config", None)
    if isinstance(cfg, DecoderConfig):
        return cfg.dtype
    text, vision = getattr(cfg, "text", None), getattr(cfg, "vision", None)
    if isinstance(text, DecoderConfig) and jnp.dtype(text.dtype) == jnp.dtype(getattr(vision, "dtype", text.dtype)):
        return text.dtype
    return None


def _cast(x, dtype):
    if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim >= 2 and x.dtype != dtype:
        return x.astype(dtype)
    return x


def needs_cast(params, dtype) -> bool:
    return dtype is not None and any(_cast(x, dtype) is not x for x in jax.tree.leaves(params))


def cast_weights(params, dtype):
    """params with floating rank >= 2 leaves in `dtype` (each stays on its devices, same sharding)."""
    if not needs_cast(params, dtype):
        return params
    return _caster(jnp.dtype(dtype))(params)


@functools.lru_cache(maxsize=8)
def _caster(dtype):
    """One jitted cast per dtype (a fresh jit per call would recompile it every RL cycle)."""
    return jax.jit(lambda p: jax.tree.map(lambda x: _cast(x, dtype), p))
