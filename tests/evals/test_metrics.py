import numpy as np
import pytest

from mm_rlhf_jax.evals.preference import implicit_reward_accuracy
from mm_rlhf_jax.evals.rewardbench import rewardbench_metrics


def test_rewardbench_acc_and_acc_plus_by_hand():
    # query 1 (mcq): 2/2 correct; query 2 (mcq): 1/2; query 3 (video): 1/1 (tie counts as wrong elsewhere).
    q = [1, 1, 2, 2, 3, 4]
    cat = ["mcq", "mcq", "mcq", "mcq", "video", "video"]
    rc = [2.0, 1.0, 0.5, 3.0, 1.0, 0.7]
    rr = [1.0, 0.0, 0.9, 1.0, 0.0, 0.7]
    m = rewardbench_metrics(q, cat, rc, rr)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["acc_plus"] == pytest.approx(2 / 4)
    assert m["acc/mcq"] == pytest.approx(3 / 4) and m["acc_plus/mcq"] == pytest.approx(1 / 2)
    assert m["acc/video"] == pytest.approx(1 / 2) and m["acc_plus/video"] == pytest.approx(1 / 2)


def test_implicit_reward_accuracy_excludes_ties():
    assert implicit_reward_accuracy([1, 2, 0], [0, 3, 5], is_tie=[False, False, True]) == 0.5
    with pytest.raises(ValueError):
        implicit_reward_accuracy([1], [0], is_tie=[True])
