"""LLaVA-NeXT original-format (lmms-lab) checkpoints load onto our tree with the logits of their llava-hf
conversion, run by transformers; the MM-RLHF reward head loads too; bad configs fail naming the field.

The lmms-lab folder is written from random weights; its llava-hf version follows transformers' conversion
script (llava_next_files.py), and transformers, loading that folder, is the reference.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mm_rlhf_jax.models import hf, llava_next
from mm_rlhf_jax.models.heads import ModelWithHeads, RewardHead

from .conftest import IMAGE_ID, PINPOINTS, VIDEO_ID, VISION, assert_logits_match, torch_logits, vlm_batch
from .llava_next_files import E, lmms_tensors, reward_head_tensors, write_llava_hf, write_lmms


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_next")
    tensors = lmms_tensors(seed=3)
    head = reward_head_tensors(seed=4)
    lmms = write_lmms(str(root / "lmms"), tensors)
    lmms_rm = write_lmms(str(root / "lmms_rm"), {**tensors, **head}, is_rm=True)
    ref = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
        write_llava_hf(str(root / "llava_hf"), tensors), local_files_only=True).eval()
    return dict(root=root, lmms=lmms, lmms_rm=lmms_rm, ref=ref, head=head)


def test_lmms_checkpoint_logits_equal_its_llava_hf_conversion(folders):
    model, params = hf.load_pretrained(folders["lmms"], image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    assert model.config.vision.num_layers == VISION["num_hidden_layers"]  # the tower's last layer dropped
    assert model.config.image_grid_pinpoints == tuple(tuple(p) for p in PINPOINTS)  # (w, h) -> (h, w)
    batch = vlm_batch(seed=5)
    ours = model.apply({"params": params}, jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask),
                       jnp.asarray(batch.pixel_values), jnp.asarray(batch.image_sizes),
                       jnp.asarray(batch.pixel_values_videos)).logits
    ref = torch_logits(folders["ref"], **batch.torch_inputs)
    assert_logits_match(ours, ref, batch.attention_mask, rel=1e-5)


def test_reward_head_of_an_mm_rlhf_reward_checkpoint(folders):
    """r = out_proj(tanh(dense(h))) at the last non-pad token of the LM's last hidden state (MM-RLHF RewardHead)."""
    assert hf.load_reward_head(folders["lmms"]) is None
    head = hf.load_reward_head(folders["lmms_rm"])
    trunk, trunk_params = hf.load_pretrained(folders["lmms_rm"], image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    rm = ModelWithHeads(trunk=trunk, reward_head=RewardHead(E))
    batch = vlm_batch(seed=6)
    ours = rm.apply({"params": {"trunk": trunk_params, "reward_head": head}}, jnp.asarray(batch.input_ids),
                    jnp.asarray(batch.attention_mask), pixel_values=jnp.asarray(batch.pixel_values),
                    image_sizes=jnp.asarray(batch.image_sizes),
                    pixel_values_videos=jnp.asarray(batch.pixel_values_videos)).rewards
    with torch.no_grad():
        out = folders["ref"](**{k: torch.as_tensor(v) for k, v in batch.torch_inputs.items()},
                             output_hidden_states=True)
        h = out.hidden_states[-1]
        w = {k: torch.as_tensor(v) for k, v in folders["head"].items()}
        r = torch.tanh(h @ w["rm_head.dense.weight"].T + w["rm_head.dense.bias"])
        r = r @ w["rm_head.out_proj.weight"].T + w["rm_head.out_proj.bias"]
        last = torch.as_tensor(batch.attention_mask).cumsum(-1)[:, -1] - 1  # the release's index
        ref = r[torch.arange(r.shape[0]), last].numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


def test_format_is_read_from_config(folders, tmp_path):
    from mm_rlhf_jax.config_lib import model_block
    from mm_rlhf_jax.models.vlm import LlavaOnevisionConfig
    from mm_rlhf_jax.train import model_factory

    c = model_block()
    c.init_from = folders["lmms"]
    assert isinstance(model_factory.architecture(c), LlavaOnevisionConfig)
    assert hf.is_original_format(folders["lmms"]) and not hf.is_original_format(
        write_llava_hf(str(tmp_path / "hf"), lmms_tensors(seed=3)))


@pytest.mark.parametrize("edit, message", [
    ({"architectures": ["LlavaLlamaForCausalLM"]}, r"architectures=\['LlavaLlamaForCausalLM'\]"),
    ({"mm_projector_type": "linear"}, r"mm_projector_type='linear' is not supported"),
    ({"mm_patch_merge_type": "flat"}, r"mm_patch_merge_type='flat' is not supported"),
    ({"image_aspect_ratio": "pad"}, r"image_aspect_ratio='pad' is not supported"),
    ({"mm_newline_position": "grid"}, r"mm_newline_position='grid'"),
    ({"mm_vision_tower": "no_such_tower"}, r"mm_vision_tower='no_such_tower' is neither a known tower"),
])
def test_unsupported_configs_name_the_field(tmp_path, edit, message):
    path = write_lmms(str(tmp_path / "bad"), {}, **edit)
    with pytest.raises(llava_next.FormatError, match=message):
        hf.load_config(path)


def test_unknown_layout_names_both_formats(tmp_path):
    path = tmp_path / "unknown"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"unknown architecture.*LLaVA-NeXT original-format"):
        hf.load_config(str(path))


def test_pinpoints_range_form_and_known_tower():
    cfg = llava_next.config_to_llava_hf(
        {"architectures": ["LlavaQwenForCausalLM"], "mm_vision_tower": "google/siglip-so400m-patch14-384",
         "mm_projector_type": "mlp2x_gelu", "mm_patch_merge_type": "spatial_unpad",
         "image_aspect_ratio": "anyres_max_9", "image_grid_pinpoints": "(1x1),...,(2x3)", "hidden_size": 8}, "/x")
    # grids (i, j) for i in 1..2, j in 1..3 as (width, height) tiles of 384, swapped to (height, width)
    assert cfg["image_grid_pinpoints"] == [[384 * j, 384 * i] for i in (1, 2) for j in (1, 2, 3)]
    assert cfg["vision_config"]["num_hidden_layers"] == 26 and cfg["vision_config"]["hidden_size"] == 1152
