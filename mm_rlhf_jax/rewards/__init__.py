"""Rewards for hybrid-reward RL.

  math/              is_equivalent / extract_answer / math_reward: final-answer checker
                     (extract, normalize, parse, values, compare)
  sandbox/           run_python / code_reward: untrusted code against unit tests in an
                     isolated process (host, supervisor, runner, ids)
  verifiers.py       VERIFIERS registry: "math", "code" -> (response, reference) -> float
  genrm.py           generative reward model: a judge LM scoring against a reference
  references.py      best-of-N GenRM references (the RM's best policy sample), cached per prompt hash
  router.py          the hybrid router: verifier -> GenRM with ground truth -> GenRM with reference
                     -> GenRM with a best-of-N reference -> learned reward model (the fall-through)
  prompt_selection.py  Pre-PPO: keep the hardest new prompts of each domain under the initial policy

Kept light on purpose: submodules are imported where used (the math checker
imports sympy; the sandbox needs only the standard library).
"""
