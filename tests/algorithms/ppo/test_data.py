"""Prompt-pool records and the bundled synthetic reasoning tasks (PPO / Align-Pro data)."""

import json

import pytest

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.prompts_pool import PromptRecord, load_prompt_pool, write_prompt_pool
from mm_rlhf_jax.rewards.math import math_reward
from mm_rlhf_jax.rewards.sandbox import code_reward
from mm_rlhf_jax.data.synthetic import reasoning as tasks

def write_lines(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_prompt_pool_round_trip_and_default_ids(tmp_path):
    rows = [{"prompt": "What is 1 plus 2 ?", "domain": "math", "ground_truth": "3"},
            {"id": "c1", "prompt": "Write f", "domain": "code", "unit_tests": "assert f(1) == 1",
             "meta": {"task": "x"}},
            {"id": 7, "prompt": "Say hi", "domain": "general", "reference": "hi"}]
    recs = load_prompt_pool(write_lines(tmp_path / "pool.jsonl", rows))
    assert [r.id for r in recs] == ["pool-1", "c1", "7"]
    assert recs[1].unit_tests == "assert f(1) == 1" and recs[1].meta == {"task": "x"}
    assert recs[2].reference == "hi" and recs[2].ground_truth is None
    write_prompt_pool(str(tmp_path / "copy.jsonl"), recs)
    assert load_prompt_pool(str(tmp_path / "copy.jsonl")) == recs


@pytest.mark.parametrize("row,line,field,message", [
    ({"prompt": "p"}, 2, "domain", "missing"),
    ({"prompt": "p", "domain": "math", "groundtruth": "3"}, 2, "groundtruth", "unknown field"),
    ({"prompt": 3, "domain": "math"}, 2, "prompt", "expected a string"),
    ({"prompt": "p", "domain": "math", "ground_truth": "  "}, 2, "ground_truth", "empty"),
    ({"prompt": "p", "domain": "math", "meta": []}, 2, "meta", "expected an object"),
    ({"id": "a", "prompt": "p", "domain": "math"}, 2, "id", "duplicate id 'a'"),
    ("{not json", 2, "<json>", "invalid JSON"),
])
def test_prompt_pool_errors_name_file_line_and_field(tmp_path, row, line, field, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "ok", "domain": "math"}, row])
    with pytest.raises(DataError, match=message) as e:
        load_prompt_pool(path)
    assert (e.value.file, e.value.line, e.value.field) == (path, line, field)


def test_synthetic_splits_are_disjoint_and_verified_by_their_verifiers():
    splits = tasks.make_splits(0, {"sft": 200, "train": 100, "heldout": 60}, tasks.TaskMix(0.5, 0.3, 0.2))
    prompts = {k: {r["prompt"] for r in v if r["domain"] != "general"} for k, v in splits.items()}
    assert not prompts["sft"] & prompts["heldout"] and not prompts["train"] & prompts["heldout"]
    recs = [r for r in splits["heldout"]]
    assert {r["domain"] for r in recs} == {"math", "code", "general"}
    for r in recs[:40]:
        good, bad = tasks.solution(r), tasks.solution(r, wrong=True)
        if r["domain"] == "math":
            assert math_reward(good, r["ground_truth"]) == 1.0 and math_reward(bad, r["ground_truth"]) == 0.0
        elif r["domain"] == "code":
            assert code_reward(good, r["unit_tests"]) == 1.0 and code_reward(bad, r["unit_tests"]) == 0.0
        else:
            assert good == f"The answer is {r['ground_truth']} ." and r["ground_truth"] not in bad
    # Hand-checked examples of each task.
    rec = tasks.math_record("largest", (4, 9, 2), "x")
    assert (rec["prompt"], rec["ground_truth"]) == ("What is the largest of 4 , 9 and 2 ?", "9")
    assert tasks.solution(rec, wrong=True) == "The answer is 4 ."  # the first listed non-answer number
    code = tasks.code_record("g", "y", "times", 3, "c")
    assert code["unit_tests"] == "assert g(0) == 0\nassert g(2) == 6\nassert g(5) == 15"
    assert tasks.solution(code, wrong=True) == "def g ( y ): return y * 4"
    records = [PromptRecord(**{k: v for k, v in r.items()}) for r in splits["train"]]
    assert len(records) == 100


def test_paraphrases_and_rewrite_demos():
    rec = tasks.math_record("smallest", (4, 9, 2), "x")
    para = tasks.paraphrased([rec])[0]
    assert para["prompt"] == "Among 4 , 9 and 2 , which is the tiniest ?"
    assert para["meta"]["canonical"] == rec["prompt"] and para["ground_truth"] == "2"
    demos = tasks.rewrite_conversations([para] * 300, 0, p_canonical=0.5, p_copy=0.3, template="R : {prompt}")
    targets = [t for _, t in demos]
    assert all(u == "R : " + para["prompt"] for u, _ in demos)
    canon, copy = targets.count(rec["prompt"]), targets.count(para["prompt"])
    harmful = targets.count("What is the largest of 4 , 9 and 2 ?")
    assert canon + copy + harmful == 300 and abs(canon - 150) < 30 and abs(copy - 90) < 25
    with pytest.raises(ValueError, match="only math records"):
        tasks.paraphrased([tasks.code_record("f", "x", "plus", 1, "c")])


def test_tokenizer_covers_the_task_vocabulary(tmp_path):
    from mm_rlhf_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tasks.build_tokenizer(str(tmp_path / "tok")))
    for text in tasks.corpus():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
    ids = tok("def f ( x ): return x * 3", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "def f ( x ): return x * 3"  # decoded code runs as written
