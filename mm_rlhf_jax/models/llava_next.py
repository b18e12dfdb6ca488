"""LLaVA-NeXT original-format checkpoints (the lmms-lab layout of LLaVA-OneVision and the MM-RLHF release).

`lmms-lab/llava-onevision-qwen2-7b-ov`, the MM-RLHF policies and MM-RLHF-Reward-7B are saved by the
LLaVA-NeXT code base (`LlavaQwenForCausalLM`), not by transformers. `hf.load_pretrained` recognises
such a folder by its config.json (`mm_vision_tower` present) and loads it onto the same
LlavaOnevision parameter tree as a llava-hf checkpoint; `export` always writes the llava-hf layout.

Config (`config_to_llava_hf`): config.json is a Qwen2 config plus mm_* fields. It becomes the
config.json transformers' conversion would write:
  - text model: the top-level Qwen2 fields; `rope_scaling` is dropped because LlavaQwenForCausalLM's
    __init__ sets it to None;
  - vision tower: `mm_vision_tower` names a SigLIP checkpoint. It is looked up in VISION_TOWERS (the
    numbers transformers' conversion script hard-codes for so400m) or read from a local folder
    (absolute, or relative to the checkpoint folder) with a SigLIP config.json. LLaVA-NeXT deletes
    the tower's last encoder layer and its pooling head before training (siglip_encoder.py,
    `del ...encoder.layers[-1:]`, `head = nn.Identity()`), so the checkpoint holds
    num_hidden_layers - 1 layers and the features are the last kept layer's output
    (vision_feature_layer=-1). `mm_vision_select_layer` is ignored there, and here too;
  - `mm_projector_type` must be "mlp2x_gelu" (Linear, GELU, Linear: transformers' projector);
  - `mm_patch_merge_type` must be "spatial_unpad", and `image_aspect_ratio` must be "anyres_max_N":
    the OneVision anyres packing with `image_newline`, the only one transformers' LlavaOnevision has;
  - `image_grid_pinpoints`: LLaVA-NeXT reads each pair as (width, height) (mm_utils
    `select_best_resolution`: `for width, height in possible_resolutions`), while transformers reads
    (height, width). Each pair is swapped here and the order is kept, so ties resolve as in LLaVA-NeXT.
    The range form "(1x1),...,(6x6)" is expanded the way mm_utils expands it: every grid (i, j) from
    the first to the last, times the tile size;
  - video: `mm_newline_position` must be "one_token", `mm_spatial_pool_mode` "bilinear" and
    `mm_spatial_pool_stride` 2 (each when present), `add_faster_video` false;
  - token ids: LLaVA-NeXT splices features at the placeholder -200, so the file has no <image> id.
    transformers' conversion appends <image> and <video> to the Qwen2 tokenizer (ids 151646 and
    151647), and those are the defaults. Override them with `image_token_id=` / `video_token_id=` for
    another tokenizer. The data pipeline needs a tokenizer that holds both tokens (`data.tokenizer`).

Weights (`canonical_key`): the net effect of KEYS_TO_MODIFY_MAPPING in transformers'
src/transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py, written as one
rule per module. The right-hand names are the llava-hf (transformers 4.x) names that `hf.py` reads:

  lmms-lab (LLaVA-NeXT)                                llava-hf
  model.embed_tokens.* / model.layers.N.* / model.norm.*  language_model.model.(same)
  lm_head.weight                                       language_model.lm_head.weight
  model.vision_tower.vision_tower.vision_model.*       vision_tower.vision_model.*
  model.mm_projector.0.* / model.mm_projector.2.*      multi_modal_projector.linear_1.* / linear_2.*
  model.image_newline                                  image_newline
  rm_head.dense.* / rm_head.out_proj.*                 (MM-RLHF reward head: `load_reward_head`)

The conversion script also grows the vocabulary by 64 randomly drawn rows, which no tokenizer id
reaches; a checkpoint loaded here keeps its own vocabulary size. The reward head is MM-RLHF's
`RewardHead` on `LlavaQwenForCausalLM.rm_head` (llava/model/language_model/llava_qwen.py, created
when config.json has `is_rm`).
"""

import json
import re

import numpy as np

from mm_rlhf_jax import storage

ARCHITECTURE = "LlavaQwenForCausalLM"
REWARD_HEAD_PREFIX = "rm_head."
# transformers' conversion script: SiglipVisionConfig(hidden_size=1152, image_size=384, intermediate_size=4304,
# num_attention_heads=16, num_hidden_layers=26 ("drop the last layer"), patch_size=14): 27 layers before the drop.
VISION_TOWERS = {
    "google/siglip-so400m-patch14-384": dict(model_type="siglip_vision_model", hidden_size=1152, image_size=384,
                                             intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27,
                                             patch_size=14),
}
# The ids of <image> / <video> that transformers' conversion gives the Qwen2 tokenizer (151,646 tokens).
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID = 151646, 151647
# (pattern, replacement) applied in order, first match only; see the module docstring's table.
_KEY_RULES = (
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "vision_tower.vision_model."),
    (r"^model\.mm_projector\.0\.", "multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "multi_modal_projector.linear_2."),
    (r"^model\.image_newline$", "image_newline"),
    (r"^model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
)


class FormatError(ValueError):
    """A LLaVA-NeXT config.json this loader cannot represent faithfully (names the field)."""


def is_original(hf: dict) -> bool:
    """Is this config.json a LLaVA-NeXT original-format one (rather than a transformers one)?"""
    return "mm_vision_tower" in hf


def _require(hf: dict, field: str, allowed, where: str, *, default=None):
    value = hf.get(field, default)
    if value not in allowed:
        raise FormatError(f"{where}: {field}={value!r} is not supported; supported: {list(allowed)} "
                          "(the LLaVA-OneVision configuration transformers' LlavaOnevision implements)")
    return value


def _pinpoints(value, tile: int, where: str) -> list[list[int]]:
    """LLaVA-NeXT (width, height) pinpoints, list or "(1x1),...,(6x6)" form -> transformers (height, width)."""
    if isinstance(value, str):
        grids = [tuple(map(int, m)) for m in re.findall(r"\((\d+)x(\d+)\)", value)]
        if not grids:
            raise FormatError(f"{where}: cannot parse image_grid_pinpoints={value!r}; expected '(1x1),...,(6x6)'")
        (a0, b0), (a1, b1) = grids[0], grids[-1]
        value = [[i * tile, j * tile] for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    if not isinstance(value, list) or not value or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise FormatError(f"{where}: image_grid_pinpoints must be a non-empty list of [width, height] pairs, "
                          f"got {value!r}")
    return [[int(h), int(w)] for w, h in value]


def vision_tower_config(name: str, folder: str, where: str) -> dict:
    """The SigLIP config.json dict of `mm_vision_tower` (before LLaVA-NeXT drops its last layer)."""
    if name in VISION_TOWERS:
        return dict(VISION_TOWERS[name])
    local = name if storage.is_url(name) or name.startswith("/") else storage.join(folder, name)
    path = storage.join(local, "config.json")
    if not storage.exists(path):
        raise FormatError(f"{where}: mm_vision_tower={name!r} is neither a known tower {sorted(VISION_TOWERS)} nor "
                          f"a folder with a SigLIP config.json (looked for {path}; relative paths are resolved "
                          "against the checkpoint folder)")
    cfg = json.loads(storage.read_text(path))
    cfg = cfg.get("vision_config", cfg)  # a full SiglipConfig holds the tower under vision_config
    if "siglip" not in str(cfg.get("model_type", "")):
        raise FormatError(f"{path}: model_type={cfg.get('model_type')!r}; LLaVA-OneVision towers are SigLIP")
    return cfg


def config_to_llava_hf(hf: dict, folder: str) -> dict:
    """A LLaVA-NeXT config.json dict -> the llava-hf (LlavaOnevisionForConditionalGeneration) config.json dict."""
    where = storage.join(folder, "config.json")
    archs = hf.get("architectures") or []
    if archs != [ARCHITECTURE]:
        raise FormatError(f"{where}: a LLaVA-NeXT checkpoint (mm_vision_tower is set) with architectures={archs!r}; "
                          f"supported: [{ARCHITECTURE!r}] (LLaVA-OneVision on Qwen2)")
    _require(hf, "mm_projector_type", ("mlp2x_gelu",), where)
    _require(hf, "mm_patch_merge_type", ("spatial_unpad",), where)
    aspect = hf.get("image_aspect_ratio")
    if not isinstance(aspect, str) or not re.fullmatch(r"anyres_max_\d+", aspect):
        raise FormatError(f"{where}: image_aspect_ratio={aspect!r} is not supported; use 'anyres_max_N'")
    _require(hf, "mm_newline_position", ("one_token",), where, default="one_token")
    _require(hf, "mm_spatial_pool_mode", ("bilinear",), where, default="bilinear")
    _require(hf, "mm_spatial_pool_stride", (2,), where, default=2)
    _require(hf, "add_faster_video", (False, None), where, default=False)
    tower = vision_tower_config(hf["mm_vision_tower"], folder, where)
    vision = {**tower, "num_hidden_layers": int(tower["num_hidden_layers"]) - 1, "vision_use_head": False}
    vision.setdefault("image_size", 384)
    if "image_grid_pinpoints" not in hf:
        raise FormatError(f"{where}: image_grid_pinpoints is missing (anyres needs the grid resolutions)")
    text = {k: v for k, v in hf.items() if not k.startswith("mm_") and k not in ("architectures", "auto_map")}
    text.update(model_type="qwen2", rope_scaling=None)
    tie = bool(hf.get("tie_word_embeddings", False))
    return dict(
        architectures=["LlavaOnevisionForConditionalGeneration"], model_type="llava_onevision",
        text_config=text, vision_config=vision, image_token_index=IMAGE_TOKEN_ID, video_token_index=VIDEO_TOKEN_ID,
        image_grid_pinpoints=_pinpoints(hf["image_grid_pinpoints"], int(vision["image_size"]), where),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio=aspect,
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=tie,
    )


def canonical_key(key: str) -> str | None:
    """A LLaVA-NeXT weight name -> its llava-hf name; None for the reward head (`rm_head.*`)."""
    if key.startswith(REWARD_HEAD_PREFIX):
        return None
    for pattern, repl in _KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return key  # left as is: reported as an unused weight by the loader


# MM-RLHF RewardHead tensors (torch nn.Linear layout [out, in]) -> RewardHead params (flax Dense [in, out]).
REWARD_HEAD_KEYS = {("dense", "kernel"): "dense.weight", ("dense", "bias"): "dense.bias",
                    ("out_proj", "kernel"): "out_proj.weight", ("out_proj", "bias"): "out_proj.bias"}


def reward_head_to_flax(tensors: dict[str, np.ndarray], where: str) -> dict:
    """{"dense.weight": [E, E], "dense.bias": [E], "out_proj.weight": [L, E], "out_proj.bias": [L]} (names
    without the rm_head. prefix) -> {"dense": {"kernel": [E, E], "bias"}, "out_proj": {"kernel": [E, L], "bias"}}."""
    missing = sorted(set(REWARD_HEAD_KEYS.values()) - set(tensors))
    extra = sorted(set(tensors) - set(REWARD_HEAD_KEYS.values()))
    if missing or extra:
        raise FormatError(f"{where}: reward head tensors missing {missing}, unexpected {extra}")
    out: dict = {"dense": {}, "out_proj": {}}
    for (module, leaf), key in REWARD_HEAD_KEYS.items():
        t = np.asarray(tensors[key])
        out[module][leaf] = t.T if leaf == "kernel" else t
    return out


def reward_head_to_torch(params: dict) -> dict[str, np.ndarray]:
    """The inverse of reward_head_to_flax (numpy arrays, names without the rm_head. prefix).

    C-contiguous copies: safetensors writes an array's buffer as is, so a transposed view would be
    written untransposed."""
    return {key: np.ascontiguousarray(np.asarray(params[m][leaf]).T if leaf == "kernel" else params[m][leaf])
            for (m, leaf), key in REWARD_HEAD_KEYS.items()}
