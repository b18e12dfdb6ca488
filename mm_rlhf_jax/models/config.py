"""Static architecture configs (hashable, so Flax modules can hold them)."""

import dataclasses
from typing import Any

import jax.numpy as jnp

# Which HF architectures map onto DecoderConfig, and the knobs that differ.
DECODER_ARCHITECTURES = ("qwen2", "llama", "mistral")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. kind: "default" | "linear" | "llama3"."""

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A Qwen2 / Llama / Mistral-style decoder-only LM."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None -> hidden_size // num_heads
    architecture: str = "llama"  # one of DECODER_ARCHITECTURES
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 4096
    qkv_bias: bool = False  # Qwen2: True
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    # Sliding-window size, and which layers use it (None -> all layers when
    # sliding_window is set). Mistral: window on every layer; Qwen2: layers >= max_window_layers.
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None
    hidden_act: str = "silu"
    # Numerics and memory knobs (not part of the HF architecture).
    dtype: Any = jnp.bfloat16  # compute dtype
    param_dtype: Any = jnp.float32  # storage dtype
    remat: str = "none"  # "none" | "full" | "dots" | "attention" (layers.remat_policy)
    scan_layers: bool = False
    attention_impl: str = "auto"  # passed to kernels.attention(impl=...)
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.architecture not in DECODER_ARCHITECTURES:
            raise ValueError(
                f"unknown decoder architecture {self.architecture!r}; known: {DECODER_ARCHITECTURES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_layers:
            raise ValueError(
                f"sliding_layers has {len(self.sliding_layers)} entries for {self.num_layers} layers"
            )

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def layer_window(self, i: int) -> int | None:
        """Sliding window of layer i (None = full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None or self.sliding_layers[i]:
            return self.sliding_window
        return None

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)
