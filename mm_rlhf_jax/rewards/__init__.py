"""Rewards for hybrid-reward RL.

  math/              is_equivalent / extract_answer / math_reward: final-answer checker
                     (extract, normalize, parse, values, compare)
  sandbox/           run_python / code_reward: untrusted code against unit tests in an
                     isolated process (host, supervisor, runner, ids)
  verifiers.py       VERIFIERS registry: "math", "code" -> (response, reference) -> float
  genrm.py           generative reward model: a judge LM scoring against a reference
  router.py          the hybrid router: verifier -> GenRM with ground truth -> GenRM with reference
  prompt_selection.py  Pre-PPO: keep the hardest new prompts by reward under the initial policy

Kept light on purpose: submodules are imported where used (the math checker
imports sympy; the sandbox needs only the standard library).
"""
