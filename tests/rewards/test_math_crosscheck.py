"""The disagreement harness: metrics and disagreements against hand-computed values."""

import json

import pytest

from mm_rlhf_jax.rewards.math import crosscheck as cc, math_reward

ROWS = [
    {"prediction": "1", "reference": "1", "expected": True, "id": 0},
    {"prediction": "2", "reference": "1", "expected": False, "id": 1},
    {"prediction": "x+y=2", "reference": "x-y=2", "expected": False, "id": 2},
    {"prediction": "0.5", "reference": r"\frac12", "expected": True, "id": 3},
    {"prediction": "7", "reference": "7"},  # unlabelled
]


def always(value):
    return lambda pairs: [value] * len(pairs)


def test_metrics_and_disagreements():
    report = cc.crosscheck(ROWS, {"math": cc.per_pair(math_reward), "yes": always(1.0)})
    math, yes = report["verifiers"]["math"], report["verifiers"]["yes"]
    assert (math["pairs"], math["labelled"], math["negatives"]) == (5, 4, 2)
    assert (math["accuracy"], math["false_accepts"], math["false_rejects"]) == (1.0, 0, 0)
    assert (yes["accuracy"], yes["false_accepts"], yes["false_accept_rate"]) == (0.5, 2, 1.0)
    assert [d["id"] for d in report["disagreements"]] == [1, 2]
    assert report["disagreements"][0]["verdicts"] == {"math": False, "yes": True}
    assert [e["id"] for e in report["errors"]["yes"]] == [1, 2]


def test_load_and_write_round_trip(tmp_path):
    path = tmp_path / "pairs.jsonl"
    cc.write_jsonl(ROWS, path)
    assert cc.load_pairs(path) == ROWS
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prediction": "1", "reference": "1", "expected": 1}) + "\n")
    with pytest.raises(ValueError, match="expected"):
        cc.load_pairs(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="one reward"):
        cc.crosscheck(ROWS, {"bad": always(0.5)})
