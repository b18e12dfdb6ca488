"""Generation evals: is a generated answer right? (answers come from rollout.generate.Generator)."""

from typing import Callable, Sequence

import numpy as np

from mm_rlhf_jax.data.synthetic import mmrlhf
from mm_rlhf_jax.registry import Registry

# name -> f(generated text, query record) -> bool
ANSWER_CHECKERS: Registry[Callable] = Registry("answer checker")
ANSWER_CHECKERS.register("synthetic")(mmrlhf.is_correct)  # the bundled synthetic MM-RLHF queries


def answer_correct(texts: Sequence[str], queries, checker: str) -> np.ndarray:
    """bool[N]: whether each generated text answers its query right (ANSWER_CHECKERS[checker])."""
    check = ANSWER_CHECKERS.get(checker)
    return np.asarray([bool(check(t, q)) for t, q in zip(texts, queries)], bool)


def accuracy_by_category(correct, queries) -> dict[str, float]:
    """{query category: mean of `correct` over its queries} (sorted keys)."""
    correct, cats = np.asarray(correct, bool), np.asarray([q.category for q in queries], object)
    return {str(cat): float(correct[cats == cat].mean()) for cat in sorted(set(cats.tolist()))}
