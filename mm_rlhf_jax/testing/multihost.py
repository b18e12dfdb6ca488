"""The tiny model and inputs shared by the 2-process test and its single-process reference."""

import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder


def tiny_decoder() -> Decoder:
    return Decoder(DecoderConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                                 num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32))


def forward_inputs() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (8, 16)).astype(np.int32)
