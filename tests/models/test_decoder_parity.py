"""Qwen2 / Llama / Mistral checkpoints load through hf.load_pretrained and match transformers' logits."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.models import hf, hf_config

from .conftest import assert_logits_match, copy_with_config, text_batch, torch_logits


def jax_logits(model, params, ids, mask):
    fwd = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m).logits)
    return np.asarray(fwd(params, jnp.asarray(ids), jnp.asarray(mask)))


@pytest.mark.parametrize("name", ["qwen2", "llama", "mistral"])
def test_logits_match_transformers(checkpoints, name):
    ckpt = checkpoints(name)
    ids, mask = text_batch(seed=1)
    model, params = hf.load_pretrained(ckpt.path)
    assert model.config.architecture == name
    if name == "mistral":
        assert model.config.sliding_window == 5 < ids.shape[1]
    if name == "llama":
        assert model.config.rope_scaling.kind == "llama3" and model.config.head_size == 24
    ref = torch_logits(ckpt.torch_model, input_ids=ids, attention_mask=mask)
    assert_logits_match(jax_logits(model, params, ids, mask), ref, mask)


def test_sharded_checkpoint_and_scan_layers(checkpoints):
    """Sharded *.safetensors + index load; scan_layers=True stacks the per-layer weights."""
    ckpt = checkpoints("qwen2", max_shard_size="100KB")
    files = os.listdir(ckpt.path)
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1
    model, params = hf.load_pretrained(ckpt.path, scan_layers=True)
    assert params["layers"]["self_attn"]["q_proj"]["kernel"].shape == (2, 64, 4, 16)
    ids, mask = text_batch(seed=2)
    ref = torch_logits(ckpt.torch_model, input_ids=ids, attention_mask=mask)
    assert_logits_match(jax_logits(model, params, ids, mask), ref, mask)


def _to_4x(cfg: dict) -> dict:
    """A transformers 4.x-style config.json: rope_theta / rope_scaling, no rope_parameters or layer_types."""
    rope = cfg.pop("rope_parameters")
    cfg.pop("layer_types", None)
    cfg["rope_theta"] = rope.pop("rope_theta")
    if rope["rope_type"] != "default":
        cfg["rope_scaling"] = rope
    return cfg


@pytest.mark.parametrize("name", ["llama", "qwen2_sliding"])
def test_transformers_4x_config(checkpoints, tmp_path, name):
    """llama3 rope_scaling and Qwen2's use_sliding_window / max_window_layers read from 4.x-style configs."""
    ckpt = checkpoints(name)
    path = copy_with_config(ckpt.path, str(tmp_path / "v4"), _to_4x)
    model, params = hf.load_pretrained(path)
    cfg = model.config
    if name == "qwen2_sliding":
        assert (cfg.sliding_window, cfg.sliding_layers) == (4, (False, True))
    else:
        assert (cfg.rope_theta, cfg.rope_scaling.kind, cfg.rope_scaling.factor) == (500000.0, "llama3", 8.0)
    ids, mask = text_batch(seed=3, length=14)
    ref = torch_logits(ckpt.torch_model, input_ids=ids, attention_mask=mask)
    assert_logits_match(jax_logits(model, params, ids, mask), ref, mask)


def test_config_conversion_fields():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2)
    lin = hf_config.decoder_config_from_hf({**base, "rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 4}},
                                           "llama")
    assert (lin.rope_theta, lin.rope_scaling.kind, lin.rope_scaling.factor) == (1e6, "linear", 4)
    assert lin.num_kv_heads == 2 and not lin.qkv_bias and lin.sliding_window is None
    qwen = hf_config.decoder_config_from_hf({**base, "num_key_value_heads": 1, "use_sliding_window": True, "sliding_window": 7,
                                             "max_window_layers": 1, "tie_word_embeddings": True}, "qwen2")
    assert qwen.sliding_layers == (False, True, True) and qwen.tie_word_embeddings and qwen.qkv_bias
    off = hf_config.decoder_config_from_hf({**base, "num_key_value_heads": 2, "sliding_window": 7}, "qwen2")  # use_sliding_window defaults off
    assert off.sliding_window is None
    # transformers' class defaults fill what the file omits (Mistral: window 4096, 8 kv heads).
    mistral = hf_config.decoder_config_from_hf({**base, "hidden_size": 64, "num_attention_heads": 16}, "mistral")
    assert mistral.sliding_window == 4096 and mistral.num_kv_heads == 8
    with pytest.raises(ValueError, match="unsupported RoPE type 'yarn'"):
        hf_config.decoder_config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2}}, "llama")
    # Writing then reading gives the same config back (both rope forms are written).
    back = hf_config.decoder_config_to_hf(qwen, "float32")
    assert back["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    assert hf_config.decoder_config_from_hf(back, "qwen2") == qwen
    back = hf_config.decoder_config_to_hf(lin, "float32")
    assert back["rope_scaling"] == {"rope_type": "linear", "factor": 4}
    assert hf_config.decoder_config_from_hf(back, "llama") == lin
