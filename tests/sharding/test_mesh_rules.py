"""Mesh construction and logical-axis sharding (8 fake CPU devices)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.sharding import (SAMPLING_RULES, TRAIN_RULES, ShardingError, logical_shardings, make_mesh,
                                  rules_for)


def test_mesh_shapes(devices8):
    assert dict(make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1, "sequence": 1}
    assert dict(make_mesh({"data": 2, "tensor": -1}).shape) == {"data": 2, "fsdp": 1, "tensor": 4, "sequence": 1}
    assert dict(make_mesh({"fsdp": 1}, devices=devices8[:1]).shape)["fsdp"] == 1
    with pytest.raises(ValueError, match="needs 6 devices, but 8"):
        make_mesh({"data": 2, "tensor": 3})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 8})


def _abstract(num_kv_heads=2, vocab=256):
    cfg = DecoderConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                        num_kv_heads=num_kv_heads, dtype=jnp.float32)
    return jax.eval_shape(Decoder(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]


def test_train_and_sampling_layouts(devices8):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    train = logical_shardings(_abstract(), mesh, TRAIN_RULES)
    sample = logical_shardings(_abstract(), mesh, SAMPLING_RULES)
    q = ("layers_0", "self_attn", "q_proj", "kernel")
    get = lambda tree: tree[q[0]][q[1]][q[2]][q[3]].spec
    # [embed, heads, head_dim]: parameters split over every non-head axis (ZeRO-3 over fsdp x sequence x data)
    assert get(train) == P(("fsdp", "sequence", "data"), "tensor", None)
    assert get(sample) == P(None, "tensor", None)  # no FSDP gather in decode steps
    assert train["embed_tokens"]["embedding"].spec == P("tensor", ("fsdp", "sequence", "data"))
    # Each device holds 1/8 of q_proj: 4 shards over fsdp x data times 2 over tensor.
    sh = tuple(train[q[0]][q[1]][q[2]][q[3]].shard_shape((32, 4, 8)))
    assert sh == (8, 2, 8)
    assert rules_for("train") is TRAIN_RULES
    with pytest.raises(KeyError, match="unknown sharding layout"):
        rules_for("inference")


def test_non_divisible_dimension_is_an_error_not_replication(devices8):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with pytest.raises(ShardingError) as e:
        logical_shardings(_abstract(num_kv_heads=1), mesh, TRAIN_RULES)
    msg = str(e.value)
    assert "k_proj" in msg and "'kv_heads'" in msg and "'tensor'" in msg and "size 1" in msg and "size 2" in msg
