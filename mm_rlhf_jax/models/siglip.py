"""SigLIP vision tower (transformers' SiglipVisionModel without the pooling head).

Pixels f32[N, C, H, W] (transformers' channels-first layout) -> patch
embeddings (a Dense over flattened (C, p, p) patches, equal to the stride-p
convolution) + learned position embeddings -> pre-LN encoder layers ->
`post_layernorm`. LLaVA reads an intermediate hidden state selected by
`feature_layer` with transformers' `hidden_states` indexing: 0 = the
embeddings, i = the output of layer i, -1 = the last layer's output *before*
`post_layernorm`.

Parameter names mirror transformers' (embeddings/patch_embedding,
encoder/layers_{i}/self_attn/q_proj, mlp/fc1, layer_norm1, post_layernorm) so
`hf.py` maps weights by rule. Attention goes through `kernels.attention`
(bidirectional: causal=False).
"""

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mm_rlhf_jax import kernels
from mm_rlhf_jax.models import layers
from mm_rlhf_jax.sharding.rules import constrain

NSE = ("act_batch", None, "act_embed")


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """transformers' SiglipVisionConfig fields plus numerics knobs."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 26
    num_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    dtype: Any = jnp.bfloat16  # compute dtype
    param_dtype: Any = jnp.float32  # storage dtype
    remat: str = "none"  # "none" | "full" | "dots"
    attention_impl: str = "auto"
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **kw) -> "SiglipConfig":
        return dataclasses.replace(self, **kw)


def feature_layer_indices(feature_layer: int | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """transformers' hidden_states indices (negative allowed) -> indices in [0, num_layers]."""
    ids = (feature_layer,) if isinstance(feature_layer, int) else tuple(feature_layer)
    out = []
    for i in ids:
        j = i + num_layers + 1 if i < 0 else i
        if not 0 <= j <= num_layers:
            raise ValueError(f"vision feature layer {i} is out of range for {num_layers} layers (hidden_states has {num_layers + 1})")
        out.append(j)
    return tuple(out)


def _layer_norm(cfg: SiglipConfig, name: str):
    # Two-pass variance (use_fast_variance=False), as torch's LayerNorm computes it.
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, use_fast_variance=False,
        scale_init=layers.ones(("norm",)), bias_init=layers.zeros(("norm",)), name=name,
    )


class SiglipAttention(nn.Module):
    config: SiglipConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        proj = functools.partial(layers.Linear, (e,), (h, d), ("vision_embed", "vision_heads", "head_dim"),
                                 use_bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype, std=cfg.initializer_range)
        q, k, v = (proj(name=n)(x) for n in ("q_proj", "k_proj", "v_proj"))
        q, k, v = (constrain(a, ("act_batch", None, "act_heads", None)) for a in (q, k, v))
        out = kernels.attention(q, k, v, causal=False, impl=cfg.attention_impl)
        return layers.Linear((h, d), (e,), ("vision_heads", "head_dim", "vision_embed"), use_bias=True,
                             dtype=cfg.dtype, param_dtype=cfg.param_dtype, std=cfg.initializer_range,
                             name="out_proj")(out)


class SiglipMLP(nn.Module):
    config: SiglipConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = functools.partial(nn.Dense, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        h = dense(cfg.intermediate_size, kernel_init=layers.init(("vision_embed", "vision_mlp"), cfg.initializer_range),
                  bias_init=layers.zeros(("vision_mlp",)), name="fc1")(x)
        h = constrain(layers.activation(cfg.hidden_act)(h), ("act_batch", None, "act_mlp"))
        return dense(cfg.hidden_size, kernel_init=layers.init(("vision_mlp", "vision_embed"), cfg.initializer_range),
                     bias_init=layers.zeros(("vision_embed",)), name="fc2")(h)


class SiglipEncoderLayer(nn.Module):
    config: SiglipConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = x + SiglipAttention(cfg, name="self_attn")(_layer_norm(cfg, "layer_norm1")(x))
        x = constrain(x, NSE)
        x = x + SiglipMLP(cfg, name="mlp")(_layer_norm(cfg, "layer_norm2")(x))
        return constrain(x, NSE)


class SiglipVisionEmbeddings(nn.Module):
    config: SiglipConfig

    @nn.compact
    def __call__(self, pixel_values):
        """f32[N, C, H, W] -> [N, num_patches, E] (row-major patch order, as the conv's flatten)."""
        cfg = self.config
        n, c, hh, ww = pixel_values.shape
        p, side = cfg.patch_size, cfg.patches_per_side
        if (c, hh, ww) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"pixel_values has per-image shape {(c, hh, ww)}; the vision tower expects "
                f"{(cfg.num_channels, cfg.image_size, cfg.image_size)}"
            )
        # The "valid" stride-p conv ignores the last image_size % p pixels (384 px, patch 14 -> 27 patches).
        pixel_values = pixel_values[:, :, :side * p, :side * p]
        # [N, C, h, p, w, p] -> [N, h, w, C, p, p]: each patch flattened in the conv weight's (C, p, p) order.
        patches = pixel_values.reshape(n, c, side, p, side, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(n, side * side, c * p * p)
        x = nn.Dense(
            cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=layers.init(("patch", "vision_embed"), cfg.initializer_range),
            bias_init=layers.zeros(("vision_embed",)), name="patch_embedding",
        )(patches)
        pos = nn.Embed(
            cfg.num_patches, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=layers.init((None, "vision_embed"), cfg.initializer_range), name="position_embedding",
        )(jnp.arange(cfg.num_patches))
        return x + pos[None]


class SiglipEncoder(nn.Module):
    config: SiglipConfig

    @nn.compact
    def __call__(self, x, num_layers: int):
        """Runs the first `num_layers` layers; returns all hidden states (index 0 = input)."""
        cfg = self.config
        cls = SiglipEncoderLayer
        if cfg.remat != "none":
            cls = nn.remat(cls, policy=layers.remat_policy(cfg.remat))
        hidden = [x]
        for i in range(cfg.num_layers):
            # At init every layer runs so every parameter exists (and round-trips to HF);
            # afterwards layers past the deepest requested feature are skipped.
            if i < num_layers or self.is_initializing():
                x = cls(cfg, name=f"layers_{i}")(x)
                hidden.append(x)
        return hidden


class SiglipVisionModel(nn.Module):
    """Pixels -> selected hidden states (LLaVA features) or the post-LN last hidden state."""

    config: SiglipConfig

    @nn.compact
    def __call__(self, pixel_values, feature_layer: int | Sequence[int] = -1, *, post_layernorm: bool = False):
        """Args:
          pixel_values: f32[N, C, H, W].
          feature_layer: transformers' hidden_states index, or a tuple of them
            (their features are concatenated on the last axis, as transformers does).
          post_layernorm: return `last_hidden_state` (final layer + post_layernorm),
            the SiglipVisionModel output, instead of the selected features.
        Returns:
          [N, num_patches, E * len(feature_layer)] in the compute dtype.
        """
        cfg = self.config
        ids = (cfg.num_layers,) if post_layernorm else feature_layer_indices(feature_layer, cfg.num_layers)
        x = constrain(SiglipVisionEmbeddings(cfg, name="embeddings")(pixel_values.astype(cfg.dtype)), NSE)
        hidden = SiglipEncoder(cfg, name="encoder")(x, max(ids))
        norm = _layer_norm(cfg, "post_layernorm")
        if post_layernorm or self.is_initializing():
            last = norm(hidden[-1])
            if post_layernorm:
                return last
        feats = [hidden[i] for i in ids]
        return feats[0] if len(feats) == 1 else jnp.concatenate(feats, axis=-1)
