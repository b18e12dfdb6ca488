"""Registry of reasoning-task verifiers (RTV, papers.md §2) for reward routing.

Every entry has the signature `verifier(response: str, reference: str) -> float`
with values in {0.0, 1.0}:

  "math"  `math.math_reward(response, reference_answer)`: the response's final
          answer equals the reference answer (reference may be a worked
          solution with \\boxed{} or "#### X").
  "code"  `sandbox.code_reward(response, tests)`: the response's Python code
          block passes the unit tests (Python statements, e.g. asserts) in the
          sandbox.

    reward = VERIFIERS.get(domain)(response, reference)
"""

from typing import Callable

from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.math import math_reward
from mm_rlhf_jax.rewards.sandbox import code_reward

Verifier = Callable[[str, str], float]

VERIFIERS: Registry[Verifier] = Registry("verifier")
VERIFIERS.register("math")(math_reward)
VERIFIERS.register("code")(code_reward)
