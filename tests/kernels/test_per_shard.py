"""Pallas kernels under a multi-device mesh run once per shard (shard_map) and equal the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mm_rlhf_jax.kernels import attention, per_shard, token_logprobs
from mm_rlhf_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1})


def test_split_axes_only_uses_dividing_axes(mesh):
    assert per_shard.split_axes(mesh, ("data", "fsdp"), 8) == ("data", "fsdp")
    assert per_shard.split_axes(mesh, ("data", "fsdp"), 2) == ("data",)
    assert per_shard.split_axes(mesh, ("data", "fsdp"), 3) is None
    assert per_shard.split_axes(mesh, ("tensor", "sequence"), 4) == ("tensor",)  # sequence has size 1


def test_attention_pallas_on_mesh_equals_reference(mesh, batch=4):
    rng = np.random.default_rng(0)
    t, hq, hkv, d = 16, 4, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(batch, t, h, d)), jnp.float32) for h in (hq, hkv, hkv))
    seg = jnp.asarray(np.repeat([[1] * 9 + [2] * 5 + [0] * 2], batch, 0), jnp.int32)

    def loss(impl, q, k, v):
        out = attention(q, k, v, segment_ids=seg, impl=impl)
        return jnp.sum(out * jnp.cos(out)), out

    with jax.set_mesh(mesh):
        sh = NamedSharding(mesh, P(("data", "fsdp") if batch % 4 == 0 else None, None, "tensor", None))
        qs, ks, vs = (jax.device_put(x, sh) for x in (q, k, v))
        f = jax.jit(jax.value_and_grad(lambda *a: loss("pallas", *a), argnums=(0, 1, 2), has_aux=True))
        traced = f.trace(qs, ks, vs)
        assert "shard_map" in str(traced.jaxpr)
        (_, out), grads = traced.lower().compile()(qs, ks, vs)
    (_, ref_out), ref_grads = jax.value_and_grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2),
                                                 has_aux=True)(q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-5)


def test_token_logprobs_pallas_on_mesh_equals_reference(mesh):
    rng = np.random.default_rng(1)
    b, t, h, v = 4, 16, 32, 300
    hidden = jnp.asarray(rng.normal(size=(b, t, h)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(h, v)) / 4, jnp.float32)
    labels = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)

    def loss(impl, hidden, w):
        lp, ent = token_logprobs(hidden, w, labels, return_entropy=True, impl=impl)
        return jnp.sum(lp) + 0.5 * jnp.sum(ent), (lp, ent)

    with jax.set_mesh(mesh):
        hs = jax.device_put(hidden, NamedSharding(mesh, P(("data", "fsdp"), None, None)))
        ws = jax.device_put(w, NamedSharding(mesh, P(None, "tensor")))
        traced = jax.jit(jax.value_and_grad(lambda *a: loss("pallas", *a), argnums=(0, 1), has_aux=True)).trace(hs, ws)
        assert "shard_map" in str(traced.jaxpr)
        (_, (lp, ent)), grads = traced.lower().compile()(hs, ws)
    (_, (rlp, rent)), rgrads = jax.value_and_grad(lambda *a: loss("reference", *a), argnums=(0, 1),
                                                  has_aux=True)(hidden, w)
    np.testing.assert_allclose(lp, rlp, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(ent, rent, atol=1e-4, rtol=1e-5)
    for g, r in zip(grads, rgrads):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


def test_single_device_calls_are_not_wrapped():
    q = jnp.ones((1, 8, 2, 8), jnp.float32)
    assert "shard_map" not in str(jax.make_jaxpr(lambda q: attention(q, q, q, impl="pallas"))(q))
