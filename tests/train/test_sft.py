"""sft.best_responses: which responses the supervised warm start on pairs fits."""

import pytest

from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.data.sources import RecordPairSource
from mm_rlhf_jax.train.sft import best_responses


def _all_pairs(qid, ranked, tie_top=False):
    """Pairs of a query whose responses are best-first; tie_top: the first two tie (a tie pair, no preference)."""
    pairs = []
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            pairs.append(PairRecord(id=qid, prompt="p", chosen=a, rejected=b, is_tie=tie_top and (a, b) == ranked[:2]))
    return pairs


@pytest.mark.parametrize("top_k, want", [
    (1, {("q1", "h"), ("q2", "H"), ("q2", "T")}),
    (2, {("q1", "h"), ("q1", "t"), ("q2", "H"), ("q2", "T")}),
    (3, {("q1", "h"), ("q1", "t"), ("q1", "w"), ("q2", "H"), ("q2", "T"), ("q2", "W")}),
])
def test_top_k_ranks_with_ties(top_k, want):
    # q1: h > t > w > i; q2: H = T > W > I (W is beaten by two responses: rank 2, competition ranking)
    source = RecordPairSource(_all_pairs("q1", ("h", "t", "w", "i")) + _all_pairs("q2", ("H", "T", "W", "I"), True), "")
    got = [(r.id, r.chosen) for r in best_responses(source, top_k).records]
    assert len(got) == len(set(got))  # each response once, though it is `chosen` in several pairs
    assert set(got) == want


def test_top_k_must_be_positive():
    with pytest.raises(ValueError, match="top_k"):
        best_responses(RecordPairSource(_all_pairs("q", ("a", "b")), ""), 0)
