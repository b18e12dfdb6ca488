"""Held-out preference accuracy of a policy's implicit rewards (DPO-family, LongPO)."""

import numpy as np

from mm_rlhf_jax.data.pairs import response_ranks


def implicit_reward_accuracy(chosen_rewards, rejected_rewards, is_tie=None) -> float:
    """Fraction of non-tie pairs with beta*(pi_c - ref_c) > beta*(pi_r - ref_r)."""
    c, r = np.asarray(chosen_rewards, np.float64), np.asarray(rejected_rewards, np.float64)
    keep = np.ones_like(c, bool) if is_tie is None else ~np.asarray(is_tie, bool)
    if not keep.any():
        raise ValueError("no non-tie pairs to evaluate")
    return float(np.mean(c[keep] > r[keep]))


def accuracy_by(groups, chosen_rewards, rejected_rewards) -> dict[str, float]:
    """{group: implicit-reward accuracy of its pairs}, groups[i] naming pair i's group (sorted keys)."""
    c, r = np.asarray(chosen_rewards, np.float64), np.asarray(rejected_rewards, np.float64)
    groups = np.asarray(groups, object)
    if not (len(groups) == len(c) == len(r)):
        raise ValueError(f"groups, chosen and rejected differ in length: {len(groups)}, {len(c)}, {len(r)}")
    return {str(g): float(np.mean(c[groups == g] > r[groups == g])) for g in sorted(set(groups.tolist()))}


def pair_groups(pairs) -> dict[str, list[str]]:
    """Two groupings of pair records for accuracy_by: by category, and by (chosen rank, rejected rank).

    Categories are PairRecord.resolved_category (the field, else the keyword in
    the media path, as MM-RLHF's released pair files have no category field).
    The rank grouping (e.g. "0v1": best vs second) shows which distinctions a
    policy has learnt; ranks come from the pairs themselves (data.pairs.response_ranks).
    """
    ranks = response_ranks(pairs)
    return {"category": [p.resolved_category() or "unknown" for p in pairs],
            "ranks": [f"{ranks[(p.id, p.chosen)]}v{ranks[(p.id, p.rejected)]}" for p in pairs]}
