"""Pallas TPU token log-probs over a mesh of 8 fake devices (interpret mode):
vocab-parallel == gathered == reference (values and gradients), the head is never
gathered in vocab-parallel mode, tokens split over every batch axis including
`sequence`; mixed bf16 hidden x f32 head; next_token_logprobs' shift."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mm_rlhf_jax.kernels import next_token_logprobs, token_logprobs
from mm_rlhf_jax.kernels.token_logprobs import sharded
from mm_rlhf_jax.kernels.token_logprobs.common import BlockSizes
from mm_rlhf_jax.sharding import make_mesh

from .helpers import assert_close, normal

F32, BF16 = jnp.float32, jnp.bfloat16
BLOCKS = BlockSizes(16, 128, 128, 8, 128, block_n_dw=16, block_v_dw=256)  # ragged tiles on every axis


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 1, "tensor": 4, "sequence": 1})


def _inputs(seed, b, t, h, v, dtype=F32, w_dtype=None):
    rng = np.random.default_rng(seed)
    hidden = normal(rng, (b, t, h), F32).astype(dtype)
    w = (normal(rng, (h, v), F32) * (2.0 / h**0.5)).astype(w_dtype or dtype)
    labels = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
    cot = jnp.asarray(rng.standard_normal((b, t)), F32)  # non-uniform per-token cotangents
    return hidden, w, labels, cot


def _value_and_grads(impl, hidden, w, labels, cot, **kw):
    def loss(hidden, w):
        logp, ent = token_logprobs(hidden, w, labels, return_entropy=True, temperature=0.8, impl=impl, **kw)
        return jnp.sum(logp * cot) + 0.3 * jnp.sum(ent * cot[:, ::-1]), (logp, ent)

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def test_plans(mesh):
    with jax.set_mesh(mesh):
        vp = sharded.make_plan(64, 64, 1000, None)
        assert (vp.tokens, vp.vocab, vp.head_split) == (("data",), "tensor", ("data",))
        gathered = sharded.make_plan(64, 64, 1000, False)
        assert (gathered.tokens, gathered.vocab) == (("data", "tensor"), None)  # no rank redoes tokens
        assert sharded.make_plan(64, 63, 1000, False).head_split is None  # H indivisible: gathered whole
        assert sharded.make_plan(64, 64, 1001, None).vocab is None  # tensor does not divide V: gathered
        with pytest.raises(ValueError, match="vocab_parallel=True needs"):
            sharded.make_plan(64, 64, 1001, True)
        # The head is gathered in slices of <= GATHER_SLICE_BYTES, on vocab-tile boundaries.
        big = sharded.make_plan(8192, 3584, 152064, False, itemsize=2, align=1024)
        widths = [hi - lo for lo, hi in big.slices]
        assert big.slices[0][0] == 0 and big.slices[-1][1] == 152064 and len(widths) == 9
        assert all(w % 1024 == 0 and 3584 * w * 2 <= sharded.GATHER_SLICE_BYTES for w in widths[:-1])
    seq_mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 1, "sequence": 4})
    with jax.set_mesh(seq_mesh):
        assert sharded.make_plan(2 * 64, 64, 1000, None).tokens == ("data", "sequence")
    assert sharded.make_plan(64, 64, 1000, None) == sharded.Plan()  # no mesh: one kernel call


@pytest.mark.parametrize("slice_bytes", [None, 64 * 300 * 4])
def test_vocab_parallel_equals_gathered_and_reference(mesh, slice_bytes, monkeypatch):
    """V = 1000 over 4 tensor shards (250 columns each, ragged 128 / 256 tiles), N = 64
    tokens over data; entropy and temperature on, non-uniform cotangents. With a small
    slice budget the gathered head is processed in 4 slices (their statistics merged)."""
    if slice_bytes is not None:
        monkeypatch.setattr(sharded, "GATHER_SLICE_BYTES", slice_bytes)
    hidden, w, labels, cot = _inputs(0, 4, 16, 64, 1000)
    results = {}
    with jax.set_mesh(mesh):
        hs = jax.device_put(hidden, NamedSharding(mesh, P("data", None, None)))
        ws = jax.device_put(w, NamedSharding(mesh, P(None, "tensor")))
        for name, vocab_parallel in (("vocab_parallel", True), ("gathered", False)):
            f = jax.jit(_value_and_grads("pallas", hidden, w, labels, cot, block_sizes=BLOCKS,
                                         vocab_parallel=vocab_parallel))
            lowered = f.lower(hs, ws)
            (_, aux), grads = lowered.compile()(hs, ws)
            results[name] = (*aux, *grads)
            if vocab_parallel:
                # The [H, V] head (or its gradient) is never all-gathered / all-reduced whole.
                hlo = lowered.compile().as_text()
                for op in re.findall(r"= f32\[([0-9,]+)\][^=]*? (all-gather|all-reduce)\(", hlo):
                    assert op[0] != "64,1000", op
    (_, aux), grads = _value_and_grads("reference", hidden, w, labels, cot)(hidden, w)
    want = (*aux, *grads)
    for name in results:
        for what, a, e in zip(("logp", "entropy", "dh", "dw"), results[name], want):
            assert_close(a, e, F32, f"{name} {what}")
    for a, b in zip(results["vocab_parallel"], results["gathered"]):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_bf16_hidden_f32_head():
    """The production dtypes: bf16 activations, f32 master LM head. W tiles are cast to
    bf16 in VMEM; dW comes back f32 (accumulated in f32), dh bf16."""
    hidden, w, labels, cot = _inputs(1, 2, 13, 200, 600, BF16, w_dtype=F32)
    (_, (logp, ent)), (dh, dw) = jax.jit(_value_and_grads("pallas_tpu", hidden, w, labels, cot,
                                                          block_sizes=BLOCKS))(hidden, w)
    assert dh.dtype == BF16 and dw.dtype == F32 and logp.dtype == F32
    # Reference on the kernel's effective inputs: W rounded to the compute dtype.
    (_, (rlogp, rent)), (rdh, rdw) = _value_and_grads("reference", hidden, w, labels, cot)(
        hidden.astype(F32), w.astype(BF16).astype(F32))
    for what, a, e in (("logp", logp, rlogp), ("entropy", ent, rent), ("dh", dh, rdh), ("dw", dw, rdw)):
        assert_close(a, e, BF16, what)


def test_next_token_logprobs_shift(mesh):
    """Equals the sliced formulation; all T positions are scored, so B * T tokens split
    over the sequence axis; the last position gets exactly zero gradient."""
    hidden, w, labels, _ = _inputs(2, 2, 12, 32, 300)
    ids = labels
    got = next_token_logprobs(hidden, w, ids, impl="xla")
    want = token_logprobs(hidden[:, :-1], w, ids[:, 1:], impl="reference")
    assert got.shape == ids.shape and float(jnp.abs(got[:, 0]).max()) == 0.0
    assert_close(got[:, 1:], want, F32, "shifted logp")
    dh = jax.grad(lambda x: jnp.sum(next_token_logprobs(x, w, ids, impl="pallas")))(hidden)
    assert float(jnp.abs(dh[:, -1]).max()) == 0.0 and float(jnp.abs(dh[:, :-1]).min()) > 0.0


def test_a_token_count_no_mesh_axis_divides_is_padded_and_exact():
    """N = 3 on a data 2 x sequence 4 mesh: nothing divides it, so the call pads N to 8 (zero rows) and
    splits it; values and gradients equal the reference's, the padding contributes nothing."""
    seq_mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 1, "sequence": 4})
    hidden, w, labels, cot = _inputs(3, 1, 3, 64, 300)
    with jax.set_mesh(seq_mesh):
        assert sharded.make_plan(3, 64, 300, None) == sharded.Plan()
        (_, aux), grads = jax.jit(_value_and_grads("pallas", hidden, w, labels, cot, block_sizes=BLOCKS))(hidden, w)
    (_, want_aux), want_grads = _value_and_grads("reference", hidden, w, labels, cot)(hidden, w)
    for what, a, e in zip(("logp", "entropy", "dh", "dw"), (*aux, *grads), (*want_aux, *want_grads)):
        assert a.shape == e.shape, what
        assert_close(a, e, F32, what)
