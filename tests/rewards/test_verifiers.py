"""The verifier registry used by the hybrid reward router."""

import pytest

from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.verifiers import VERIFIERS


def test_registry_entries_and_signature():
    assert isinstance(VERIFIERS, Registry)
    assert VERIFIERS.names() == ["code", "math", "math_combined", "math_verify"]
    math_verifier = VERIFIERS.get("math")
    assert math_verifier("... so the answer is $\\boxed{\\frac{3}{4}}$.", "0.75") == 1.0
    assert math_verifier("... so the answer is $\\boxed{\\frac{3}{4}}$.", "0.7") == 0.0
    code_verifier = VERIFIERS.get("code")
    response = "```python\ndef double(x):\n    return 2 * x\n```"
    assert code_verifier(response, "assert double(4) == 8") == 1.0
    assert code_verifier(response, "assert double(4) == 9") == 0.0


def test_unknown_verifier_names_the_choices():
    with pytest.raises(KeyError, match="registered: \\['code', 'math', 'math_combined', 'math_verify'\\]"):
        VERIFIERS.get("chess")
