"""The "math_verify" and "math_combined" verifiers (need the math-verify package)."""

import threading
import time

import pytest

from mm_rlhf_jax.rewards.math import combined, mathverify
from mm_rlhf_jax.rewards.verifiers import VERIFIERS

pytestmark = pytest.mark.skipif(not mathverify.available(),
                                reason="math-verify is not installed (pip install math-verify)")


@pytest.fixture(scope="module", autouse=True)
def small_pool():
    mathverify.configure(workers=2, timeout_s=4.0)
    yield
    mathverify.configure()


@pytest.mark.parametrize("response, reference, expected", [
    (r"so $\boxed{\frac{1}{2}}$", "0.5", 1.0),
    (r"so $\boxed{\frac{1}{3}}$", "0.5", 0.0),
    (r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}", 1.0),  # bare LaTeX reference wrapped in $..$
    ("1000,99", "1000.99", 1.0),  # a plain number is passed as it is
    ("x < -2", "x > -2", 0.0),  # a bare relation is read as LaTeX
    ("The answer is B", "B", 1.0),  # letters read with StringExtractionConfig
    (r"$\boxed{x+y=2}$", "x-y=2", 0.0),
    ("7 = 2a + b", "2a + b", 1.0),  # Math-Verify's false accepts (labelled set)
    (r"\{1,2\}", "(1,2)", 1.0),
])
def test_math_verify_verdicts(response, reference, expected):
    assert VERIFIERS.get("math_verify")(response, reference) == expected


def test_a_hanging_verdict_times_out_from_a_thread():
    """The power tower hangs sympy inside Math-Verify; signal.alarm could not stop
    it outside the main thread, the pool kills the worker instead."""
    got, before = [], mathverify.shared_pool().timeouts
    start = time.monotonic()
    t = threading.Thread(target=lambda: got.append(mathverify.math_verify_reward("2^{2^{2^{2^{2^{2}}}}}", "2")))
    t.start()
    t.join()
    assert got == [0.0]
    assert time.monotonic() - start < 4.0 + 3.0
    assert mathverify.shared_pool().timeouts == before + 1
    assert mathverify.math_verify_reward("3", "3") == 1.0  # the pool recovered


def test_combined_rule():
    # read by the package checker: its verdict stands, Math-Verify's false accept does not
    assert VERIFIERS.get("math_combined")("7 = 2a + b", "2a + b") == 0.0
    # not readable by the checker (|z| bounds): Math-Verify may accept
    assert combined.combined_reward(r"$z \in \left[-\frac{3}{2}, -1\right] \cup \left[1, \frac{3}{2}\right]$",
                                    r"$1\leq|z|\leq \frac{3}{2}$") == 1.0
    assert combined.combined_rewards([(r"\boxed{4}", "4"), (r"\{1,2\}", "(1,2)"), ("no answer", "5")]) \
        == [1.0, 0.0, 0.0]


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="response must be str"):
        mathverify.math_verify_reward(None, "1")
    with pytest.raises(ValueError, match="configure"):
        mathverify.configure(workers=0)
