"""Math answer verifier: `is_equivalent`, `extract_answer`, `math_reward`.

    is_equivalent(prediction, reference) -> bool

`prediction` is a model response (or a bare answer); its final answer is
found by `extract_answer` (extract.py: last \\boxed{}, "#### X",
"the answer is X", a bare answer, else the last number). `reference` is a
bare answer, or a worked solution containing \\boxed{} / "#### X", from
which the answer is taken the same way.

Then both answers are normalised (normalize.py: LaTeX fractions and
spacing, \\text{} units, degrees, thousands separators, mixed numbers,
trailing periods), given structure (values.py: tuples and intervals
keep their brackets, sets and bare lists are unordered, `x = a` is a,
`a \\pm b` is two answers) and compared (compare.py):

  * numbers with a relative tolerance of 1e-6: 1/2 == 0.5 == \\frac{1}{2},
    1/3 == 0.3333333 but 1/3 != 0.333 (truncated decimals do not match);
  * percentages: 50% == 50 == 0.5 when one side has the % sign, 50 != 0.5
    otherwise;
  * expressions by value at fixed points (2\\sqrt{2} == \\sqrt{8},
    x^2 - 1 == (x-1)(x+1)), never by string;
  * multiple choice: when the reference is a letter ("B", "(B)", "B."), the
    response must commit to that letter (extract.extract_choice).
Unparseable answers fall back to a normalised string comparison. Wrong
answers that look close stay wrong: -2 != 2, (1, 2) != [1, 2], 1/2 != 1/3.

Untrusted text is never evaluated with eval(); parsing is bounded in size
and in the magnitude of powers and factorials (parse.py).
"""

from mm_rlhf_jax.rewards.math.compare import values_equal
from mm_rlhf_jax.rewards.math.extract import _MAX_WHOLE, choice_letter, extract_answer, extract_choice
from mm_rlhf_jax.rewards.math.normalize import normalize
from mm_rlhf_jax.rewards.math.values import parse_answer

__all__ = ["answers_equal", "extract_answer", "extract_choice", "is_equivalent",
           "math_reward", "reference_answer"]


def reference_answer(reference: str) -> str:
    """The answer in a reference: extracted from a worked solution that has
    \\boxed{} or "####" or is longer than a bare answer (over 80 characters
    or several lines: "... The final answer is $28\\%$."), else the
    reference itself."""
    if not isinstance(reference, str):
        raise TypeError(f"reference must be str, got {type(reference).__name__}")
    answer = reference.strip()
    if "\\boxed" in reference or "\\fbox" in reference or "####" in reference:
        answer = extract_answer(reference) or ""
    elif len(answer) > _MAX_WHOLE or "\n" in answer:
        answer = extract_answer(reference) or answer
    if not answer:
        raise ValueError(f"reference has no answer: {reference[:200]!r}")
    return answer


def answers_equal(prediction_answer: str, reference_answer_text: str) -> bool:
    """Equality of two already-extracted answers; identically spelled answers
    (after normalisation) are equal even where the parser cannot read them."""
    if normalize(prediction_answer) == normalize(reference_answer_text):
        return True
    return values_equal(parse_answer(prediction_answer), parse_answer(reference_answer_text))


def is_equivalent(prediction: str, reference: str) -> bool:
    """Does the response's final answer equal the reference answer?"""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be str, got {type(prediction).__name__}")
    reference = reference_answer(reference)
    letter = choice_letter(reference)
    if letter is not None:
        return extract_choice(prediction) == letter
    answer = extract_answer(prediction)
    if answer is None:
        return False
    return answers_equal(answer, reference)


def math_reward(response: str, reference: str) -> float:
    """1.0 when `is_equivalent(response, reference)`, else 0.0."""
    return 1.0 if is_equivalent(response, reference) else 0.0
