"""Pairs from a ranking: every two responses of different rank make one pair (MM-RLHF §4.2).

For n responses with distinct ranks that is C(n, 2) pairs (6 for 4), not just
best-vs-worst. Responses of equal rank give `is_tie=True` pairs: the reward
model's tie loss uses them, DPO never does (`preference_pairs` drops them).
"""

from typing import Iterable

from mm_rlhf_jax.data.records import PairRecord, QueryRecord


def all_pairs(query: QueryRecord, *, with_ties: bool = True) -> list[PairRecord]:
    """Pairs of one query, better response as `chosen`, ordered by (chosen rank, rejected rank).

    Args:
      query: an annotated query.
      with_ties: also emit `is_tie=True` pairs for equally ranked responses
        (chosen/rejected then follow the ranking order, which carries no preference).
    Returns:
      PairRecords that share the query's id, media and category; critiques are
      the responses' written reasons; `delta` stays unknown (None) since it is a
      reward model's margin, not an annotation.
    """
    ranks = query.ranks()
    order = list(query.ranking)
    out = []
    for a in range(len(order)):
        for b in range(a + 1, len(order)):
            i, j = order[a], order[b]
            tie = ranks[i] == ranks[j]
            if tie and not with_ties:
                continue
            ri, rj = query.responses[i], query.responses[j]
            out.append(PairRecord(
                id=query.id, prompt=query.prompt, chosen=ri.text, rejected=rj.text,
                image=query.image, video=query.video,
                chosen_reason=ri.reason, rejected_reason=rj.reason,
                is_tie=tie, category=query.category, where=query.where))
    return out


def pairs_from_queries(queries: Iterable[QueryRecord], *, with_ties: bool = True) -> list[PairRecord]:
    return [p for q in queries for p in all_pairs(q, with_ties=with_ties)]


def preference_pairs(pairs: Iterable[PairRecord]) -> list[PairRecord]:
    """The pairs DPO trains on: ties removed (a tie says nothing about which is better)."""
    return [p for p in pairs if not p.is_tie]


def tie_pairs(pairs: Iterable[PairRecord]) -> list[PairRecord]:
    return [p for p in pairs if p.is_tie]


def response_ranks(pairs: Iterable[PairRecord]) -> dict[tuple[str, str], int]:
    """(query id, response text) -> rank recovered from pair records: how many responses beat it.

    Competition ranking, 0 = best: tied responses share a rank and the next one
    skips (A = B > C gives 0, 0, 2). A response that never appears as `rejected`
    in a non-tie pair has rank 0.
    """
    beaten_by: dict[tuple[str, str], set[str]] = {}
    for p in pairs:
        beaten_by.setdefault((p.id, p.chosen), set())
        beaten_by.setdefault((p.id, p.rejected), set())
        if not p.is_tie:
            beaten_by[(p.id, p.rejected)].add(p.chosen)
    return {k: len(v) for k, v in beaten_by.items()}
