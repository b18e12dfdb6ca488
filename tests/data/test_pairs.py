"""All-pairs construction from rankings, ties kept apart (hand-listed expectations)."""

from mm_rlhf_jax.data.pairs import all_pairs, pairs_from_queries, preference_pairs, tie_pairs
from mm_rlhf_jax.data.records import parse_query


def query(ranking, ties, n=4, qid="q"):
    return parse_query({
        "id": qid, "prompt": "p", "category": "short",
        "responses": [{"text": f"r{i}", "reason": f"c{i}",
                       "scores": {"helpfulness": 3, "faithfulness": 3, "ethics": 3}} for i in range(n)],
        "ranking": ranking, "ties": ties})


def as_tuples(pairs):
    return [(p.chosen, p.rejected, p.is_tie) for p in pairs]


def test_four_distinct_ranks_give_six_pairs():
    pairs = all_pairs(query([2, 0, 3, 1], [False, False, False]))
    assert as_tuples(pairs) == [
        ("r2", "r0", False), ("r2", "r3", False), ("r2", "r1", False),
        ("r0", "r3", False), ("r0", "r1", False), ("r3", "r1", False)]
    assert all(p.id == "q" and p.category == "short" for p in pairs)
    assert [(p.chosen_reason, p.rejected_reason) for p in pairs][0] == ("c2", "c0")


def test_ties_are_separate_pairs_never_preferences():
    # r2 > (r0 = r3) > r1
    pairs = all_pairs(query([2, 0, 3, 1], [False, True, False]))
    assert as_tuples(preference_pairs(pairs)) == [
        ("r2", "r0", False), ("r2", "r3", False), ("r2", "r1", False), ("r0", "r1", False), ("r3", "r1", False)]
    assert as_tuples(tie_pairs(pairs)) == [("r0", "r3", True)]
    assert as_tuples(all_pairs(query([2, 0, 3, 1], [False, True, False]), with_ties=False)) == \
        as_tuples(preference_pairs(pairs))


def test_all_tied_gives_no_preference_pairs_and_counts_add_up():
    tied = all_pairs(query([0, 1, 2], [True, True], n=3))
    assert len(tied) == 3 and preference_pairs(tied) == []
    pairs = pairs_from_queries([query([0, 1, 2, 3], [False] * 3, qid="a"), query([1, 0], [False], n=2, qid="b")])
    assert len(pairs) == 6 + 1 and [p.id for p in pairs].count("b") == 1
