"""evals.preference: implicit-reward accuracy overall and per group, with hand-computed values."""

import pytest

from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.evals.preference import accuracy_by, implicit_reward_accuracy, pair_groups


def test_accuracy_ignores_ties():
    assert implicit_reward_accuracy([1.0, 0.0, 2.0], [0.0, 1.0, 5.0], is_tie=[False, False, True]) == 0.5


def test_accuracy_by_group():
    got = accuracy_by(["a", "b", "a", "a"], [1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 1.0, 3.0])
    assert got == {"a": pytest.approx(2 / 3), "b": 0.0}
    with pytest.raises(ValueError, match="length"):
        accuracy_by(["a"], [1.0, 2.0], [0.0, 1.0])


def test_pair_groups_by_category_and_rank():
    # q: x > y > z (three pairs); v: a video query with one pair
    pairs = [PairRecord(id="q", prompt="p", chosen=c, rejected=r, category="short")
             for c, r in (("x", "y"), ("x", "z"), ("y", "z"))]
    pairs.append(PairRecord(id="v", prompt="p", chosen="m", rejected="n", category="video"))
    # released MM-RLHF pairs have no category field: it comes from the media path, else "unknown"
    pairs.append(PairRecord(id="w", prompt="p", chosen="m", rejected="n", image="mcq/0001.png"))
    pairs.append(PairRecord(id="u", prompt="p", chosen="m", rejected="n", image="img/0002.png"))
    g = pair_groups(pairs)
    assert g["category"] == ["short", "short", "short", "video", "mcq", "unknown"]
    assert g["ranks"] == ["0v1", "0v2", "1v2", "0v1", "0v1", "0v1"]
