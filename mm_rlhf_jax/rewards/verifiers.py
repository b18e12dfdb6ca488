"""Registry of reasoning-task verifiers (RTV, papers.md §2) for reward routing.

Every entry has the signature `verifier(response: str, reference: str) -> float`
with values in {0.0, 1.0}:

  "math"           `math.math_reward(response, reference_answer)`: the response's
                   final answer equals the reference answer (reference may be a
                   worked solution with \\boxed{} or "#### X"). The default: this
                   package's checker, no optional dependency, about a millisecond.
  "math_verify"    `math.mathverify.math_verify_reward`: Math-Verify's verdict (the
                   checker TRL, verl and open-r1 use), in worker processes with a
                   per-call timeout, safe from threads; needs `pip install math-verify`.
  "math_combined"  `math.combined.combined_reward`: "math", with Math-Verify consulted
                   only for rejections of answers "math" could not read.
  "code"           `sandbox.code_reward(response, tests)`: the response's Python code
                   block passes the unit tests (Python statements, e.g. asserts) in the
                   sandbox.

    reward = VERIFIERS.get(domain)(response, reference)

Accuracy and false accepts of the three math verifiers on public suites and on
the labelled set: bench/RESULTS.md, "Math verifiers".
"""

from typing import Callable

from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.math import math_reward
from mm_rlhf_jax.rewards.math.combined import combined_reward
from mm_rlhf_jax.rewards.math.mathverify import math_verify_reward
from mm_rlhf_jax.rewards.sandbox import code_reward

Verifier = Callable[[str, str], float]

VERIFIERS: Registry[Verifier] = Registry("verifier")
VERIFIERS.register("math")(math_reward)
VERIFIERS.register("math_verify")(math_verify_reward)
VERIFIERS.register("math_combined")(combined_reward)
VERIFIERS.register("code")(code_reward)
