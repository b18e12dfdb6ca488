"""LongPO configs and run wiring: presets, paper vs released values, a micro end-to-end run and its resume.

The full tiny preset (warm start, generation, training, before/after accuracies) is the
slow test at the bottom; its figures are in bench/RESULTS.md.
"""

import json
import os

import numpy as np
import pytest

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.longpo import data as longpo_data, run as longpo
from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.train import sft


@pytest.mark.parametrize("arg", ["tiny", "mistral_7b_128k", "qwen25_7b_128k", "mistral_7b_128k,released",
                                 "qwen25_7b_128k,released", "tiny,released"])
def test_every_preset_builds(arg):
    c = config_lib.preset("longpo", arg)
    assert c.algorithm == "longpo"
    layout = longpo_data.layout(c)
    assert layout.max_length % 16 == 0  # zigzag over up to 8 sequence shards
    longpo_data.generation_config(c.generation, 0)  # every generation knob maps onto GenerationConfig
    if arg.startswith(("mistral", "qwen")):
        assert c.model.init_from and c.longpo.policy_rope_theta == (1e7,)
        assert c.optim.lr == 5e-7 and c.optim.warmup_ratio == 0.1 and c.optim.weight_decay == 0.0
        assert c.data.max_length >= c.generation.max_doc_tokens + 4096 and c.model.remat == "full"
        assert c.mesh.sequence == 8 and "context_parallel" in c.longpo.attention_impl


def test_paper_and_released_values():
    paper = config_lib.preset("longpo", "mistral_7b_128k")
    released = config_lib.preset("longpo", "mistral_7b_128k,released")
    assert (paper.longpo.beta, paper.longpo.lam, paper.optim.name) == (0.1, 0.01, "adam")
    assert (released.longpo.beta, released.longpo.lam, released.optim.name) == (0.01, 0.01, "rmsprop")
    assert released.optim.b2 == 0.99  # torch RMSprop's alpha (tests/train/test_optim.py)
    assert paper.data.heldout_fraction == released.data.heldout_fraction == 0.0  # the paper trains on all samples
    assert paper.generation.answer_strategy == "greedy" and released.generation.answer_temperature == 1.0
    assert (paper.generation.turns_per_doc, released.generation.turns_per_doc) == (4, 2)
    assert (paper.longpo.value_set, released.longpo.value_set) == ("paper", "released")
    with pytest.raises(ValueError, match="unknown value set 'code'"):
        config_lib.preset("longpo", "tiny,code")
    with pytest.raises(ValueError, match="unknown preset 'llama'"):
        config_lib.preset("longpo", "llama")


def test_round_helpers():
    c = config_lib.preset("longpo", "mistral_7b_128k")
    c.longpo.policy_rope_theta = (1e7, 4e7)
    assert [longpo.policy_theta(c.longpo.policy_rope_theta, r, 1e6) for r in range(3)] == [1e7, 4e7, 4e7]
    c.longpo.policy_rope_theta = (0.0,)
    assert longpo.policy_theta(c.longpo.policy_rope_theta, 0, 1e6) == 1e6
    s, ref = list(range(10)), np.arange(20).reshape(10, 2)
    tr, tr_ref, held, held_ref = longpo.split_heldout(s, ref, 0.2)
    assert tr == list(range(8)) and held == [8, 9] and held_ref.tolist() == [[16, 17], [18, 19]]
    it = sft.ArrayBatches({"x": np.arange(50)}, 4, seed=1)
    first = [next(it)["x"].tolist() for _ in range(3)]
    it2 = sft.ArrayBatches({"x": np.arange(50)}, 4, seed=1)
    it2.set_state({"index": 2})
    assert next(it2)["x"].tolist() == first[2] and it.get_state() == {"index": 3}
    assert longpo_data.QUERY_PROMPTS.get("released") == prompts.QUERY_PROMPT


def micro_config():
    c = config_lib.preset("longpo", "tiny")
    c.warm_start.update(dict(steps=4, num_examples=64))
    c.data.update(dict(synthetic_train_docs=8, synthetic_eval_docs=8, heldout_fraction=0.25, batch_size=8))
    c.eval.update(dict(num_records=8, batch_size=8))
    c.generation.update(dict(batch_size=8, repetition_threshold=1000, min_answer_chars=0, drop_truncated=False))
    c.longpo.reference_batch_size = 8
    c.train.update(dict(steps=3, checkpoint_every=2))
    # Two self-evolution rounds; round 1's policy gets a larger RoPE theta, its reference keeps round 0's.
    c.longpo.rounds = 2
    c.longpo.policy_rope_theta = (0.0, 20000.0)
    return c


def test_round_schedule_scales_lengths_and_steps_per_round():
    """The paper's iterations at 128K -> 256K -> 512K: each round's document budget, its sequence length
    (the same headroom for the turns), the minimum document length (the same ratio), steps and documents."""
    c = config_lib.preset("longpo", "mistral_7b_128k")
    g, d = c.generation, c.data
    c.longpo.rounds = 3
    c.longpo.policy_rope_theta = (1e7, 1e7, 1e7)
    c.longpo.round_max_doc_tokens = (g.max_doc_tokens, 2 * g.max_doc_tokens, 4 * g.max_doc_tokens)
    c.longpo.round_steps = (5625, 2000, 312)
    c.longpo.round_documents = ("", "/data/docs_256k.jsonl", "/data/docs_512k.jsonl")
    r0, r1, r2 = (longpo.round_config(c, r) for r in range(3))
    assert (r0.generation.max_doc_tokens, r0.data.max_length, r0.train.steps) == (122880, 139264, 5625)
    assert r0.data.documents == d.documents and r0.generation.min_doc_tokens == g.min_doc_tokens
    assert (r1.generation.max_doc_tokens, r1.data.max_length, r1.generation.min_doc_tokens) == (245760, 262144, 131072)
    assert (r2.generation.max_doc_tokens, r2.data.max_length, r2.train.steps) == (491520, 507904, 312)
    assert r2.data.documents == "/data/docs_512k.jsonl" and c.data.max_length == 139264  # the preset is unchanged
    c.longpo.round_steps = (1, 2)
    with pytest.raises(ValueError, match="round_steps has 2 entries for longpo.rounds=3"):
        longpo.round_config(c, 0)
    plain = config_lib.preset("longpo", "tiny")
    assert longpo.round_config(plain, 0) is plain  # no schedule: every round as configured


@pytest.mark.slow
def test_micro_run_writes_everything_and_resumes(tmp_path):
    """An untrained micro model: the wiring, files and resume, not the learning (see the tiny test)."""
    c = micro_config()
    # Round 1 on documents twice as long (32 passages), with its own step count.
    c.longpo.round_max_doc_tokens = (c.generation.max_doc_tokens, 2 * c.generation.max_doc_tokens)
    c.longpo.round_steps = (3, 2)
    out = longpo.run(c, str(tmp_path))
    for name in ("eval.json", "initial_eval.json", "round_0/eval.json", "round_0/ref_logps.npy",
                 "round_0/data/samples.jsonl", "round_0/data/stats.json", "round_0/metrics.jsonl",
                 "warm_start/metrics.jsonl", "data/task/documents.jsonl", "data/tokenizer/tokenizer.json"):
        assert (tmp_path / name).exists(), name
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["train_samples"] + on_disk["heldout_samples"] == 8
    for key in ("preference_accuracy", "long_context_accuracy", "short_context_accuracy",
                "initial_long_context_accuracy", "start_preference_accuracy"):
        assert key in out, key
    r0, r1 = (json.loads((tmp_path / f"round_{r}" / "eval.json").read_text()) for r in range(2))
    assert (r0["policy_rope_theta"], r0["reference_rope_theta"]) == (10000.0, 10000.0)
    assert (r1["policy_rope_theta"], r1["reference_rope_theta"]) == (20000.0, 10000.0)
    assert (tmp_path / "round_1" / "data" / "samples.jsonl").exists() and on_disk["rounds"] == 2
    assert (r0["train_steps"], r1["train_steps"], on_disk["steps_per_round"]) == (3, 2, [3, 2])
    assert (r0["max_doc_tokens"], r1["max_doc_tokens"]) == (640, 1280) and r1["max_length"] == r0["max_length"] + 640
    docs = [[json.loads(line)["text"] for line in open(tmp_path / p)]
            for p in ("data/task/documents.jsonl", "data/task_round_1/documents.jsonl")]
    assert np.mean([len(t) for t in docs[1]]) > 1.8 * np.mean([len(t) for t in docs[0]])
    rows = [json.loads(line) for line in open(tmp_path / "round_0" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "train/loss" in r] == [0, 2]
    stamps = {p: os.path.getmtime(tmp_path / p) for p in ("round_0/data/samples.jsonl", "round_0/data/rejected",
                                                            "round_1/data/samples.jsonl", "round_1/ref_logps.npy")}
    again = longpo.run(c, str(tmp_path))  # resumes: nothing regenerated, same training result
    assert {p: os.path.getmtime(tmp_path / p) for p in stamps} == stamps
    # (NaN when every held-out pair of the untrained micro model is a tie: assert_equal counts NaN == NaN)
    np.testing.assert_equal(again["preference_accuracy"], out["preference_accuracy"])
    assert again["long_context_accuracy"] == out["long_context_accuracy"]


@pytest.mark.slow
def test_micro_run_with_the_long_reference_and_no_nll(tmp_path):
    """The DPO-baseline wiring (reference = pi_S on the long input) with the NLL term off."""
    c = micro_config()
    c.longpo.rounds, c.longpo.policy_rope_theta = 1, (0.0,)
    c.longpo.reference, c.longpo.nll_weight = "long", 0.0
    longpo.run(c, str(tmp_path))
    ref = np.load(tmp_path / "round_0" / "ref_logps_long.npy")
    assert ref.shape == (8, 2) and np.isfinite(ref).all() and not (tmp_path / "round_0" / "ref_logps.npy").exists()
    rows = [json.loads(line) for line in open(tmp_path / "round_0" / "metrics.jsonl")]
    first = next(r for r in rows if "train/loss" in r)
    # Step 0: policy == reference on the same inputs, so the loss is lam * log 2 (no NLL term).
    assert first["train/loss"] == pytest.approx(c.longpo.lam * np.log(2.0), rel=1e-4)


@pytest.mark.slow
@pytest.mark.target
def test_tiny_preset_improves_long_context_without_hurting_short(tmp_path):
    """The `tiny` preset end to end (~10-15 min on 2 shared CPU cores); figures in bench/RESULTS.md."""
    c = config_lib.preset("longpo", "tiny")
    out = longpo.run(c, str(tmp_path))
    assert out["long_context_accuracy"] >= out["initial_long_context_accuracy"] + 0.2, out
    assert out["short_context_accuracy"] >= out["initial_short_context_accuracy"] - c.eval.short_context_margin, out
    assert out["short_context_ok"] and out["preference_accuracy"] > out["start_preference_accuracy"], out
