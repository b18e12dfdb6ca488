"""Tiny LLaVA-NeXT original-format (lmms-lab) checkpoint folders and their llava-hf conversion, for tests.

The llava-hf version is made the way transformers' convert_llava_onevision_weights_to_hf.py makes it: the
same sequential substring replacements over every key (its KEYS_TO_MODIFY_MAPPING, in order), and a
LlavaOnevisionConfig with the Qwen2 text config and the SigLIP tower minus its last layer.
"""

import json
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

from .conftest import ASPECT, IMAGE_ID, PINPOINTS, TEXT, VIDEO_ID, VISION

# transformers' conversion script, KEYS_TO_MODIFY_MAPPING: every rule whose left side occurs in the key
# replaces all its occurrences, in this order.
CONVERSION_RULES = (
    ("model.vision_tower.", ""), ("model.mm_projector", "multi_modal_projector"), ("model", "model.model"),
    ("vision_model.model", "vision_model"), ("lm_head", "language_model.lm_head"),
    ("model.model", "language_model.model"), ("multi_modal_projector.0", "multi_modal_projector.linear_1"),
    ("multi_modal_projector.2", "multi_modal_projector.linear_2"),
    ("language_model.model.image_newline", "image_newline"),
)
# transformers 5 module names of a LlavaOnevisionForConditionalGeneration -> the LLaVA-NeXT names.
_TO_LMMS = (("model.language_model.", "model."), ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
            ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
            ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."))
E = TEXT["hidden_size"]  # the LM hidden size the reward head reads


def convert_key(key: str) -> str:
    for old, new in CONVERSION_RULES:
        if old in key:
            key = key.replace(old, new)
    return key


def lmms_tensors(seed: int) -> dict[str, np.ndarray]:
    """Random LLaVA-OV weights under LLaVA-NeXT names (a transformers model's init, renamed)."""
    torch.manual_seed(seed)
    cfg = transformers.LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **VISION),
        text_config=dict(model_type="qwen2", **TEXT), image_grid_pinpoints=PINPOINTS)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg)
    out = {}
    for key, value in model.state_dict().items():
        for old, new in _TO_LMMS:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        # transformers initialises some weights to constants; random values make every weight matter.
        out[key] = (value.float().numpy() + 0.02 * np.random.RandomState(len(out)).randn(*value.shape)).astype(
            np.float32)
    return out


def write_lmms(path: str, tensors: dict, **config_edits) -> str:
    """A LLaVA-NeXT folder: config.json (Qwen2 fields + mm_*), model.safetensors, and a SigLIP tower folder
    whose config has one more layer than the checkpoint keeps (LLaVA-NeXT drops the last one)."""
    os.makedirs(os.path.join(path, "siglip_tower"))
    with open(os.path.join(path, "siglip_tower", "config.json"), "w") as f:
        json.dump({"model_type": "siglip_vision_model", **VISION,
                   "num_hidden_layers": VISION["num_hidden_layers"] + 1}, f)
    text = transformers.Qwen2Config(**TEXT).to_dict()
    config = {**text, "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
              "mm_vision_tower": "siglip_tower", "mm_projector_type": "mlp2x_gelu",
              "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": ASPECT,
              # LLaVA-NeXT pairs are (width, height): the transpose of transformers' (height, width).
              "image_grid_pinpoints": [[w, h] for h, w in PINPOINTS], "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch", "mm_newline_position": "one_token",
              "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2, "mm_hidden_size": VISION["hidden_size"],
              **config_edits}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path


def write_llava_hf(path: str, tensors: dict) -> str:
    """The llava-hf conversion of the same weights (reward head left out, as the conversion has none)."""
    converted = {convert_key(k): v for k, v in tensors.items() if not k.startswith("rm_head.")}
    cfg = transformers.LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **VISION),
        text_config=dict(model_type="qwen2", **TEXT), image_token_index=IMAGE_ID, video_token_index=VIDEO_ID,
        image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio=ASPECT, tie_word_embeddings=False)
    os.makedirs(path)
    cfg.save_pretrained(path)
    save_file(converted, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path


def reward_head_tensors(seed: int) -> dict[str, np.ndarray]:
    """A random MM-RLHF RewardHead under its checkpoint names (rm_head.*; torch layout [out, in])."""
    rng = np.random.RandomState(seed)
    return {"rm_head.dense.weight": rng.randn(E, E).astype(np.float32) * 0.1,
            "rm_head.dense.bias": rng.randn(E).astype(np.float32) * 0.1,
            "rm_head.out_proj.weight": rng.randn(1, E).astype(np.float32),
            "rm_head.out_proj.bias": rng.randn(1).astype(np.float32)}
