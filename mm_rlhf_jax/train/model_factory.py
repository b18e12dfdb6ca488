"""The one model loader: module + parameters from a `model` block, a local HF checkpoint or a tiny random init.

    init_from = "/ckpt/llava-onevision-qwen2-7b-ov-hf"   -> models.hf.load_pretrained (streamed, sharded)
    init_from = ""                                       -> the `tiny` architecture, random init (seeded)

Every model of a run comes from here: the policy (`build` + `initial_params`),
a second checkpoint such as the GenRM judge or Align-Pro's frozen model
(`pretrained`, with the policy block's numerics), and LongPO's per-round
modules (`architecture` + `hf.build_model`).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.siglip import SiglipConfig
from mm_rlhf_jax.models.vlm import LlavaOnevisionConfig
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.train import reference_cache

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Named trainable-parameter sets (regexes over "/"-joined parameter paths).
TRAINABLE: Registry[tuple[str, ...]] = Registry("trainable parameter set")
# A policy's paths start at the VLM ("language_model/..."); a reward model's at its trunk
# ("trunk/language_model/...") next to its fresh head, which always trains.
_T = "(trunk/)?"
_HEADS = "|(reward_head|value_head)/.*"
TRAINABLE.register("all")((".*",))
# MM-RLHF trains the projector and the LLM with the vision tower frozen
# (mm_tunable_parts=mm_mlp_adapter,mm_language_model).
TRAINABLE.register("projector_and_llm")((f"{_T}multi_modal_projector/.*", f"{_T}image_newline",
                                         f"{_T}language_model/.*{_HEADS}"))
TRAINABLE.register("projector")((f"{_T}multi_modal_projector/.*{_HEADS}", f"{_T}image_newline"))
TRAINABLE.register("llm")((f"{_T}language_model/.*{_HEADS}",))


def dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use {sorted(DTYPES)}")
    return DTYPES[name]


def _numerics(c: ml_collections.ConfigDict) -> dict:
    return dict(dtype=dtype(c.dtype), param_dtype=dtype(c.param_dtype), remat=c.remat, attention_impl=c.attention_impl)


def tiny_config(c: ml_collections.ConfigDict):
    """DecoderConfig (text-only) or LlavaOnevisionConfig from the `model.tiny` block."""
    t = c.tiny
    text = DecoderConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_layers=t.num_layers, num_heads=t.num_heads, num_kv_heads=t.num_kv_heads, architecture="qwen2",
        qkv_bias=True, rope_theta=t.rope_theta, max_position_embeddings=t.max_position_embeddings,
        scan_layers=c.scan_layers, **_numerics(c))
    if not t.multimodal:
        return text
    vision = SiglipConfig(
        hidden_size=t.vision_hidden_size, intermediate_size=t.vision_intermediate_size,
        num_layers=t.vision_num_layers, num_heads=t.vision_num_heads, image_size=t.image_size,
        patch_size=t.patch_size, **_numerics(c))
    pinpoints = tuple((t.image_size * a, t.image_size * b) for a in (1, 2) for b in (1, 2))
    return LlavaOnevisionConfig(text=text, vision=vision, image_token_id=t.image_token_id,
                                video_token_id=t.video_token_id, image_grid_pinpoints=pinpoints)


def _overrides(c: ml_collections.ConfigDict) -> dict:
    return dict(remat=c.remat, scan_layers=c.scan_layers, attention_impl=c.attention_impl)


def _layers(c: ml_collections.ConfigDict) -> dict:
    return {"num_layers": c.num_layers} if c.num_layers else {}


def architecture(c: ml_collections.ConfigDict, *, allow_known: bool = False):
    """The model config (DecoderConfig / LlavaOnevisionConfig) of the `model` block, numerics applied.

    allow_known: when init_from has no config.json (no checkpoint on this machine),
    use the bundled architecture `model.architecture` (ahead-of-time compiles).
    """
    numerics = dict(param_dtype=dtype(c.param_dtype), **_overrides(c))
    if c.init_from and (not allow_known or os.path.exists(os.path.join(c.init_from, "config.json"))):
        return hf.load_config(c.init_from, dtype(c.dtype), **numerics, **(_layers(c) if allow_known else {}))
    if c.init_from or c.architecture:
        if not (allow_known and c.architecture):
            raise ValueError(f"model.init_from={c.init_from!r} has no config.json; set model.architecture to one "
                             f"of {hf.known_architectures()} to compile without the checkpoint")
        return hf.known_config(c.architecture, dtype(c.dtype), **numerics, **_layers(c))
    if c.num_layers:
        raise ValueError("model.num_layers applies to a checkpoint's architecture; set model.tiny.num_layers instead")
    return tiny_config(c)


def build(c: ml_collections.ConfigDict, seed: int, *, allow_known: bool = False):
    """(module, reference identity dict) from the `model` block; no parameters are created.

    allow_known: see architecture (the identity then names the bundled architecture).
    """
    if c.init_from and not (allow_known and not os.path.exists(os.path.join(c.init_from, "config.json"))):
        identity = {"checkpoint": reference_cache.checkpoint_identity(c.init_from), "dtype": c.dtype}
        return hf.build_model(architecture(c)), identity
    if c.init_from or c.architecture:
        return hf.build_model(architecture(c, allow_known=allow_known)), {"architecture": c.architecture}
    return hf.build_model(tiny_config(c)), {"tiny": c.tiny.to_dict(), "seed": seed, "dtype": c.dtype}


def initial_params(c: ml_collections.ConfigDict, module, mesh: Mesh, rules, seed: int):
    """The starting parameters, sharded on mesh: streamed from init_from, or a seeded random init."""
    if c.num_layers:
        raise ValueError("model.num_layers (a partial architecture for cost probes) cannot load or train weights")
    if c.init_from:
        loaded, params = hf.load_pretrained(c.init_from, dtype(c.dtype), param_dtype=dtype(c.param_dtype),
                                            mesh=mesh, rules=rules, **_overrides(c))
        if loaded.config != module.config:
            raise ValueError(f"{c.init_from}: the loaded architecture {loaded.config} differs from the module "
                             f"built from the same block {module.config}")
        return params
    return hf.init_params(module, jax.random.PRNGKey(seed), mesh, rules)


def pretrained(path: str, c: ml_collections.ConfigDict, mesh: Mesh, rules):
    """(module, params) of another checkpoint (a judge, a frozen model) with block c's numerics."""
    return hf.load_pretrained(path, dtype(c.dtype), param_dtype=dtype(c.param_dtype), mesh=mesh, rules=rules,
                              **_overrides(c))
