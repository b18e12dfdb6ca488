"""The combined math verifier: this package's checker first, Math-Verify for what it cannot read.

    combined_reward(response, reference) -> float   registered as "math_combined"

Rule: `check(response, reference)` (the package checker) decides whenever it
accepts, or when it read both answers as math (parsed values, a choice
letter, or identical spellings). Only a rejection that rests on a text
fallback or on no extracted answer is handed to Math-Verify
(mathverify.math_verify_reward), whose acceptance then stands.

Why this rule and not "either accepts": Math-Verify's false accepts on the
labelled set (`7 = 2a + b` == `2a + b`, `\\{1,2\\}` == `(1,2)`, `\\boxed{3 \\pm 0}`
== 3, `1, 2` == `1, 2, 2`, the prose "A triangle has three sides" read as
choice A) are on answers this checker reads, so they never reach it;
Math-Verify adds recall only on notations outside this checker's grammar
(`1 \\leq |z| \\leq 3/2` as a union of intervals). Its false accepts and
accuracy on the labelled suites are in bench/RESULTS.md ("Math verifiers").
The checker's fast path costs about a millisecond; Math-Verify runs only on
the rejections it did not understand (worker processes, per-call timeout).
"""

from mm_rlhf_jax.rewards.math import check
from mm_rlhf_jax.rewards.math.mathverify import math_verify_reward


def combined_reward(response: str, reference: str) -> float:
    """1.0 or 0.0 by the rule in the module docstring."""
    equal, understood = check(response, reference)
    if equal:
        return 1.0
    if understood:
        return 0.0
    return math_verify_reward(response, reference)


def combined_rewards(pairs) -> list:
    """combined_reward for each (response, reference); Math-Verify's share in parallel."""
    pairs = [tuple(p) for p in pairs]
    verdicts = [check(response, reference) for response, reference in pairs]
    out = [1.0 if equal else 0.0 for equal, _ in verdicts]
    todo = [i for i, (equal, understood) in enumerate(verdicts) if not equal and not understood]
    if todo:
        from mm_rlhf_jax.rewards.math.mathverify import math_verify_rewards

        for i, reward in zip(todo, math_verify_rewards([pairs[i] for i in todo])):
            out[i] = reward
    return out
