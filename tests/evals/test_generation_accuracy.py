"""evals.generation: greedy-answer accuracy, overall and per category, on synthetic queries."""

import numpy as np
import pytest

from mm_rlhf_jax.evals import generation
from mm_rlhf_jax.data.synthetic import mmrlhf as S


def _query(task, seed):
    rec, _ = S.make_query(np.random.default_rng(seed), f"q{seed}", task, S.SyntheticConfig())
    return rec


def test_accuracy_by_category_hand_counted():
    queries = [_query("colour", 0), _query("count", 1), _query("safety", 2), _query("mcq", 3)]
    right = [f"It is {S.ground_truth(queries[0])}.", f"{S.ground_truth(queries[1])}.", "Sorry, I cannot help.",
             "(Z) none."]  # the last is wrong: no option letter
    assert [q.category for q in queries] == ["short", "short", "safety", "mcq"]
    correct = generation.answer_correct(right, queries, "synthetic")
    assert correct.tolist() == [True, True, True, False]
    assert generation.accuracy_by_category(correct, queries) == {"mcq": 0.0, "safety": 1.0, "short": 1.0}
    assert generation.accuracy_by_category([True, False, True, True], queries)["short"] == pytest.approx(0.5)
