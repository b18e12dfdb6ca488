"""Math answer checker: the labelled set, extraction, policies, robustness."""

import json
import pathlib
import time

import pytest

from mm_rlhf_jax.rewards import math as rmath
from mm_rlhf_jax.rewards.math.extract import extract_choice

PAIRS = pathlib.Path(__file__).with_name("math_pairs.jsonl")


def _load_pairs():
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        assert set(row) == {"prediction", "reference", "expected", "category"}, i
        assert isinstance(row["expected"], bool), i
    return rows


def test_labelled_pairs_all_correct():
    rows = _load_pairs()
    assert len(rows) >= 200
    wrong_but_close = [r for r in rows if not r["expected"]]
    assert len(wrong_but_close) >= 60
    categories = {r["category"] for r in rows}
    for needed in ("fraction", "decimal", "boxed", "negative", "percent", "interval", "tuple",
                   "set", "choice", "units", "symbolic", "tolerance", "relation", "chain",
                   "labeled", "matrix", "comma_decimal", "multi_box", "prose_answer", "escaped"):
        assert needed in categories, needed
    errors = []
    for i, row in enumerate(rows):
        got = rmath.is_equivalent(row["prediction"], row["reference"])
        if got is not row["expected"]:
            errors.append((i + 1, row["category"], row["prediction"], row["reference"],
                           row["expected"]))
    accuracy = 1 - len(errors) / len(rows)
    print(f"math_pairs.jsonl: {len(rows)} pairs ({len(wrong_but_close)} negatives), "
          f"accuracy {accuracy:.4f}")
    assert errors == [], f"accuracy {accuracy:.4f}; wrong rows (line, ...): {errors}"


@pytest.mark.parametrize("text, answer", [
    (r"so $\boxed{\frac{a}{b+\{c\}}}$ is it", r"\frac{a}{b+\{c\}}"),
    (r"\boxed{1} then \fbox{2}", "2"),
    (r"\boxed 7 is final", "7"),
    ("work...\n#### 1,234\n", "1,234"),
    ("The final answer is $x^2$. I hope it is correct.", "x^2"),
    ("Answer: 3.5.", "3.5"),
    ("So the answer is 12 apples. Then we stop.", "12 apples"),
    (r"\frac{2}{3}", r"\frac{2}{3}"),
    ("It costs 5 dollars, then 7.25 dollars", "7.25"),
    (r"we find $x = \frac{1}{2}$ in the end", r"x = \frac{1}{2}"),
    ("no numbers here at all, sorry", None),
])
def test_extract_answer(text, answer):
    assert rmath.extract_answer(text) == answer


@pytest.mark.parametrize("text, letter", [
    ("(B)", "B"), ("B", "B"), ("C) 12", "C"), (r"\boxed{\text{(D)}}", "D"),
    ("The answer is **E**.", "E"), ("A triangle", None),
    ("between (A) and (B) it is unclear", None), ("(B) or (C)", None),
    ("The answer is (B) or (C).", None), ("The answer is B or C", None),
    ("The answer is (B), not A.", "B"), ("(B) because (B) is larger", "B"),
])
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_math_reward_is_binary_float():
    assert rmath.math_reward(r"\boxed{0.5}", r"\frac12") == 1.0
    assert rmath.math_reward(r"\boxed{0.5}", r"\frac13") == 0.0
    assert isinstance(rmath.math_reward("1", "1"), float)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="prediction must be str"):
        rmath.is_equivalent(None, "1")
    with pytest.raises(TypeError, match="reference must be str"):
        rmath.is_equivalent("1", 1)
    with pytest.raises(ValueError, match="reference has no answer"):
        rmath.is_equivalent("1", "   ")
    with pytest.raises(TypeError, match="extract_answer"):
        rmath.extract_answer(b"1")


def test_tolerance_and_percent_policies():
    # relative tolerance 1e-6: 7 significant digits match, rounded decimals do not
    assert rmath.is_equivalent("0.1428571", r"\frac{1}{7}")
    assert not rmath.is_equivalent("0.14286", r"\frac{1}{7}")
    assert not rmath.is_equivalent("0.143", r"\frac{1}{7}")
    # one-sided percent sign: p% == p == p/100; no sign: 20 != 0.2
    assert rmath.is_equivalent("20%", "20") and rmath.is_equivalent("20%", "0.2")
    assert not rmath.is_equivalent("20", "0.2")
    assert not rmath.is_equivalent("20%", "2")


@pytest.mark.parametrize("prediction", [
    "2^{2^{2^{2^{2^{2^{2}}}}}}", "99999999!", r"\binom{100000}{50000}", "10^{10^{10}} + 1",
    "(" * 300 + "2" + ")" * 300, "x" * 5000, r"\sqrt{" * 150 + "2" + "}" * 150,
    "__import__('os').system('touch /tmp/pwned')", "1e999999999",
])
def test_hostile_answers_are_bounded_and_never_evaluated(prediction, tmp_path):
    start = time.monotonic()
    result = rmath.is_equivalent(prediction, "1")
    assert result is False
    assert time.monotonic() - start < 2.0
    assert not pathlib.Path("/tmp/pwned").exists()
