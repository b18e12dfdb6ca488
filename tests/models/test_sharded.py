"""The LLaVA-OV forward on a (data=2, fsdp=2, tensor=2) mesh equals the single-device forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mm_rlhf_jax.models import hf
from mm_rlhf_jax.sharding import TRAIN_RULES, ShardingError, make_mesh, placement

from .conftest import vlm_batch


def test_mesh_forward_matches_single_device(checkpoints, devices8):
    path = checkpoints("llava").path
    batch = vlm_batch(seed=9)
    inputs = [jnp.asarray(x) for x in (batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_sizes,
                                       batch.pixel_values_videos)]
    model, params = hf.load_pretrained(path)
    single = jax.jit(lambda p, *a: model.apply({"params": p}, *a).logits)(params, *inputs)

    boxed = jax.tree_util.tree_leaves(hf.abstract_params(model), is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)  # every parameter has logical axes
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model, sharded = hf.load_pretrained(path, mesh=mesh, rules=TRAIN_RULES)
    q = sharded["language_model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P(("fsdp", "sequence", "data"), "tensor", None)  # [embed, heads, head_dim]
    assert q.addressable_shards[0].data.shape == (16, 2, 16)  # embed over fsdp x data = 4
    fc1 = sharded["vision_tower"]["encoder"]["layers_1"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(("fsdp", "sequence", "data"), "tensor")
    np.testing.assert_array_equal(np.asarray(q), np.asarray(params["language_model"]["layers_0"]["self_attn"]
                                                            ["q_proj"]["kernel"]))

    param_sh = jax.tree.map(lambda x: x.sharding, sharded)
    data_sh = [placement.row_sharding(mesh, x.ndim) for x in inputs]

    def forward(p, ids, mask, pv, sizes, vids):
        # The separable path: the tower runs once, its features feed the merge + decoder.
        feats = model.apply({"params": p}, pv, sizes, vids, method=model.encode_vision)
        return model.apply({"params": p}, ids, mask, vision_features=feats).logits

    with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
        fwd = jax.jit(forward, in_shardings=(param_sh, *data_sh),
                      out_shardings=NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
        out = fwd(sharded, *(jax.device_put(x, s) for x, s in zip(inputs, data_sh)))
    assert out.sharding.spec == P(("data", "fsdp"), None, "tensor")
    keep = batch.attention_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[keep], np.asarray(single)[keep], atol=2e-6 * np.abs(single).max())


def test_indivisible_sharding_names_axis_and_sizes(checkpoints, devices8):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with pytest.raises(ShardingError, match=r"'layers_0/self_attn/k_proj/kernel' of shape \(48, 3, 8\): dim 1 "
                                            r"\(logical 'kv_heads' -> mesh axes 'tensor'\) has size 3, not divisible "
                                            r"by mesh size 2"):
        hf.load_pretrained(checkpoints("llama_gqa3").path, mesh=mesh)
