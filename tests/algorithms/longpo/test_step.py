"""LongPO step: packed shared-prompt log-probs, short-context reference, the loss, sequence-parallel training.

The independent reference is the plain decoder run separately on the full chosen and
rejected conversations (rendered by the tokenizer's chat template in one piece) with
[B, T, V] logits and log_softmax; response tokens are located in the token ids the
way the released code does it (after each `<|im_start|> assistant` up to `<|im_end|>`).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.train.pair_reference import assert_same_update
from jax.sharding import NamedSharding, PartitionSpec as P

from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.data.longpo.samples import SampleLayout, collate, tokenize_sample
from mm_rlhf_jax.data.tokenizer import load_tokenizer
from mm_rlhf_jax.losses.preference import longpo_loss
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.sharding import make_mesh, replicated
from mm_rlhf_jax.data.synthetic import longdoc as longdoc_task
from mm_rlhf_jax.algorithms.longpo import step as longpo_step
from mm_rlhf_jax.train import partition, state as state_lib

T, K, L = 192, 2, 96
CFG = DecoderConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    architecture="qwen2", qkv_bias=True, dtype=jnp.float32, param_dtype=jnp.float32,
                    rope_theta=10000.0, initializer_range=0.2)
C = ml_collections.ConfigDict(dict(beta=0.5, lam=0.3, nll_weight=1.0, nll_side="chosen", nll_tokens="sequence",
                                   max_response_tokens=0))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(longdoc_task.build_tokenizer(str(tmp_path_factory.mktemp("tok")), prompts.PHRASES))


@pytest.fixture(scope="module")
def records():
    task = longdoc_task.TaskConfig(passages_per_doc=3, facts_per_doc=3, needle_span=1.0, min_filler=1, max_filler=2)
    docs = longdoc_task.make_documents(2, 4, task)
    out = []
    for i, d in enumerate(docs):
        (_, n0, v0), (_, n1, v1) = d.facts[0], d.facts[2]
        out.append({
            "prompt": d.text, "short_prompts": [d.passages[0], d.passages[2]],
            "questions": [f"{prompts.PHRASES[i]} What is the code of {n0} ?", f"What is the code of {n1} ?"],
            "chosens": [f"The code of {n0} is {v0} .", f"The code of {n1} is {v1} ."],
            "rejecteds": [f"The code of {n0} is {longdoc_task.VALUES[i]} .", longdoc_task.REFUSAL]})
    out[3] = {k: v[:1] if isinstance(v, list) else v for k, v in out[3].items()}  # a one-turn sample
    return out


@pytest.fixture(scope="module")
def params():
    return hf.init_params(hf.build_model(CFG), jax.random.PRNGKey(3))


def _batch(tok, records, nll_tokens="sequence"):
    lay = SampleLayout(max_length=T, max_turns=K, max_short_length=L, nll_tokens=nll_tokens)
    return collate([tokenize_sample(tok, r, lay) for r in records])


def _text_ids(tok, messages):
    return list(tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])


def _response_mask(tok, ids):
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assistant = tok.convert_tokens_to_ids("assistant")
    mask, inside = np.zeros(len(ids)), False
    for i, t in enumerate(ids):
        if inside:
            mask[i] = 1
            inside = t != end
        if i >= 1 and ids[i - 1] == start and t == assistant:
            inside = True
    return mask


_FORWARDS = {}


def _seq_logps(model, params, ids):
    """log p(ids[t] | ids[<t]) from [T, V] logits; right-padded to a fixed width (causal: exact), one compile."""
    if model.config not in _FORWARDS:
        _FORWARDS[model.config] = jax.jit(lambda p, x: jax.nn.log_softmax(
            model.apply({"params": p}, x).logits[0].astype(jnp.float32), -1))
    lp = np.asarray(_FORWARDS[model.config](params, jnp.asarray([ids + [0] * (T - len(ids))])))
    return np.concatenate([[0.0], lp[np.arange(len(ids) - 1), ids[1:]]])


def _independent(tok, model, params, rec, context_key="prompt", turns=None):
    """(chosen logp sum, rejected logp sum, chosen mean NLL, chosen response mean NLL) from full forwards."""
    out = []
    for field in ("chosens", "rejecteds"):
        msgs = []
        for i, (q, a) in enumerate(zip(rec["questions"], rec[field])):
            msgs += [{"role": "user", "content": (rec[context_key] + "\n\n" + q) if i == 0 else q},
                     {"role": "assistant", "content": a}]
        ids = _text_ids(tok, msgs)
        lp, m = _seq_logps(model, params, ids), _response_mask(tok, ids)
        out.append((float((lp * m).sum()), float(-lp[1:].mean()), float(-(lp * m).sum() / m.sum())))
    return out[0][0], out[1][0], out[0][1], out[0][2]


@pytest.mark.parametrize("nll_tokens", ["sequence", "responses"])
def test_policy_logps_equal_separate_full_forwards(tok, records, params, nll_tokens):
    model = hf.build_model(CFG.replace(rope_theta=1e6))  # the policy's theta override
    batch = _batch(tok, records, nll_tokens)
    got = jax.jit(functools.partial(longpo_step.policy_logps, model, nll_tokens=nll_tokens,
                                    max_response_tokens=40))(params, batch)
    for b, rec in enumerate(records):
        pc, pr, nll_seq, nll_resp = _independent(tok, model, params, rec)
        np.testing.assert_allclose(float(got["chosen"][b]), pc, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(float(got["rejected"][b]), pr, rtol=1e-5, atol=1e-4)
        want = nll_seq if nll_tokens == "sequence" else nll_resp
        np.testing.assert_allclose(float(got["nll"][b]), want, rtol=1e-5, atol=1e-5)


def test_reference_logps_use_short_inputs_and_the_reference_theta(tok, records, params):
    batch = _batch(tok, records)
    ref_model = hf.build_model(CFG)  # the reference keeps its own theta (1e4)
    got = np.asarray(jax.jit(functools.partial(longpo_step.reference_logps, ref_model))(params, batch))
    other = np.asarray(jax.jit(functools.partial(longpo_step.reference_logps, hf.build_model(
        CFG.replace(rope_theta=1e6))))(params, batch))
    for b, rec in enumerate(records):
        for side, field in enumerate(("chosens", "rejecteds")):
            want = 0.0
            for chunk, q, a in zip(rec["short_prompts"], rec["questions"], rec[field]):
                ids = _text_ids(tok, [{"role": "user", "content": chunk + "\n\n" + q},
                                      {"role": "assistant", "content": a}])
                want += float((_seq_logps(ref_model, params, ids) * _response_mask(tok, ids)).sum())
            np.testing.assert_allclose(got[b, side], want, rtol=1e-5, atol=1e-4)
    assert np.abs(got - other).max() > 1e-3  # theta matters: the reference must not use the policy's


def test_step_loss_is_longpo_loss_of_its_own_logps(tok, records, params):
    model = hf.build_model(CFG.replace(rope_theta=1e6))
    batch = _batch(tok, records)
    batch["ref_logps"] = np.asarray(jax.jit(functools.partial(longpo_step.reference_logps, hf.build_model(CFG)))(
        params, batch))
    loss, metrics = jax.jit(lambda p, b: longpo_step.longpo_terms(model, p, b, C, longpo_step.counts(b)))(params,
                                                                                                         batch)
    ind = np.asarray([_independent(tok, model, params, r) for r in records])
    want = longpo_loss(ind[:, 0], ind[:, 1], batch["ref_logps"][:, 0], batch["ref_logps"][:, 1], ind[:, 2],
                       beta=C.beta, lam=C.lam)
    np.testing.assert_allclose(float(loss), float(np.mean(want)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["longpo/nll"]), ind[:, 2].mean(), rtol=1e-5)
    margin = C.beta * ((ind[:, 0] - batch["ref_logps"][:, 0]) - (ind[:, 1] - batch["ref_logps"][:, 1]))
    np.testing.assert_allclose(float(metrics["longpo/pref_loss"]), np.mean(np.log1p(np.exp(-margin))), rtol=1e-5)


def test_long_reference_reads_the_long_inputs(tok, records, params):
    ref_model = hf.build_model(CFG)
    got = np.asarray(jax.jit(functools.partial(longpo_step.long_reference_logps, ref_model))(
        params, {k: v for k, v in _batch(tok, records).items() if not k.startswith("ref_")}))
    for b, rec in enumerate(records):
        pc, pr, _, _ = _independent(tok, ref_model, params, rec)
        np.testing.assert_allclose(got[b], [pc, pr], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"unknown longpo.reference 'longer'; use one of \['long', 'short'\]"):
        longpo_step.reference_fn("longer")


@pytest.mark.parametrize("nll_weight", [1.0, 0.0])
def test_long_reference_at_the_start_is_nll_plus_lam_log2(tok, records, params, nll_weight):
    # Policy == reference on the same long inputs: every implicit reward is 0, so the DPO term
    # is exactly lam * log 2 and the loss is nll_weight * NLL + lam * log 2 (hand value).
    model = hf.build_model(CFG)
    batch = _batch(tok, records)
    batch["ref_logps"] = np.asarray(jax.jit(functools.partial(longpo_step.long_reference_logps, model))(params, batch))
    c = ml_collections.ConfigDict({**C.to_dict(), "nll_weight": nll_weight})
    loss, metrics = jax.jit(lambda p, b: longpo_step.longpo_terms(model, p, b, c, longpo_step.counts(b)))(params,
                                                                                                         batch)
    nll = np.asarray([_independent(tok, model, params, r)[2] for r in records]).mean()
    assert float(metrics["longpo/pref_loss"]) == pytest.approx(np.log(2.0), abs=1e-5)
    assert float(loss) == pytest.approx(nll_weight * nll + C.lam * np.log(2.0), rel=1e-5)


def test_sft_rejected_fits_the_rejected_answers(tok, records, params):
    model = hf.build_model(CFG)
    batch = _batch(tok, records, "responses")
    lp = functools.partial(longpo_step.policy_logps, model, params, batch, nll_tokens="responses",
                           max_response_tokens=40)
    chosen, rejected = lp(), lp(nll_side="rejected")
    n_rej = np.asarray(rejected["rejected_tokens"])
    np.testing.assert_allclose(rejected["nll"], -np.asarray(rejected["rejected"]) / n_rej, rtol=1e-5)
    np.testing.assert_allclose(chosen["nll"], -np.asarray(chosen["chosen"]) / np.asarray(chosen["chosen_tokens"]),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="nll_side='rejected' with nll_tokens='sequence'"):
        longpo_step.policy_logps(model, params, _batch(tok, records), nll_side="rejected")


def _one_step(module, params, batch, mesh):
    tx = optax.sgd(0.1)
    mask = jax.tree.map(lambda _: True, params)
    with jax.set_mesh(mesh):
        sh = NamedSharding(mesh, P())
        state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=jax.device_put(params, sh),
                                     opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
        seq = NamedSharding(mesh, P(("data", "fsdp"), "sequence"))
        put = {k: jax.device_put(v, seq if v.ndim == 2 and v.shape[1] == T else
                                 NamedSharding(mesh, P(("data", "fsdp")))) for k, v in batch.items()}
        zigzag = longpo_step.zigzag_shards(module.config.attention_impl, mesh.shape["sequence"])
        step = jax.jit(functools.partial(longpo_step.train_step, module=module, tx=tx, mask=mask, c=C,
                                         zigzag_shards=zigzag))
        new, metrics = step(state, put)
        return jax.device_get(new.params), jax.device_get(metrics)


@pytest.mark.parametrize("impl,shape", [
    ("context_parallel_zigzag_xla", {"sequence": 8}),
    pytest.param("context_parallel_xla", {"data": 2, "sequence": 4}, marks=pytest.mark.slow)])
def test_sequence_parallel_train_step_equals_single_device(devices8, tok, records, params, impl, shape):
    batch = _batch(tok, records)
    batch["ref_logps"] = np.asarray([[-20.0, -25.0], [-21.0, -19.0], [-30.0, -31.0], [-12.0, -13.0]], np.float32)
    single = make_mesh({"fsdp": 1}, devices=devices8[:1])
    base = hf.build_model(CFG.replace(rope_theta=1e6, remat="full"))
    p0, m0 = _one_step(base, params, batch, single)
    cp = hf.build_model(CFG.replace(rope_theta=1e6, remat="full", attention_impl=impl))
    p1, m1 = _one_step(cp, params, batch, make_mesh(shape))
    np.testing.assert_allclose(m1["train/loss"], m0["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["train/grad_norm"], m0["train/grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_accumulated_step_equals_the_full_batch_step(tok, records, params):
    """2 microbatches of 2 samples == the full batch of 4: loss, metrics and the SGD update."""
    batch = _batch(tok, records)
    batch["ref_logps"] = np.asarray([[-20.0, -25.0], [-21.0, -19.0], [-30.0, -31.0], [-12.0, -13.0]], np.float32)
    module = hf.build_model(CFG.replace(rope_theta=1e6))
    tx = optax.sgd(0.1)
    mask = jax.tree.map(lambda _: True, params)
    out = {}
    for k in (1, 2):
        state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                     rng=jax.random.PRNGKey(0))
        step = jax.jit(functools.partial(longpo_step.train_step, module=module, tx=tx, mask=mask, c=C, microbatches=k))
        out[k] = jax.device_get(step(state, batch))
    (s1, m1), (s2, m2) = out[1], out[2]
    for key in m1:
        np.testing.assert_allclose(m2[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert_same_update(jax.device_get(params), s2.params, s1.params)
