"""Decoder-only LM covering Qwen2 (qkv bias), Llama and Mistral (sliding window).

Parameter names follow transformers' module names (q_proj, gate_proj,
input_layernorm, ...) so that `hf.py` maps weights by rule. All attention goes
through `mm_rlhf_jax.kernels.attention`.
"""

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from mm_rlhf_jax import kernels
from mm_rlhf_jax.models import layers, rope
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.outputs import KVCache, ModelOutput
from mm_rlhf_jax.sharding.rules import constrain

BTE = ("act_batch", "act_seq", "act_embed")
# With a KV cache, query blocks up to this long use kernels.decode_attention ([B, Hq, T, S] scores);
# longer ones (a prefill) the blocked kernels.
DECODE_QUERIES = 16


@flax.struct.dataclass
class AttentionContext:
    """Per-call arrays every layer needs (broadcast over scanned layers)."""

    positions: jax.Array  # int32[B, T]
    segment_ids: jax.Array  # int32[B, T]
    branch_ids: Any = None  # int32[B, T] | None
    kv_segment_ids: Any = None  # int32[B, S] | None (KV cache)
    cache_index: Any = None  # int32[] | None (KV cache)


class Attention(nn.Module):
    config: DecoderConfig
    window: int | None = None

    @nn.compact
    def __call__(self, x, ctx: AttentionContext, kv_layer=None):
        cfg = self.config
        d, std = cfg.head_size, cfg.initializer_range
        proj = functools.partial(layers.Linear, (cfg.hidden_size,), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                 use_bias=cfg.qkv_bias, std=std)
        q = proj((cfg.num_heads, d), ("embed", "heads", "head_dim"), name="q_proj")(x)
        k = proj((cfg.num_kv_heads, d), ("embed", "kv_heads", "head_dim"), name="k_proj")(x)
        v = proj((cfg.num_kv_heads, d), ("embed", "kv_heads", "head_dim"), name="v_proj")(x)
        inv_freq = rope.inv_frequencies(d, cfg.rope_theta, cfg.rope_scaling)
        q = constrain(rope.apply_rope(q, ctx.positions, inv_freq), ("act_batch", "act_seq", "act_heads", None))
        k = constrain(rope.apply_rope(k, ctx.positions, inv_freq), ("act_batch", "act_seq", "act_kv_heads", None))

        if kv_layer is None:
            out = kernels.attention(q, k, v, segment_ids=ctx.segment_ids, branch_ids=ctx.branch_ids, causal=True,
                                    sliding_window=self.window, impl=cfg.attention_impl)
            new_kv = None
        else:
            # Write this call's keys/values at cache_index in place (head-major [B, Hkv, S, D]), then attend
            # over the cache. A few queries (a decode step) read the head-major cache directly; a long
            # prefill goes through the blocked kernels on a [B, S, Hkv, D] view.
            k_cache, v_cache = kv_layer
            at = (0, 0, ctx.cache_index, 0)
            k_cache = jax.lax.dynamic_update_slice(k_cache, k.transpose(0, 2, 1, 3).astype(k_cache.dtype), at)
            v_cache = jax.lax.dynamic_update_slice(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype), at)
            new_kv = (k_cache, v_cache)
            if q.shape[1] <= DECODE_QUERIES:
                out = kernels.decode_attention(q, k_cache, v_cache, segment_ids=ctx.segment_ids,
                                               kv_segment_ids=ctx.kv_segment_ids, q_offset=ctx.cache_index,
                                               sliding_window=self.window)
            else:
                seq_major = lambda c: c.transpose(0, 2, 1, 3).astype(q.dtype)  # noqa: E731
                out = kernels.attention(q, seq_major(k_cache), seq_major(v_cache), segment_ids=ctx.segment_ids,
                                        kv_segment_ids=ctx.kv_segment_ids, causal=True, q_offset=ctx.cache_index,
                                        sliding_window=self.window, impl=cfg.attention_impl)
        out = checkpoint_name(out, layers.ATTENTION_OUT)  # kept by the "attention" remat policy
        out = layers.Linear((cfg.num_heads, d), (cfg.hidden_size,), ("heads", "head_dim", "embed"),
                            use_bias=cfg.o_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype, std=std,
                            name="o_proj")(out)
        return out, new_kv


class MLP(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        # layers.Linear (not nn.Dense): same params ("kernel", "bias"), 2-D matmuls (faster on CPU).
        dense = functools.partial(layers.Linear, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                  use_bias=cfg.mlp_bias, std=cfg.initializer_range)
        up = functools.partial(dense, (cfg.hidden_size,), (cfg.intermediate_size,), ("embed", "mlp"))
        h = layers.activation(cfg.hidden_act)(up(name="gate_proj")(x)) * up(name="up_proj")(x)
        h = constrain(h, ("act_batch", "act_seq", "act_mlp"))
        return dense((cfg.intermediate_size,), (cfg.hidden_size,), ("mlp", "embed"), name="down_proj")(h)


class DecoderLayer(nn.Module):
    config: DecoderConfig
    window: int | None = None

    @nn.compact
    def __call__(self, x, kv_layer, ctx: AttentionContext):
        cfg = self.config
        norm = functools.partial(layers.RMSNorm, cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype)
        h, new_kv = Attention(cfg, self.window, name="self_attn")(norm(name="input_layernorm")(x), ctx, kv_layer)
        x = constrain(x + h, BTE)
        x = x + MLP(cfg, name="mlp")(norm(name="post_attention_layernorm")(x))
        return constrain(x, BTE), new_kv


def _layer_class(cfg: DecoderConfig):
    cls = DecoderLayer
    if cfg.remat != "none":
        cls = nn.remat(cls, policy=layers.remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    return cls


class Decoder(nn.Module):
    """Token (or embedding) ids -> final hidden states, optional logits, updated KV cache."""

    config: DecoderConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=layers.init(("vocab", "embed"), cfg.initializer_range),
        )
        layer_cls = _layer_class(cfg)
        if cfg.scan_layers:
            windows = {cfg.layer_window(i) for i in range(cfg.num_layers)}
            if len(windows) > 1:
                raise ValueError(
                    "scan_layers needs every layer to use the same attention window; "
                    f"this config mixes {sorted(windows, key=str)}"
                )
            self.layers = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, windows.pop(), name="layers")
        else:
            self.layers = [layer_cls(cfg, cfg.layer_window(i), name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.norm = layers.RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                kernel_init=layers.init(("embed", "vocab"), cfg.initializer_range),
            )

    def embed(self, input_ids):
        """int[B, T] -> [B, T, E] in the compute dtype."""
        return self.embed_tokens(input_ids)

    def __call__(
        self,
        input_ids=None,
        *,
        inputs_embeds=None,
        attention_mask=None,
        positions=None,
        segment_ids=None,
        branch_ids=None,
        cache: KVCache | None = None,
        compute_logits: bool | str = True,
    ) -> ModelOutput:
        """Runs the decoder.

        Args:
          input_ids: int[B, T], or inputs_embeds [B, T, E] (the VLM's merged embeddings).
          attention_mask: {0,1}[B, T] (transformers' meaning); becomes segment ids.
          positions: int[B, T]; default arange(T) (+ cache.index), as transformers does.
          segment_ids / branch_ids: packing and shared-prompt ids (see kernels.attention).
          cache: a KVCache to read and extend (prefill or decode).
          compute_logits: False skips the LM head; training takes log-probs from
            `hidden_states` with kernels.token_logprobs instead of [B, T, V] logits.
            "last": logits at the last position only, f32[B, 1, V] (the sampler's prefill).
        """
        cfg = self.config
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.dtype)
        b, t = x.shape[:2]
        x = constrain(x, BTE)
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        start = 0 if cache is None else cache.index
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + start, (b, t))
        ctx = AttentionContext(positions=positions, segment_ids=segment_ids, branch_ids=branch_ids)
        kv = None
        if cache is not None:
            if branch_ids is not None:
                raise ValueError("branch_ids (shared-prompt packing) cannot be combined with a KV cache")
            kv_seg = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids.astype(jnp.int32), (0, cache.index))
            ctx = ctx.replace(kv_segment_ids=kv_seg, cache_index=cache.index)
            kv = (cache.k, cache.v)

        if cfg.scan_layers:
            x, new_kv = self.layers(x, kv, ctx)  # stacked [L, B, Hkv, S, D] in and out
        else:
            # One buffer per layer (a tuple): each is updated in place, no stacking copy per step.
            new_layers = []
            for i, layer in enumerate(self.layers):
                x, layer_kv = layer(x, None if kv is None else (kv[0][i], kv[1][i]), ctx)
                new_layers.append(layer_kv)
            new_kv = None if kv is None else tuple(tuple(z) for z in zip(*new_layers))

        hidden = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=new_kv[0], v=new_kv[1], segment_ids=ctx.kv_segment_ids, index=cache.index + t)
        logits = None
        if compute_logits == "last":  # sampling: the next-token logits only, never [B, T, V]
            logits = self.logits(hidden[:, -1:])
        elif compute_logits:
            logits = self.logits(hidden)
        elif self.is_initializing():
            self.logits(hidden)  # initialising without logits must still create the LM-head parameters
        return ModelOutput(logits=logits, hidden_states=hidden, cache=new_cache)

    def logits(self, hidden):
        """[B, T, E] -> f32[B, T, V]. Sampling and tests only; training uses token_logprobs."""
        if self.config.tie_word_embeddings:
            out = self.embed_tokens.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return constrain(out.astype(jnp.float32), ("act_batch", "act_seq", "act_vocab"))

    def lm_head_weight(self, params) -> jax.Array:
        """The LM head as w[E, V] from this module's params (tied: embedding transposed)."""
        return lm_head_weight(self.config, params)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return init_cache(self.config, batch, max_len, dtype)


def lm_head_weight(cfg: DecoderConfig, params) -> jax.Array:
    """w[E, V] of a decoder's params (plain function: callable outside any module context)."""
    params = nn.meta.unbox(params)
    if cfg.tie_word_embeddings:
        return params["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache in `dtype` (default: the compute dtype), stacked over layers for a scan_layers decoder."""
    return KVCache.empty(cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_size, dtype or cfg.dtype,
                         stacked=cfg.scan_layers)
