"""python -m mm_rlhf_jax.export: a run's checkpoint becomes a transformers folder with the same logits (and, for a
reward model, a head file that gives the same rewards when applied as reward_head.json says).

Nothing is trained: a tiny model's (perturbed) parameters are checkpointed the way a run does (run_context writes
config.json; the TrainState of the algorithm's own train step goes to <workdir>/checkpoints through the run's
Checkpointer); transformers torch, loading the exported folder, is the reference.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from mm_rlhf_jax import config_lib, export, storage
from mm_rlhf_jax.data.synthetic import build_once, tiny_tokenizer
from mm_rlhf_jax.models import anyres, hf
from mm_rlhf_jax.train import checkpoint, phase, state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(algo: str):
    c = config_lib.preset(algo, "tiny")
    c.model.tiny.update(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                        vision_hidden_size=32, vision_intermediate_size=64, vision_num_layers=1, vision_num_heads=2)
    return c


def _save_run(algo: str, workdir: str):
    """config.json + a step-3 checkpoint of the algorithm's TrainState around perturbed initial parameters."""
    from mm_rlhf_jax.algorithms.mm_dpo import spec as dpo_spec
    from mm_rlhf_jax.algorithms.reward_model import spec as rm_spec
    from mm_rlhf_jax.train import model_factory

    c = _config(algo)
    build_once(storage.join(workdir, "tokenizer"), tiny_tokenizer.build_tiny_tokenizer)  # as a synthetic run does
    with phase.run_context(c, workdir) as ctx:
        if algo == "mm_dpo":
            module, _ = model_factory.build(c.model, c.seed)
            step = dpo_spec.train_step(c, module, ctx.mesh, ctx.rules)
        else:
            module, _ = rm_spec.build_module(c)
            step = rm_spec.train_step(c, module, ctx.mesh, ctx.rules)
        params = hf.init_params(module, jax.random.PRNGKey(0), ctx.mesh, ctx.rules)
        # Noise on every weight, so unit norms and zero biases cannot hide a wrongly mapped tensor.
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        params = tree.unflatten([x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
        state = state_lib.create_state(params, step.tx, step.mask, jax.random.PRNGKey(2), step.shardings)
        ckpt = checkpoint.Checkpointer(storage.join(workdir, "checkpoints"))
        ckpt.save(3, state, {"note": "test"})
        ckpt.close()
    return c, module, jax.tree.map(np.asarray, params)


def _inputs(c):
    """Two examples with images of different anyres grids (tiny config ids and tiles), right padding."""
    t = c.model.tiny
    pinpoints = [(t.image_size * a, t.image_size * b) for a in (1, 2) for b in (1, 2)]
    sizes = [(32, 64), (60, 50)]
    counts = [anyres.num_image_tokens(s, pinpoints, t.image_size, t.patch_size, "anyres_max_9") for s in sizes]
    rng = np.random.RandomState(0)
    length = max(counts) + 8
    ids = rng.randint(10, 500, (2, length)).astype(np.int64)
    mask = np.ones_like(ids)
    tiles = max(anyres.num_tiles(s, pinpoints, t.image_size) for s in sizes)
    pv = np.zeros((2, tiles, 3, t.image_size, t.image_size), np.float32)
    for i, (n, s) in enumerate(zip(counts, sizes)):
        ids[i, 2:2 + n] = t.image_token_id
        mask[i, 2 + n + 3 + i:] = 0
        pv[i, :anyres.num_tiles(s, pinpoints, t.image_size)] = rng.randn(anyres.num_tiles(s, pinpoints, t.image_size),
                                                                          3, t.image_size, t.image_size)
    return ids, mask, pv, np.asarray(sizes, np.int64)


def _torch(model, ids, mask, pv, sizes, **kw):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                     pixel_values=torch.as_tensor(pv), image_sizes=torch.as_tensor(sizes), **kw)


def test_policy_export_reloads_in_transformers(tmp_path):
    workdir, out = str(tmp_path / "run"), str(tmp_path / "hf")
    c, module, params = _save_run("mm_dpo", workdir)
    # The command line, as a user runs it.
    subprocess.run([sys.executable, "-m", "mm_rlhf_jax.export", "--workdir", workdir, "--out", out], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
                                  "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    files = sorted(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    reloaded = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    ids, mask, pv, sizes = _inputs(c)
    ref = _torch(reloaded, ids, mask, pv, sizes).logits.numpy()
    ours = np.asarray(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pv),
                                   jnp.asarray(sizes)).logits)
    keep = mask.astype(bool)
    np.testing.assert_allclose(ours[keep], ref[keep], atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    src = transformers.AutoTokenizer.from_pretrained(os.path.join(workdir, "tokenizer"), local_files_only=True)
    assert tok("<image>\nwhich shape?").input_ids == src("<image>\nwhich shape?").input_ids


def test_reward_model_export_trunk_and_head(tmp_path):
    workdir, out = str(tmp_path / "run"), str(tmp_path / "hf")
    c, module, params = _save_run("reward_model", workdir)
    summary = export.export(workdir, out)
    assert summary["step"] == 3 and {"reward_head.safetensors", "reward_head.json"} <= set(summary["files"])
    info = json.loads(open(os.path.join(out, "reward_head.json")).read())
    head = {k: torch.as_tensor(v) for k, v in load_file(os.path.join(out, info["file"])).items()}
    assert {k: list(v.shape) for k, v in head.items()} == info["tensors"]
    reloaded = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    ids, mask, pv, sizes = _inputs(c)
    h = _torch(reloaded, ids, mask, pv, sizes, output_hidden_states=True).hidden_states[-1]  # info["h"]
    r = torch.tanh(h @ head["rm_head.dense.weight"].T + head["rm_head.dense.bias"])  # info["apply"]
    r = r @ head["rm_head.out_proj.weight"].T + head["rm_head.out_proj.bias"]
    last = torch.as_tensor(mask).cumsum(-1)[:, -1] - 1  # info["position"] (right padding)
    ref = r[torch.arange(2), last].numpy()
    ours = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), pixel_values=jnp.asarray(pv),
                        image_sizes=jnp.asarray(sizes)).rewards
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)
    # ... and the folder loads back here, head included.
    loaded = hf.load_reward_head(out)
    np.testing.assert_array_equal(loaded["dense"]["kernel"], params["reward_head"]["dense"]["kernel"])


def test_export_errors(tmp_path):
    workdir = str(tmp_path / "empty")
    os.makedirs(workdir)
    c = _config("mm_dpo")
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(json.loads(c.to_json_best_effort()), f)
    with pytest.raises(FileNotFoundError, match="no checkpoint under checkpoints/"):
        export.export(workdir, str(tmp_path / "out"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"algorithm": "ppo"}, f)
    with pytest.raises(ValueError, match=r"export supports \('mm_dpo', 'reward_model'\) runs, not 'ppo'"):
        export.export(workdir, str(tmp_path / "out"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"algorithm": "mm_dpo", "dpo": {"betta": 1}}, f)
    with pytest.raises(ValueError, match=r"saved config key dpo.betta is not in the mm_dpo schema"):
        export.export(workdir, str(tmp_path / "out"))
