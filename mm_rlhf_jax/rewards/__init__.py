"""Rewards: reasoning-task verifiers (RTV) for hybrid-reward RL.

  math.py       is_equivalent / extract_answer / math_reward: final-answer checker
                (math_extract, math_normalize, math_parse, math_values, math_compare)
  sandbox.py    run_python / code_reward: untrusted code against unit tests in an
                isolated process (sandbox_host, sandbox_supervisor, sandbox_runner)
  verifiers.py  VERIFIERS registry: "math", "code" -> (response, reference) -> float

Kept light on purpose: submodules are imported where used (the math checker
imports sympy; the sandbox needs only the standard library).
"""
