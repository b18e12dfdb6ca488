"""rollout.generate.Generator: batched, bucketed, sharded generation == one-prompt-at-a-time greedy decoding
on full forwards; one compile per prompt-length bucket; the sampling layout gives the same tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.data.synthetic import longdoc
from mm_rlhf_jax.data.tokenizer import load_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.rollout.generate import Generator, bucket_length, chat_encoder
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import SAMPLING_RULES, TRAIN_RULES, make_mesh

TASK = longdoc.TaskConfig(passages_per_doc=8, facts_per_doc=8, needle_span=1.0, min_filler=1, max_filler=2)
NEW = 6


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 64, 65, 100, 129, 1000, 131072, 131073)] == [
        64, 64, 128, 128, 192, 1024, 131072, 163840]
    assert all(bucket_length(n) >= n and bucket_length(n) <= 1.25 * n + 64 for n in range(1, 5000, 37))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, devices8):
    tok = load_tokenizer(longdoc.build_tokenizer(str(tmp_path_factory.mktemp("tok")), prompts.PHRASES))
    cfg = DecoderConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, architecture="qwen2", qkv_bias=True, dtype=jnp.float32,
                        param_dtype=jnp.float32, initializer_range=0.3)
    model = hf.build_model(cfg)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = hf.init_params(model, jax.random.PRNGKey(1), mesh, TRAIN_RULES)
    docs = longdoc.make_documents(0, 5, TASK)
    convs = [prompts.answer_prompt(d.passages[i % 3], prompts.PHRASES[0], "What is the code of Anna ?")
             for i, d in enumerate(docs)]
    return tok, model, mesh, params, convs


def naive_greedy(model, params, ids, eos):
    """(tokens, log-probs) of greedy decoding by a full forward over the whole prefix at every step."""
    host = jax.device_get(params)
    logits_fn = jax.jit(lambda p, x: model.apply({"params": p}, x).logits[0, -1])
    new, lps = [], []
    for _ in range(NEW):
        logits = np.asarray(logits_fn(host, jnp.asarray([ids + new])), np.float64)
        nxt = int(np.argmax(logits))
        lps.append(float(logits[nxt] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
        new.append(nxt)
        if nxt == eos:
            break
    return new, np.asarray(lps)


def test_generator_matches_naive_greedy(setup):
    tok, model, mesh, params, convs = setup
    encode = chat_encoder(tok)
    gen = Generator(model, tok, mesh, max_new_tokens=NEW, batch_size=4, encode=encode)
    outs = gen(params, convs)  # 5 conversations: a full batch and a padded one
    assert len(outs) == 5
    for conv, out in zip(convs, outs):
        want, want_lp = naive_greedy(model, params, encode(conv)["prompt_ids"].tolist(), tok.eos_token_id)
        assert list(out.tokens) == want
        np.testing.assert_allclose(out.logprobs, want_lp, atol=1e-4)
        assert out.truncated == (want[-1] != tok.eos_token_id)
        assert out.text == tok.decode(want, skip_special_tokens=True).strip()
    # The sampling layout (weights not FSDP-sharded), resharded from the training layout: same tokens.
    resharded = Generator(model, tok, mesh, max_new_tokens=NEW, batch_size=4, encode=encode,
                          param_shardings=hf.param_shardings(model, mesh, SAMPLING_RULES))
    assert [o.tokens for o in resharded(params, convs)] == [o.tokens for o in outs]


def test_compiles_once_per_prompt_length_bucket(setup):
    tok, model, mesh, params, convs = setup
    gen = Generator(model, tok, mesh, max_new_tokens=NEW, batch_size=4, encode=chat_encoder(tok),
                    sampling=SamplingConfig("temperature", 0.8), min_bucket=256)
    lengths = [len(gen.encode(c)["prompt_ids"]) for c in convs]
    assert max(lengths) <= 256  # every prompt in the first bucket
    gen(params, convs[:1], seed=0)
    gen(params, convs, seed=1)  # more rows, another padded batch, another seed
    gen(jax.tree.map(lambda x: x * 1.01, params), convs[:3], seed=2)  # new parameter values
    assert gen.trace_count == 1
    long = prompts.answer_prompt(" ".join(d.text for d in longdoc.make_documents(1, 2, TASK)), "", "Who ?")
    assert len(gen.encode(long)["prompt_ids"]) > 256
    gen(params, [long])
    assert gen.trace_count == 2  # a second bucket, a second compile
    gen(params, [long, convs[0]])
    assert gen.trace_count == 2
    # Sampling is seeded per call: the same call repeats, another seed differs somewhere.
    a, b, c = (gen.texts(params, convs, seed=s) for s in (5, 5, 6))
    assert a == b and a != c


def test_prompt_length_and_batch_errors(setup):
    tok, model, mesh, params, convs = setup
    gen = Generator(model, tok, mesh, max_new_tokens=NEW, batch_size=4, encode=chat_encoder(tok, max_length=10))
    assert not gen.fits(convs[0])
    with pytest.raises(ValueError, match="exceeds the prompt length 10"):
        gen(params, convs[:1])
    with pytest.raises(ValueError, match="generation batch size = 6 rows must divide evenly"):
        Generator(model, tok, mesh, max_new_tokens=NEW, batch_size=6)


def test_num_samples_share_the_prefill(setup):
    """gen(items, num_samples=k) == gen(each item repeated k times): same rows, keys and outputs, with one
    prefill per item (the k-row sampler); a batch that cannot hold whole groups repeats the items."""
    tok, model, mesh, params, convs = setup
    kw = dict(max_new_tokens=NEW, encode=chat_encoder(tok), sampling=SamplingConfig("temperature", 1.5))
    gen = Generator(model, tok, mesh, batch_size=8, **kw)
    assert gen.shares_prefill(2) and not gen.shares_prefill(3)  # 4 prompts split over data x fsdp = 4; 8/3 no
    grouped = gen(params, convs[:3], seed=4, num_samples=2)
    repeated = gen(params, [c for c in convs[:3] for _ in range(2)], seed=4)
    assert [g.tokens for g in grouped] == [g.tokens for g in repeated]
    for a, b in zip(grouped, repeated):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert set(gen._jits) == {1, 2}
    thrice = gen(params, convs[:2], seed=4, num_samples=3)  # 8 rows cannot hold groups of 3: items repeated
    assert [g.tokens for g in thrice] == [g.tokens for g in gen(params, [c for c in convs[:2] for _ in range(3)],
                                                                   seed=4)]
    assert set(gen._jits) == {1, 2}
