"""Tiny random transformers torch models saved as checkpoints (built once per session), and inputs.

Sizes follow research/env.md §7: hidden 64, 2 layers, vocab 512; SigLIP 32x32 images, patch 8
(a 4x4 patch map per tile). LLaVA-OV pinpoints (32,32), (32,64), (64,32), (64,64) with
anyres_max_2, so a 1x2 or 2x1 grid keeps its map and a 2x2 grid is downscaled.
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

from mm_rlhf_jax.models import anyres

TEXT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, num_channels=3)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
ASPECT = "anyres_max_2"
IMAGE_ID, VIDEO_ID = 500, 501
MAX_TILES = 5  # base + 2x2
FRAMES = 2

LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)


@dataclasses.dataclass
class Checkpoint:
    torch_model: torch.nn.Module
    path: str


def _torch_config(name: str):
    if name == "qwen2":
        return transformers.Qwen2Config(**TEXT)
    if name == "llama":
        # llama3 RoPE scaling, and head_dim != hidden / heads.
        return transformers.LlamaConfig(**{**TEXT, "head_dim": 24}, rope_parameters=LLAMA3_ROPE)
    if name == "mistral":
        return transformers.MistralConfig(**TEXT, sliding_window=5)  # shorter than the test sequences
    if name == "qwen2_sliding":
        return transformers.Qwen2Config(**TEXT, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    if name == "llama_gqa3":
        return transformers.LlamaConfig(**{**TEXT, "hidden_size": 48, "num_attention_heads": 6,
                                           "num_key_value_heads": 3})
    if name == "llava":
        return transformers.LlavaOnevisionConfig(
            vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **VISION),
            text_config=dict(model_type="qwen2", **TEXT), image_token_index=IMAGE_ID, video_token_index=VIDEO_ID,
            image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="full", vision_feature_layer=-1,
            vision_aspect_ratio=ASPECT, tie_word_embeddings=False,
        )
    raise KeyError(name)


_CLASSES = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM,
            "mistral": transformers.MistralForCausalLM, "qwen2_sliding": transformers.Qwen2ForCausalLM,
            "llama_gqa3": transformers.LlamaForCausalLM,
            "llava": transformers.LlavaOnevisionForConditionalGeneration}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """name -> Checkpoint, built on first use (torch seed fixed per name)."""
    root = tmp_path_factory.mktemp("hf_ckpts")
    cache = {}

    def get(name: str, max_shard_size=None) -> Checkpoint:
        key = (name, max_shard_size)
        if key not in cache:
            if (name, None) not in cache:
                torch.manual_seed(sorted(_CLASSES).index(name))
                model = _CLASSES[name](_torch_config(name)).eval()
                path = str(root / name)
                model.save_pretrained(path)
                cache[(name, None)] = Checkpoint(model, path)
            base = cache[(name, None)]
            if max_shard_size is not None:
                path = str(root / f"{name}_sharded")
                base.torch_model.save_pretrained(path, max_shard_size=max_shard_size)
                cache[key] = Checkpoint(base.torch_model, path)
        return cache[key]

    return get


def copy_with_config(src: str, dst: str, edit) -> str:
    """Copies a checkpoint folder and rewrites its config.json with `edit(dict) -> dict`."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(edit(cfg), f)
    return dst


def text_batch(seed: int = 0, batch: int = 2, length: int = 12):
    """input_ids int64[B, T] and a mask with row 0 right-padded and row 1 left-padded."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, 400, (batch, length)).astype(np.int64)
    mask = np.ones((batch, length), np.int64)
    mask[0, -3:] = 0
    if batch > 1:
        mask[1, :2] = 0
    return ids, mask


def torch_logits(model, **inputs) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v) for k, v in inputs.items() if v is not None})
    return out.logits.float().numpy()


def assert_logits_match(ours, ref, mask=None, rel=1e-4):
    """max |ours - ref| over non-pad positions <= rel * max |ref| (DESIGN.md §3)."""
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    keep = np.ones(ref.shape[:2], bool) if mask is None else np.asarray(mask).astype(bool)
    diff = float(np.abs(ours - ref)[keep].max())
    scale = float(np.abs(ref[keep]).max())
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} * max|logit| {scale:.3g}"
    return diff


IMAGE_SIZES = [(32, 64), (64, 32), (60, 50)]  # grids 1x2, 2x1, and 2x2 (unpadded, then anyres_max downscaled)


@dataclasses.dataclass
class VlmBatch:
    """Our format (per-example rows) and the torch format (images / videos concatenated)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray  # [B, P, 3, 32, 32]; zero rows for examples without an image
    image_sizes: np.ndarray  # [B, 2]; (0, 0) for examples without an image
    pixel_values_videos: np.ndarray  # [B, F, 3, 32, 32]
    torch_inputs: dict


def vlm_batch(seed: int = 0) -> VlmBatch:
    """4 examples: three images with different anyres grids, then one video; rows padded right."""
    rng = np.random.RandomState(seed)
    n_img = [anyres.num_image_tokens(s, PINPOINTS, 32, 8, ASPECT) for s in IMAGE_SIZES]
    n_vid = anyres.num_video_tokens(FRAMES, 32, 8)
    counts = n_img + [n_vid]
    b, t = len(counts), max(counts) + 10
    ids = rng.randint(0, 400, (b, t)).astype(np.int64)
    mask = np.ones((b, t), np.int64)
    for i, n in enumerate(counts):
        ids[i, 3:3 + n] = IMAGE_ID if i < 3 else VIDEO_ID
        mask[i, 3 + n + 4 + i:] = 0
    pv = np.zeros((b, MAX_TILES, 3, 32, 32), np.float32)
    for i, size in enumerate(IMAGE_SIZES):
        tiles = anyres.num_tiles(size, PINPOINTS, 32)
        pv[i, :tiles] = rng.randn(tiles, 3, 32, 32)
    sizes = np.zeros((b, 2), np.int64)
    sizes[:3] = IMAGE_SIZES
    vids = np.zeros((b, FRAMES, 3, 32, 32), np.float32)
    vids[3] = rng.randn(FRAMES, 3, 32, 32)
    torch_inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pv[:3], image_sizes=sizes[:3],
                        pixel_values_videos=vids[3:])
    return VlmBatch(ids, mask, pv, sizes, vids, torch_inputs)
