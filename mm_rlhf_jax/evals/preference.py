"""Held-out preference accuracy of a policy's implicit rewards (DPO-family, LongPO)."""

import numpy as np


def implicit_reward_accuracy(chosen_rewards, rejected_rewards, is_tie=None) -> float:
    """Fraction of non-tie pairs with beta*(pi_c - ref_c) > beta*(pi_r - ref_r)."""
    c, r = np.asarray(chosen_rewards, np.float64), np.asarray(rejected_rewards, np.float64)
    keep = np.ones_like(c, bool) if is_tie is None else ~np.asarray(is_tie, bool)
    if not keep.any():
        raise ValueError("no non-tie pairs to evaluate")
    return float(np.mean(c[keep] > r[keep]))
