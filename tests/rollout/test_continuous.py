"""Continuous batching (rollout.continuous) == the lockstep sampler: same tokens, log-probs, masks and row
order, whatever the slots; rows finish at different steps (stop tokens), groups share a prefill, there are
more rows than slots and the cache rolls its rows to the front."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.models.decoder import Decoder
from mm_rlhf_jax.models.outputs import KVCache
from mm_rlhf_jax.rollout import generate_tokens, left_pad, sample
from mm_rlhf_jax.rollout.continuous import room, sample_continuous
from mm_rlhf_jax.rollout.generate import Generator, _TokenIds
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh
from mm_rlhf_jax.models import hf

V = 96
NEW = 24
STOPS = (3, 17, 40, 55, 71)  # frequent enough under temperature 1.5 that rows stop at very different steps


def _decoder(scan_layers=False):
    cfg = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32,
                        initializer_range=0.3, scan_layers=scan_layers)
    model = Decoder(cfg)
    return model, nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"])


@pytest.fixture(scope="module")
def model_params():
    return _decoder()


def _prompts(n=7, seed=0):
    """n random prompts of 2..9 tokens, left-padded."""
    rng = np.random.default_rng(seed)
    return left_pad([rng.integers(1, V, int(m)).tolist() for m in rng.integers(2, 10, n)], 0)


def _run(model, params, ids, mask, *, slots=None, **kw):
    apply = lambda p, x, **a: model.apply({"params": p}, x, compute_logits="last", **a)  # noqa: E731
    fn = sample if slots is None else functools.partial(sample_continuous, slots=slots)
    init_cache = functools.partial(model.init_cache, dtype=jnp.float32)
    return jax.jit(functools.partial(fn, apply, init_cache=init_cache, **kw))(params, ids, mask,
                                                                             rng=jax.random.PRNGKey(3))


def assert_same(got, want):
    """Exact tokens, masks and lengths, row by row; log-probs to float rounding (attention over a differently
    laid-out cache sums in another order)."""
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(want.mask))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampling", [SamplingConfig("greedy"), SamplingConfig("temperature", 1.5)])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_continuous_equals_lockstep(model_params, sampling, num_samples):
    """7 mixed-length prompts (x num_samples rows) through 4 slots == all rows in lockstep."""
    model, params = model_params
    ids, mask = _prompts()
    kw = dict(max_new_tokens=NEW, stop_ids=STOPS, sampling=sampling, num_samples=num_samples)
    want = _run(model, params, ids, mask, **kw)
    lengths = np.asarray(want.lengths)
    assert len(np.unique(lengths)) >= 3 and lengths.min() < NEW // 4 and lengths.max() == NEW  # rows end apart
    assert_same(_run(model, params, ids, mask, slots=4, **kw), want)
    if num_samples > 1 and sampling.strategy != "greedy":  # a group's samples differ (own RNG streams)
        assert len({tuple(r) for r in np.asarray(want.tokens)[:num_samples]}) > 1


def test_cache_rolls_and_one_slot(model_params):
    """Enough decode steps that the shared cache index passes the cache's end several times (roll_left),
    down to a single slot; and a stacked (scan_layers) cache."""
    model, params = model_params
    ids, mask = _prompts(12, seed=1)
    kw = dict(max_new_tokens=NEW, stop_ids=STOPS, sampling=SamplingConfig("temperature", 1.5), num_samples=2)
    want = _run(model, params, ids, mask, **kw)
    for slots in (1, 4):
        # Each row decodes length - 1 steps in a slot; more steps than the cache has slots past the prompt.
        assert (np.asarray(want.lengths) - 1).sum() / slots > NEW + room(NEW)
        assert_same(_run(model, params, ids, mask, slots=slots, **kw), want)
    scanned, _ = _decoder(scan_layers=True)
    stacked = {**{k: v for k, v in params.items() if not k.startswith("layers_")},
               "layers": jax.tree.map(lambda *x: jnp.stack(x), params["layers_0"], params["layers_1"])}
    assert_same(_run(scanned, stacked, ids, mask, slots=4, **kw), want)


def test_first_token_stops_and_single_token(model_params):
    """Rows whose first token is a stop never take a slot; max_new_tokens=1 decodes nothing."""
    model, params = model_params
    ids, mask = _prompts()
    first = np.asarray(_run(model, params, ids, mask, max_new_tokens=1, stop_ids=(-1,)).tokens)[:, 0]
    kw = dict(max_new_tokens=NEW, stop_ids=(int(first[0]), int(first[3])), sampling=SamplingConfig("greedy"))
    want = _run(model, params, ids, mask, **kw)
    assert int(want.lengths[0]) == 1
    assert_same(_run(model, params, ids, mask, slots=2, **kw), want)
    one = dict(max_new_tokens=1, stop_ids=STOPS)
    assert_same(_run(model, params, ids, mask, slots=2, **one), _run(model, params, ids, mask, **one))


def test_put_row_and_roll_left():
    """put_row writes one source row at a slot offset with its segment id (padding stays 0); roll_left moves
    every row to the front and empties the tail."""
    cache = KVCache.empty(2, 3, 8, 1, 2, jnp.float32)
    src = KVCache.empty(2, 2, 3, 1, 2, jnp.float32)
    src = src.replace(k=tuple(x + jnp.arange(2.)[:, None, None, None] + 1 for x in src.k),
                      segment_ids=jnp.asarray([[0, 1, 1], [1, 1, 1]]))
    out = cache.put_row(src, 1, 2, 4, 9)
    assert np.asarray(out.segment_ids).tolist() == [[0] * 8, [0] * 8, [0] * 4 + [9] * 3 + [0]]
    assert np.asarray(out.k[0])[2, 0, :, 0].tolist() == [0, 0, 0, 0, 2, 2, 2, 0]
    out = cache.put_row(src, 0, 0, 1, 5).replace(index=jnp.int32(6)).roll_left(jnp.int32(2))
    assert np.asarray(out.segment_ids)[0].tolist() == [5, 5, 0, 0, 0, 0, 0, 0] and int(out.index) == 4
    # Keys move with their segment ids; the emptied tail keeps stale keys that segment 0 hides.
    assert np.asarray(out.k[1])[0, 0, :, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 1]


def test_generator_slots_equal_plain(devices8):
    """Generator(slots=4) on an 8-device mesh == Generator(): 5 prompts, groups of 2 sharing a prefill,
    batch_size 8 (two calls, the second padded), temperature sampling; same Generations in the same order."""
    cfg = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32,
                        param_dtype=jnp.float32, initializer_range=0.3)
    model = hf.build_model(cfg)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = hf.init_params(model, jax.random.PRNGKey(1), mesh, TRAIN_RULES)
    ids, mask = _prompts(5, seed=2)
    items = [{"prompt_ids": row[m.astype(bool)]} for row, m in zip(ids, mask)]
    kw = dict(max_new_tokens=NEW, batch_size=8, stop_ids=STOPS, sampling=SamplingConfig("temperature", 1.5),
              min_bucket=16)
    plain = Generator(model, _TokenIds(0, STOPS), mesh, **kw)
    cont = Generator(model, _TokenIds(0, STOPS), mesh, slots=4, **kw)
    assert plain.shares_prefill(2)
    want, got = plain(params, items, seed=1, num_samples=2), cont(params, items, seed=1, num_samples=2)
    assert len({g.num_tokens for g in want}) >= 3
    assert [g.tokens for g in got] == [g.tokens for g in want]
    assert [g.truncated for g in got] == [g.truncated for g in want]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at most batch_size"):
        Generator(model, _TokenIds(0, STOPS), mesh, slots=16, **kw)


def test_generate_tokens_slots(model_params):
    model, params = model_params
    ids, mask = _prompts(6, seed=3)
    prompts = [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]
    kw = dict(max_new_tokens=NEW, stop_ids=STOPS, sampling="temperature", temperature=1.5, num_samples=2)
    want = generate_tokens(model, params, prompts, **kw)
    assert generate_tokens(model, params, prompts, slots=3, **kw) == want
    assert len({len(t) for t in want}) >= 3
