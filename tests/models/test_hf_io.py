"""hf.save_pretrained round trips through transformers; load errors name what is wrong."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from mm_rlhf_jax.models import hf, hf_safetensors

from .conftest import copy_with_config, text_batch, torch_logits, vlm_batch

_CLASSES = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM,
            "mistral": transformers.MistralForCausalLM, "llava": transformers.LlavaOnevisionForConditionalGeneration}


@pytest.mark.parametrize("name, overrides, shard", [
    ("qwen2", {"scan_layers": True}, "5GB"),  # stacked layers are unstacked on save
    ("llama", {}, "5GB"),
    ("mistral", {}, "60KB"),  # forces model-0000i-of-0000n.safetensors + index
    ("llava", {}, "5GB"),
])
def test_save_reloads_in_transformers(checkpoints, tmp_path, name, overrides, shard):
    ckpt = checkpoints(name)
    model, params = hf.load_pretrained(ckpt.path, **overrides)
    out = str(tmp_path / "saved")
    hf.save_pretrained(model, params, out, max_shard_size=shard)
    files = sorted(os.listdir(out))
    if shard == "60KB":
        assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    else:
        assert files == ["config.json", "model.safetensors"]
    reloaded = _CLASSES[name].from_pretrained(out, local_files_only=True).eval()
    if name == "llava":
        batch = vlm_batch(seed=8)
        inputs = batch.torch_inputs
    else:
        ids, mask = text_batch(seed=8)
        inputs = dict(input_ids=ids, attention_mask=mask)
    np.testing.assert_array_equal(torch_logits(reloaded, **inputs), torch_logits(ckpt.torch_model, **inputs))
    # ... and it loads back here to the same parameters.
    _, again = hf.load_pretrained(out, **overrides)
    for a, b in zip(jax_leaves(params), jax_leaves(again)):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_save_is_atomic_and_keeps_base_config(checkpoints, tmp_path, monkeypatch):
    ckpt = checkpoints("qwen2")
    model, params = hf.load_pretrained(ckpt.path)
    with open(os.path.join(ckpt.path, "config.json")) as f:
        base = json.load(f)
    out = tmp_path / "out"
    hf.save_pretrained(model, params, str(out), base_config={**base, "bos_token_id": 7}, dtype=jnp.bfloat16)
    with open(out / "config.json") as f:
        saved = json.load(f)
    assert saved["bos_token_id"] == 7 and saved["dtype"] == "bfloat16"
    before = sorted(os.listdir(out))
    writes = []

    def crash(path, tensors):
        writes.append(path)
        raise OSError("disk full")

    monkeypatch.setattr(hf_safetensors, "_write_file", crash)
    with pytest.raises(OSError, match="disk full"):
        hf.save_pretrained(model, params, str(out))
    assert writes and sorted(os.listdir(out)) == before  # the previous checkpoint is untouched
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left behind
    monkeypatch.undo()
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(str(out), local_files_only=True)
    w = reloaded.model.layers[0].mlp.up_proj.weight.detach().float().numpy()
    expected = ckpt.torch_model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    np.testing.assert_array_equal(w, expected.astype(jnp.bfloat16).astype(np.float32))
    # A bf16 checkpoint loads (upcast to the requested dtype) ...
    _, p32 = hf.load_pretrained(str(out))
    np.testing.assert_array_equal(p32["layers_0"]["mlp"]["up_proj"]["kernel"], w.T)
    # ... or stays bf16.
    _, p16 = hf.load_pretrained(str(out), jnp.bfloat16)
    assert p16["layers_0"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16


def test_unknown_architecture(checkpoints, tmp_path):
    path = copy_with_config(checkpoints("qwen2").path, str(tmp_path / "gpt2"),
                            lambda c: {**c, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(ValueError, match=r"unknown architecture \['GPT2LMHeadModel'\].*supported: .*"
                                         r"LlavaOnevisionForConditionalGeneration.*Qwen2ForCausalLM"):
        hf.load_pretrained(path)


def _edit_weights(src: str, dst: str, edit) -> str:
    path = copy_with_config(src, dst, lambda c: c)
    tensors = edit(load_file(os.path.join(path, "model.safetensors")))
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path


def test_missing_mismatched_and_unused_weights(checkpoints, tmp_path):
    src = checkpoints("qwen2").path
    key = "model.layers.1.mlp.up_proj.weight"
    missing = _edit_weights(src, str(tmp_path / "missing"), lambda t: {k: v for k, v in t.items() if k != key})
    with pytest.raises(hf.CheckpointError, match=r"missing 1 weights: \['model\.layers\.1\.mlp\.up_proj\.weight"):
        hf.load_pretrained(missing)
    wrong = _edit_weights(src, str(tmp_path / "wrong"), lambda t: {**t, key: np.zeros((128, 60), np.float32)})
    with pytest.raises(hf.CheckpointError,
                       match=r"model\.layers\.1\.mlp\.up_proj\.weight: expected \(128, 64\), found \(128, 60\)"):
        hf.load_pretrained(wrong)
    extra = _edit_weights(src, str(tmp_path / "extra"), lambda t: {**t, "model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(hf.CheckpointError, match=r"1 weights the DecoderConfig does not use: \['model\.extra\.weight'\]"):
        hf.load_pretrained(extra)


def test_overrides_are_checked(checkpoints):
    with pytest.raises(ValueError, match=r"unknown config overrides \['scan_layer'\]"):
        hf.load_pretrained(checkpoints("qwen2").path, scan_layer=True)
    model, _ = hf.load_pretrained(checkpoints("llava").path, jnp.bfloat16, remat="full", vision_remat="dots",
                                  param_dtype=jnp.float32)
    cfg = model.config
    assert (cfg.text.remat, cfg.vision.remat, cfg.text.dtype, cfg.vision.dtype) == ("full", "dots", jnp.bfloat16,
                                                                                     jnp.bfloat16)


def test_vision_tower_inherits_remat():
    # A trained SigLIP tower without remat keeps every layer's activations for the backward pass:
    # the model-wide policy must reach it unless a vision_ override says otherwise.
    cfg = hf.known_config("llava-onevision-qwen2-7b-ov-hf", jnp.bfloat16, remat="full")
    assert (cfg.text.remat, cfg.vision.remat) == ("full", "full")
    cfg = hf.known_config("llava-onevision-qwen2-7b-ov-hf", jnp.bfloat16, remat="full", vision_remat="none")
    assert (cfg.text.remat, cfg.vision.remat) == ("full", "none")
    assert hf.known_config("llava-onevision-qwen2-7b-ov-hf").vision.remat == "none"
