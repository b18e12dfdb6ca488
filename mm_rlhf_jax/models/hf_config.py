"""transformers config.json <-> our config dataclasses, for every supported architecture.

Reads both transformers 5.x configs (`rope_parameters`, `layer_types`) and
4.x / real-checkpoint configs (`rope_theta`, `rope_scaling` with linear or
llama3, Qwen2's `use_sliding_window` / `max_window_layers`, Mistral's
`sliding_window`); missing fields take transformers' class defaults. Writes
configs that both generations read: `rope_parameters` and the equivalent
`rope_theta` / `rope_scaling`, and Qwen2's `layer_types` plus its 4.x fields.
"""

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from mm_rlhf_jax.models.config import DecoderConfig, RopeScaling
from mm_rlhf_jax.models.siglip import SiglipConfig
from mm_rlhf_jax.models.vlm import LlavaOnevisionConfig
from mm_rlhf_jax.registry import Registry

# transformers' class defaults for fields real config.json files often omit.
_TEXT_DEFAULTS = {
    "qwen2": dict(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, num_key_value_heads=32,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28, tie_word_embeddings=False),
    "llama": dict(hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6, attention_bias=False,
                  mlp_bias=False, tie_word_embeddings=False),
    "mistral": dict(hidden_act="silu", max_position_embeddings=4096 * 32, rms_norm_eps=1e-6, num_key_value_heads=8,
                    sliding_window=4096, tie_word_embeddings=False),
}
_SIGLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                        layer_norm_eps=1e-6, vision_use_head=True)
# LlavaOnevisionConfig's default image_grid_pinpoints: every (h, w) in 384 * {1..6}.
_OV_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))
_ROPE_KINDS = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One transformers architecture: config conversion both ways and the module it builds."""

    name: str  # transformers class name, e.g. "Qwen2ForCausalLM"
    model_type: str
    from_hf: Callable[[dict, dict], Any]  # (config.json dict, numerics/overrides) -> our config
    to_hf: Callable[[Any], dict]


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def _register(arch: Architecture) -> Architecture:
    ARCHITECTURES.register(arch.name)(arch)
    return arch


def architecture_of(hf: dict) -> Architecture:
    """The Architecture named by config.json's `architectures` (or `model_type`)."""
    names = list(hf.get("architectures") or [])
    by_type = {ARCHITECTURES.get(n).model_type: n for n in ARCHITECTURES.names()}
    if not names and hf.get("model_type") in by_type:
        names = [by_type[hf["model_type"]]]
    for n in names:
        if n in ARCHITECTURES:
            return ARCHITECTURES.get(n)
    raise ValueError(
        f"unknown architecture {names or hf.get('model_type')!r} (model_type={hf.get('model_type')!r}); "
        f"supported: {ARCHITECTURES.names()}, or a LLaVA-NeXT original-format LLaVA-OneVision folder "
        "(config.json with mm_vision_tower; models/llava_next.py)"
    )


def architecture_for(config) -> Architecture:
    """The Architecture that writes a DecoderConfig / LlavaOnevisionConfig."""
    model_type = "llava_onevision" if isinstance(config, LlavaOnevisionConfig) else config.architecture
    return next(a for a in map(ARCHITECTURES.get, ARCHITECTURES.names()) if a.model_type == model_type)


def _rope_from_hf(d: dict) -> tuple[float, RopeScaling]:
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = params
    else:
        theta = d.get("rope_theta", 10000.0)
        scaling = d.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if kind not in _ROPE_KINDS:
        raise ValueError(f"unsupported RoPE type {kind!r} in config.json; supported: {_ROPE_KINDS}")
    if kind == "default":
        return float(theta), RopeScaling()
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    fields = {k: scaling[k] for k in keys if k in scaling}
    return float(theta), RopeScaling(kind=kind, **fields)


def _rope_to_hf(c: DecoderConfig) -> dict:
    s = c.rope_scaling
    params = {"rope_type": s.kind, "rope_theta": c.rope_theta}
    if s.kind == "linear":
        params["factor"] = s.factor
    elif s.kind == "llama3":
        params.update(factor=s.factor, low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                      original_max_position_embeddings=s.original_max_position_embeddings)
    legacy = None if s.kind == "default" else {k: v for k, v in params.items() if k != "rope_theta"}
    return {"rope_parameters": params, "rope_theta": c.rope_theta, "rope_scaling": legacy}


def _sliding_from_hf(d: dict, model_type: str, num_layers: int):
    if model_type == "mistral":
        return d["sliding_window"], None
    if model_type != "qwen2":
        return None, None
    window = d["sliding_window"] if d["use_sliding_window"] else None
    types = d.get("layer_types")
    if types:
        flags = tuple(t == "sliding_attention" for t in types)
    else:
        flags = tuple(window is not None and i >= d["max_window_layers"] for i in range(num_layers))
    if window is None or not any(flags):
        return None, None
    return window, flags


def decoder_config_from_hf(hf: dict, model_type: str, **kw) -> DecoderConfig:
    """A Qwen2 / Llama / Mistral text config dict -> DecoderConfig (kw: numerics and overrides)."""
    d = {**_TEXT_DEFAULTS[model_type], **{k: v for k, v in hf.items() if v is not None}}
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{model_type} config.json lacks required fields {missing}")
    n_layers, heads = d["num_hidden_layers"], d["num_attention_heads"]
    theta, scaling = _rope_from_hf(d)
    window, sliding_layers = _sliding_from_hf(d, model_type, n_layers)
    attn_bias = bool(d.get("attention_bias", False))
    head_dim = d.get("head_dim")
    head_dim = None if head_dim == d["hidden_size"] // heads else head_dim  # canonical: None = hidden / heads
    fields = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=n_layers, num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=head_dim, architecture=model_type, rms_norm_eps=d["rms_norm_eps"], rope_theta=theta,
        rope_scaling=scaling, max_position_embeddings=d["max_position_embeddings"],
        qkv_bias=model_type == "qwen2" or attn_bias, o_bias=attn_bias, mlp_bias=bool(d.get("mlp_bias", False)),
        tie_word_embeddings=bool(d["tie_word_embeddings"]), sliding_window=window, sliding_layers=sliding_layers,
        hidden_act=d["hidden_act"], initializer_range=d.get("initializer_range", 0.02),
    )
    return DecoderConfig(**{**fields, **kw})


def decoder_config_to_hf(c: DecoderConfig, dtype_name: str) -> dict:
    arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}[c.architecture]
    biases = (c.qkv_bias, c.o_bias, c.mlp_bias)
    allowed = {"qwen2": [(True, False, False)], "mistral": [(False, False, False)],
               "llama": [(b, b, m) for b in (False, True) for m in (False, True)]}[c.architecture]
    if biases not in allowed:
        raise ValueError(f"{c.architecture} cannot express qkv_bias/o_bias/mlp_bias={biases} in a transformers config")
    d = dict(
        architectures=[arch], model_type=c.architecture, vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_size, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, initializer_range=c.initializer_range,
        dtype=dtype_name, torch_dtype=dtype_name, **_rope_to_hf(c),
    )
    windows = [c.layer_window(i) for i in range(c.num_layers)]
    if c.architecture == "llama":
        d.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
        if any(windows):
            raise ValueError("llama has no sliding-window attention in transformers")
    elif c.architecture == "mistral":
        if any(windows) and not all(windows):
            raise ValueError("mistral applies its sliding window to every layer; this config mixes layers")
        d["sliding_window"] = c.sliding_window if any(windows) else None
    else:
        first = next((i for i, w in enumerate(windows) if w), c.num_layers)
        d.update(use_sliding_window=any(windows), sliding_window=c.sliding_window, max_window_layers=first,
                 layer_types=["sliding_attention" if w else "full_attention" for w in windows])
        if any(windows) and not all(windows[first:]):
            # 4.x readers only know the suffix form; 5.x reads layer_types.
            d["max_window_layers"] = c.num_layers
    return d


def siglip_config_from_hf(hf: dict, **kw) -> SiglipConfig:
    d = {**_SIGLIP_DEFAULTS, **{k: v for k, v in hf.items() if v is not None}}
    if d["vision_use_head"]:
        raise ValueError("SigLIP with vision_use_head=True is not supported (LLaVA never uses the pooling head); "
                         "set vision_use_head=false in vision_config")
    return SiglipConfig(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"], image_size=d["image_size"], patch_size=d["patch_size"],
        num_channels=d["num_channels"], layer_norm_eps=d["layer_norm_eps"], hidden_act=d["hidden_act"], **kw,
    )


def siglip_config_to_hf(c: SiglipConfig) -> dict:
    return dict(model_type="siglip_vision_model", hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, image_size=c.image_size,
                patch_size=c.patch_size, num_channels=c.num_channels, layer_norm_eps=c.layer_norm_eps,
                hidden_act=c.hidden_act, vision_use_head=False)


def _split_overrides(kw: dict, cls, prefix: str = "") -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k[len(prefix):]: v for k, v in kw.items() if k.startswith(prefix) and k[len(prefix):] in names}


_NUMERICS = ("dtype", "param_dtype")
# What the vision tower inherits from the model-wide overrides unless a `vision_` one is given:
# the numerics, and the remat policy (a trained tower keeps every layer's activations for the
# backward pass without it: ~25 GiB per anyres pair at 7B; a frozen tower is unaffected).
_VISION_INHERITS = _NUMERICS + ("remat",)


def _decoder_from_hf(model_type: str):
    def from_hf(hf: dict, kw: dict) -> DecoderConfig:
        unknown = set(kw) - {f.name for f in dataclasses.fields(DecoderConfig)}
        if unknown:
            raise ValueError(f"unknown config overrides {sorted(unknown)} for {model_type}; "
                             f"use DecoderConfig fields")
        return decoder_config_from_hf(hf, model_type, **kw)

    return from_hf


def _decoder_to_hf(c: DecoderConfig) -> dict:
    return decoder_config_to_hf(c, jnp.dtype(c.param_dtype).name)


for _name, _type in (("Qwen2ForCausalLM", "qwen2"), ("LlamaForCausalLM", "llama"), ("MistralForCausalLM", "mistral")):
    _register(Architecture(_name, _type, _decoder_from_hf(_type), _decoder_to_hf))


def _llava_from_hf(hf: dict, kw: dict) -> LlavaOnevisionConfig:
    """Overrides: DecoderConfig fields go to the text model, `vision_<field>` to SigLIP,
    LlavaOnevisionConfig fields to the top level; dtype / param_dtype / remat to both models."""
    top_names = {f.name for f in dataclasses.fields(LlavaOnevisionConfig)} - {"text", "vision"}
    text_kw = _split_overrides(kw, DecoderConfig)
    vision_kw = _split_overrides(kw, SiglipConfig, "vision_")
    vision_kw.update({k: kw[k] for k in _VISION_INHERITS if k in kw and k not in vision_kw})
    top_kw = {k: v for k, v in kw.items() if k in top_names}
    unknown = set(kw) - set(text_kw) - {"vision_" + k for k in vision_kw} - set(top_kw) - set(_NUMERICS)
    if unknown:
        raise ValueError(f"unknown config overrides {sorted(unknown)} for llava_onevision; use DecoderConfig fields, "
                         f"vision_<SiglipConfig field> or {sorted(top_names)}")
    text_hf = dict(hf.get("text_config") or {})
    text_type = text_hf.get("model_type", "qwen2")
    if text_type not in _TEXT_DEFAULTS:
        raise ValueError(f"unsupported llava_onevision text model_type {text_type!r}; supported: {sorted(_TEXT_DEFAULTS)}")
    # The top-level flag wins, as in transformers (either one True ties the LM head).
    tie = bool(hf.get("tie_word_embeddings", False)) or bool(text_hf.get("tie_word_embeddings", False))
    text_hf["tie_word_embeddings"] = tie
    text = decoder_config_from_hf(text_hf, text_type, **text_kw)
    vision = siglip_config_from_hf(hf.get("vision_config") or {}, **vision_kw)
    layer = hf.get("vision_feature_layer", -1)
    fields = dict(
        text=text, vision=vision,
        image_token_id=hf.get("image_token_index", hf.get("image_token_id", 151646)),
        video_token_id=hf.get("video_token_index", hf.get("video_token_id", 151647)),
        image_grid_pinpoints=tuple(tuple(p) for p in (hf.get("image_grid_pinpoints") or _OV_PINPOINTS)),
        vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
        vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "full"),
        vision_aspect_ratio=hf.get("vision_aspect_ratio", "anyres_max_9"),
        projector_hidden_act=hf.get("projector_hidden_act", "gelu"),
        multimodal_projector_bias=hf.get("multimodal_projector_bias", True),
    )
    return LlavaOnevisionConfig(**{**fields, **top_kw})


def _llava_to_hf(c: LlavaOnevisionConfig) -> dict:
    layer = c.vision_feature_layer
    return dict(
        architectures=["LlavaOnevisionForConditionalGeneration"], model_type="llava_onevision",
        text_config=decoder_config_to_hf(c.text, jnp.dtype(c.text.param_dtype).name),
        vision_config=siglip_config_to_hf(c.vision), image_token_index=c.image_token_id,
        video_token_index=c.video_token_id, image_grid_pinpoints=[list(p) for p in c.image_grid_pinpoints],
        vision_feature_layer=layer if isinstance(layer, int) else list(layer),
        vision_feature_select_strategy=c.vision_feature_select_strategy, vision_aspect_ratio=c.vision_aspect_ratio,
        projector_hidden_act=c.projector_hidden_act, multimodal_projector_bias=c.multimodal_projector_bias,
        tie_word_embeddings=c.text.tie_word_embeddings, dtype=jnp.dtype(c.text.param_dtype).name,
        torch_dtype=jnp.dtype(c.text.param_dtype).name,
    )


_register(Architecture("LlavaOnevisionForConditionalGeneration", "llava_onevision", _llava_from_hf, _llava_to_hf))
