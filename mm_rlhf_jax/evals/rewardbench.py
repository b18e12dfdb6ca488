"""MM-RLHF-RewardBench metrics: ACC and ACC+ overall and per category.

ACC  = pairs with r(chosen) > r(rejected) / pairs
ACC+ = queries whose pairs are ALL correct / queries   (pairs grouped by query id)
(MM-RLHF §3.2 and the released cal_performance_mmreweard_bench.py; a tie in
score counts as wrong, as the strict > there does.)
"""

from collections import defaultdict
from typing import Sequence

import numpy as np


def acc_and_acc_plus(query_ids, r_chosen, r_rejected) -> tuple[float, float]:
    correct = np.asarray(r_chosen) > np.asarray(r_rejected)
    if correct.size == 0:
        raise ValueError("no pairs to evaluate")
    by_query = defaultdict(list)
    for q, c in zip(np.asarray(query_ids).tolist(), correct.tolist()):
        by_query[q].append(c)
    return float(correct.mean()), float(np.mean([all(v) for v in by_query.values()]))


def rewardbench_metrics(query_ids, categories: Sequence[str], r_chosen, r_rejected) -> dict[str, float]:
    """Flat dict: acc, acc_plus, and acc/<category>, acc_plus/<category>."""
    query_ids, categories = np.asarray(query_ids), np.asarray(categories)
    r_chosen, r_rejected = np.asarray(r_chosen, np.float64), np.asarray(r_rejected, np.float64)
    acc, acc_plus = acc_and_acc_plus(query_ids, r_chosen, r_rejected)
    out = {"acc": acc, "acc_plus": acc_plus, "num_pairs": float(len(r_chosen))}
    for cat in sorted(set(categories.tolist())):
        m = categories == cat
        out[f"acc/{cat}"], out[f"acc_plus/{cat}"] = acc_and_acc_plus(query_ids[m], r_chosen[m], r_rejected[m])
    return out
