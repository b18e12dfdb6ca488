"""phase.params_step with part of the model frozen: state creation, a step, a checkpoint round trip."""

import jax
import jax.numpy as jnp
import numpy as np

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh
from mm_rlhf_jax.train import checkpoint, phase, sft, state as state_lib
from mm_rlhf_jax.train.optim import make_optimizer

from tests.train.pair_reference import pair_batch, tiny_lm


def test_frozen_parameters_keep_no_optimizer_state_and_restore(tmp_path, devices8):
    mesh = make_mesh({"fsdp": -1})
    module = tiny_lm(dtype=jnp.float32)
    tx = make_optimizer(config_lib.optim_block(name="adam", lr=1e-2, warmup_ratio=0.0, schedule="constant"), 4)
    with jax.set_mesh(mesh):
        step = phase.params_step(module, sft.sft_step, tx, trainable=("layers_0/.*",), mesh=mesh, rules=TRAIN_RULES)
        params = hf.init_params(module, jax.random.PRNGKey(0), mesh, TRAIN_RULES)
        before = jax.device_get(params)  # the state (and these buffers) are donated to the step
        state = state_lib.create_state(params, tx, step.mask, jax.random.PRNGKey(1), step.shardings)
        batch = pair_batch(np.random.default_rng(0), 8, 16, 300)
        new, metrics = step.jit(state, {k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask")})
        ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
        ckpt.save(1, new)
        ckpt.wait()
        restored, _ = ckpt.restore(1, step.abstract_state)
        ckpt.close()
    moved = jax.device_get(new.params)
    assert np.isfinite(float(metrics["train/loss"]))
    np.testing.assert_array_equal(moved["embed_tokens"]["embedding"], before["embed_tokens"]["embedding"])
    assert not np.array_equal(moved["layers_0"]["mlp"]["down_proj"]["kernel"],
                              before["layers_0"]["mlp"]["down_proj"]["kernel"])
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(jax.device_get(new))):
        np.testing.assert_array_equal(a, b)
