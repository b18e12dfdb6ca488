"""KV-cache decoding == full forward; sampler == a naive re-forward-every-step reference; chunked decoding
and shared group prefills change no output."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.rollout import left_pad, sample
from mm_rlhf_jax.rollout.sampler import decode_chunks
from mm_rlhf_jax.rollout.strategies import SamplingConfig, select
from mm_rlhf_jax.sharding import SAMPLING_RULES, logical_shardings, make_mesh

V = 96


@pytest.fixture(scope="module")
def model_params():
    cfg = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32,
                        initializer_range=0.3)
    model = Decoder(cfg)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


def apply_fn(model):
    return lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_logits_equal_full_forward(model_params, scan_layers):
    model, params = model_params
    if scan_layers:  # one stacked [L, B, Hkv, S, D] cache through the scanned layers
        model = Decoder(model.config.replace(scan_layers=True))
        params = {**params, "layers": jax.tree.map(lambda *x: jnp.stack(x), params["layers_0"], params["layers_1"])}
        params = {k: v for k, v in params.items() if not k.startswith("layers_")}
    ids = np.random.default_rng(0).integers(0, V, (3, 12)).astype(np.int32)
    full = model.apply({"params": params}, ids).logits
    step = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))
    out = step(params, ids[:, :5], model.init_cache(3, 16, jnp.float32))
    steps = [out.logits]
    for t in range(5, 12):
        out = step(params, ids[:, t:t + 1], out.cache)
        steps.append(out.logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5 * np.abs(full).max())


def naive_greedy(model, params, prompts, max_new, stop):
    """Re-runs the full forward on the growing sequence each step (no cache).

    The sequence is right-padded to a fixed length: causal attention makes the
    logits at its last real token independent of the padding after it.
    """
    forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids).logits)
    width = max(len(p) for p in prompts) + max_new
    outs = []
    for p in prompts:
        seq = list(p)
        gen = []
        for _ in range(max_new):
            padded = np.zeros((1, width), np.int32)
            padded[0, :len(seq)] = seq
            logits = forward(params, padded)[0, len(seq) - 1]
            tok = int(jnp.argmax(logits))
            gen.append(tok)
            seq.append(tok)
            if tok in stop:
                break
        outs.append(gen)
    return outs


@pytest.mark.parametrize("n_devices", [1, 8])
def test_greedy_sampler_matches_naive_reference(model_params, n_devices, devices8):
    model, params = model_params
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23, 24, 25, 26]]
    # A stop token that occurs in the naive greedy output of row 1 (so rows stop at different times).
    ref_long = naive_greedy(model, params, prompts, 8, stop=())
    stop = [ref_long[1][3]]
    ref = naive_greedy(model, params, prompts, 8, stop=stop)
    ids, mask = left_pad(prompts, 0)
    init_cache = functools.partial(model.init_cache, dtype=jnp.float32)
    run = jax.jit(functools.partial(sample, apply_fn(model), init_cache=init_cache, max_new_tokens=8,
                                    stop_ids=stop, sampling=SamplingConfig("greedy")))
    if n_devices == 8:
        mesh = make_mesh({"tensor": 2, "fsdp": 4})
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"]
        with jax.set_mesh(mesh), nn.logical_axis_rules(SAMPLING_RULES):
            params = jax.device_put(params, logical_shardings(abstract, mesh, SAMPLING_RULES))
            out = run(params, ids, mask, rng=jax.random.PRNGKey(0))
    else:
        out = run(params, ids, mask, rng=jax.random.PRNGKey(0))
    for row, expected in enumerate(ref):
        n = int(out.lengths[row])
        assert out.tokens[row, :n].tolist() == expected
        assert int(out.mask[row].sum()) == len(expected)
    # Greedy log-probs are the model's log-softmax at the chosen token.
    full = model.apply({"params": params}, jnp.asarray([prompts[0] + ref[0]])).logits[0]
    lp = jax.nn.log_softmax(full, -1)
    expected_lp = [float(lp[len(prompts[0]) - 1 + i, t]) for i, t in enumerate(ref[0])]
    np.testing.assert_allclose(out.logprobs[0, :len(ref[0])], expected_lp, atol=1e-4)


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 256))
    keys = jax.random.split(jax.random.PRNGKey(0), 1)[0]
    tok, _ = select(logits, keys, SamplingConfig("top_k", top_k=2))
    assert set(np.unique(tok).tolist()) == {0, 1}
    tok, logp = select(logits, keys, SamplingConfig("top_p", top_p=0.8))
    # mass before token 2 is 0.8, not < 0.8: only tokens 0 and 1 are kept, renormalised.
    assert set(np.unique(tok).tolist()) == {0, 1}
    np.testing.assert_allclose(np.exp(logp[tok == 0]), 0.5 / 0.8, rtol=1e-5)
    with pytest.raises(KeyError, match="beam"):
        select(logits, keys, SamplingConfig("beam"))


def test_decode_chunks():
    assert decode_chunks(128) == [32, 64, 96, 128]
    assert decode_chunks(100) == [25, 50, 75, 100]
    assert decode_chunks(40) == [20, 40] and decode_chunks(6) == [6] and decode_chunks(128, 1) == [128]


def _ragged_prompts():
    return left_pad([[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23, 24, 25, 26]], 0)


@pytest.mark.parametrize("sampling", [SamplingConfig("greedy"), SamplingConfig("temperature", 1.5)])
def test_chunked_decoding_equals_one_chunk(model_params, sampling):
    """The cache grown per chunk (attention over the filled part only) gives the one-chunk outputs."""
    model, params = model_params
    ids, mask = _ragged_prompts()
    init_cache = functools.partial(model.init_cache, dtype=jnp.float32)
    run = lambda chunks: jax.jit(functools.partial(  # noqa: E731
        sample, apply_fn(model), init_cache=init_cache, max_new_tokens=64, stop_ids=[-1], sampling=sampling,
        num_chunks=chunks))(params, ids, mask, rng=jax.random.PRNGKey(3))
    one, four = run(1), run(4)
    np.testing.assert_array_equal(four.tokens, one.tokens)
    np.testing.assert_allclose(four.logprobs, one.logprobs, atol=1e-5)
    assert four.lengths.tolist() == [64] * 3


def test_shared_prefill_equals_repeated_prompts(model_params):
    """num_samples=k: one prefill over the B prompts, cache rows repeated; same tokens / log-probs as
    prefilling each of the B*k rows (same rng), and the prefill runs on B rows, the decode on B*k."""
    model, params = model_params
    ids, mask = _ragged_prompts()
    k = 3
    calls = []  # (rows, tokens) of every model call, recorded at trace time

    def counting(p, x, **kw):
        calls.append(x.shape)
        return model.apply({"params": p}, x, compute_logits="last", **kw)

    init_cache = functools.partial(model.init_cache, dtype=jnp.float32)
    run = lambda i, m, n: jax.jit(functools.partial(  # noqa: E731
        sample, counting, init_cache=init_cache, max_new_tokens=20, stop_ids=[int(ids[0, -1])],
        sampling=SamplingConfig("temperature", 1.5), num_samples=n))(params, i, m, rng=jax.random.PRNGKey(7))
    shared = run(ids, mask, k)
    assert calls[0] == (3, 7) and all(c == (3 * k, 1) for c in calls[1:])
    calls.clear()
    repeated = run(np.repeat(ids, k, 0), np.repeat(mask, k, 0), 1)
    assert calls[0] == (3 * k, 7)
    np.testing.assert_array_equal(shared.tokens, repeated.tokens)
    np.testing.assert_array_equal(shared.mask, repeated.mask)
    np.testing.assert_allclose(shared.logprobs, repeated.logprobs, atol=1e-5)
    assert len({tuple(r) for r in np.asarray(shared.tokens)[:k]}) > 1  # a group's samples differ


def test_scan_layers_sampler_equals_unrolled(model_params):
    """A scan_layers decoder (one stacked cache: grown per chunk, rows repeated per group) samples the same."""
    model, params = model_params
    scanned = Decoder(model.config.replace(scan_layers=True))
    stacked = {**{k: v for k, v in params.items() if not k.startswith("layers_")},
               "layers": jax.tree.map(lambda *x: jnp.stack(x), params["layers_0"], params["layers_1"])}
    ids, mask = _ragged_prompts()
    outs = []
    for m, p in ((model, params), (scanned, stacked)):
        init_cache = functools.partial(m.init_cache, dtype=jnp.float32)
        outs.append(jax.jit(functools.partial(
            sample, apply_fn(m), init_cache=init_cache, max_new_tokens=40, stop_ids=[-1],
            sampling=SamplingConfig("temperature", 1.5), num_samples=2))(p, ids, mask, rng=jax.random.PRNGKey(5)))
    np.testing.assert_array_equal(outs[1].tokens, outs[0].tokens)
    np.testing.assert_allclose(outs[1].logprobs, outs[0].logprobs, atol=1e-5)
