"""Context-parallel (sequence-sharded) attention on 8 fake devices equals the unsharded kernel.

Forward and gradients (q, k, v) against the dense reference, for contiguous and
zigzag (load-balanced) layouts, with ragged padding, shared-prompt branches and
GQA; plus the decoder with attention_impl="context_parallel" on a sequence mesh.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mm_rlhf_jax import kernels
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.sharding import make_mesh
from .helpers import assert_close, dpo_like_loss, qkv


def _ids(b, t, seed):
    """Ragged padding (segment 0) and a prompt / branch-1 / branch-2 layout per row."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((b, t), np.int32)
    br = np.zeros((b, t), np.int32)
    for i in range(b):
        n = int(rng.integers(t // 2, t + 1))
        p, c = int(rng.integers(1, n // 2)), int(rng.integers(1, n // 4 + 1))
        seg[i, :n] = 1
        br[i, p:p + c], br[i, p + c:n] = 1, 2
    return jnp.asarray(seg), jnp.asarray(br)


def _loss(out, seg):
    return dpo_like_loss(out * (seg[..., None, None] > 0), seed=3)


@pytest.mark.parametrize("mesh_shape,zigzag,hq,hkv", [
    ({"sequence": 8}, False, 4, 2),
    pytest.param({"sequence": 8}, True, 4, 1, marks=pytest.mark.slow),
    ({"data": 2, "tensor": 2, "sequence": 2}, True, 4, 2),
])
def test_forward_and_grads_match_unsharded(devices8, mesh_shape, zigzag, hq, hkv):
    b, t, d = 2, 128, 16
    q, k, v = qkv(0, b, t, t, hq, hkv, d, jnp.float32)
    seg, br = _ids(b, t, 1)

    def ref_loss(q, k, v):
        out = kernels.attention(q, k, v, segment_ids=seg, branch_ids=br, impl="reference")
        return _loss(out, seg), out

    (ref_l, ref_out), ref_g = jax.value_and_grad(ref_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    mesh = make_mesh(mesh_shape)
    n = mesh.shape["sequence"]
    perm = kernels.zigzag_permutation(t, n) if zigzag else np.arange(t)
    inv = np.argsort(perm)
    x_sh = NamedSharding(mesh, P(("data", "fsdp"), "sequence", "tensor", None))
    id_sh = NamedSharding(mesh, P(("data", "fsdp"), "sequence"))
    with jax.set_mesh(mesh):
        qp, kp, vp = (jax.device_put(x[:, perm], x_sh) for x in (q, k, v))
        segp, brp = jax.device_put(seg[:, perm], id_sh), jax.device_put(br[:, perm], id_sh)

        @jax.jit
        def cp_loss(q, k, v):
            out = kernels.context_parallel_attention(q, k, v, segment_ids=segp, branch_ids=brp, zigzag=zigzag,
                                                     impl="xla")
            return _loss(out[:, inv], seg), out  # the loss weighs positions in natural order

        (cp_l, cp_out), cp_g = jax.value_and_grad(cp_loss, argnums=(0, 1, 2), has_aux=True)(qp, kp, vp)
        assert cp_out.sharding.spec[1] == "sequence"  # the output stays sequence-sharded
    assert_close(np.asarray(cp_out)[:, inv], ref_out, jnp.float32, "forward")
    np.testing.assert_allclose(float(cp_l), float(ref_l), rtol=1e-5)
    for name, g, rg in zip("qkv", cp_g, ref_g):
        assert_close(np.asarray(g)[:, inv], rg, jnp.float32, f"d{name}")


def test_zigzag_permutation_balances_causal_work():
    n, t = 4, 64
    perm = kernels.zigzag_permutation(t, n)
    assert sorted(perm.tolist()) == list(range(t))
    # Keys seen per device under causal masking: natural index + 1, summed over its queries.
    work = [(perm[i * t // n:(i + 1) * t // n] + 1).sum() for i in range(n)]
    assert max(work) == min(work)
    contiguous = [(np.arange(i * t // n, (i + 1) * t // n) + 1).sum() for i in range(n)]
    assert max(contiguous) / min(contiguous) > 6
    with pytest.raises(ValueError, match="multiple of 2 \\* 4"):
        kernels.zigzag_permutation(60, 4)


def test_errors_name_the_problem(devices8):
    q, k, v = qkv(0, 1, 60, 60, 4, 2, 8, jnp.float32)
    with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
        kernels.context_parallel_attention(q, k, v)
    with jax.set_mesh(make_mesh({"sequence": 8})):
        with pytest.raises(ValueError, match="query length 60 .* multiples of 8"):
            kernels.context_parallel_attention(q, k, v)
    q, k, v = qkv(0, 1, 64, 64, 4, 2, 8, jnp.float32)
    with jax.set_mesh(make_mesh({"data": 2, "sequence": 4})):
        with pytest.raises(ValueError, match="batch size = 1 is not divisible"):
            kernels.context_parallel_attention(q, k, v)


@pytest.mark.slow  # the default suite covers the model path in tests/train/test_longpo_step.py
def test_decoder_with_context_parallel_attention_matches(devices8):
    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32,
                        param_dtype=jnp.float32, remat="full")
    base = hf.build_model(cfg)
    params = hf.init_params(base, jax.random.PRNGKey(0))
    b, t = 2, 128
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (b, t)), jnp.int32)
    seg, br = _ids(b, t, 2)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

    def loss(model, p):
        h = model.apply({"params": p}, ids, positions=pos, segment_ids=seg, branch_ids=br,
                        compute_logits=False).hidden_states
        return jnp.sum(jnp.sin(h) * (seg[..., None] > 0)), h

    (l0, h0), g0 = jax.jit(jax.value_and_grad(lambda p: loss(base, p), has_aux=True))(params)
    cp = hf.build_model(cfg.replace(attention_impl="context_parallel_xla"))
    with jax.set_mesh(make_mesh({"sequence": 8})):
        (l1, h1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(cp, p), has_aux=True))(params)
    assert_close(h1, h0, jnp.float32, "hidden")
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for (path, a), b_ in zip(jax.tree_util.tree_flatten_with_path(g1)[0], jax.tree.leaves(g0)):
        assert_close(a, b_, jnp.float32, jax.tree_util.keystr(path))
