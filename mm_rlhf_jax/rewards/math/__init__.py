"""Math answer verifier: `is_equivalent`, `extract_answer`, `math_reward`.

    is_equivalent(prediction, reference) -> bool
    check(prediction, reference) -> (equal, understood)

`prediction` is a model response (or a bare answer); its final answer is
found by `extract_answer` (extract.py: the last \\boxed{} joined with boxes
connected to it, "#### X", "the answer is X" (reading through prose to its
value), a bare answer, else the last number). `reference` is a bare answer,
or a worked solution (with \\boxed{} / "#### X", or longer than a bare
answer), from which the answer is taken the same way.

Then both answers are normalised (normalize.py: LaTeX fractions and
spacing, \\text{} units, degrees, thousands separators, mixed numbers,
twice-escaped commands, trailing periods), given structure (values.py and
relations.py: tuples and intervals keep their brackets, sets and bare lists
are unordered, `x = a` and `f(x) = a` are a, `a = b = c` is c, `a \\approx b`
is a, inequalities are relations, `a \\pm b` is two answers, `2,74` may be a
decimal comma, matrices are matrices) and compared (compare.py):

  * numbers with a relative tolerance of 1e-6: 1/2 == 0.5 == \\frac{1}{2},
    1/3 == 0.3333333 but 1/3 != 0.333 (truncated decimals do not match);
  * percentages: 50% == 50 == 0.5 when one side has the % sign, 50 != 0.5
    otherwise;
  * expressions by value at fixed points (2\\sqrt{2} == \\sqrt{8},
    x^2 - 1 == (x-1)(x+1)), never by string; equations up to a non-zero
    factor (x + y = 1 == 2x + 2y = 2, x + y = 2 != x - y = 2); relations up to
    a positive factor (x \\geq 5 == 5 \\leq x, -x > -1 == x < 1), and a
    relation bounding one name equals its interval (-2 \\le x \\le 7 == [-2, 7]);
  * matrices entry by entry (pmatrix == bmatrix);
  * multiple choice: when the reference is a letter ("B", "(B)", "B.",
    "C. x = 42"), the response must commit to that letter (extract.extract_choice).
Unparseable answers fall back to a normalised string comparison. Wrong
answers that look close stay wrong: -2 != 2, (1, 2) != [1, 2], 1/2 != 1/3.

Untrusted text is never evaluated with eval(); parsing is bounded in size
and in the magnitude of powers, factorials, series and matrices (parse.py,
lexer.py), and extraction is linear in the response length.

Other modules: mathverify.py (Math-Verify as a second verifier, in worker
processes: pool.py), combined.py (this checker with Math-Verify for what it
cannot read), crosscheck.py (run verifiers over labelled pairs, collect
their disagreements). Accuracy on public suites: bench/RESULTS.md.
"""

from mm_rlhf_jax.rewards.math.compare import values_equal
from mm_rlhf_jax.rewards.math.extract import _MAX_WHOLE, choice_letter, extract_answer, extract_choice
from mm_rlhf_jax.rewards.math.normalize import normalize
from mm_rlhf_jax.rewards.math.values import Text, parse_answer

__all__ = ["answers_equal", "check", "extract_answer", "extract_choice", "is_equivalent",
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


def check(prediction: str, reference: str) -> tuple[bool, bool]:
    """(equal, understood): `is_equivalent`'s verdict, and whether it rests on
    answers this checker read as math (both parsed, a choice letter, or the
    same spelling) rather than on a text fallback or a missing answer."""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be str, got {type(prediction).__name__}")
    reference = reference_answer(reference)
    letter = choice_letter(reference)
    if letter is not None:
        return extract_choice(prediction) == letter, True
    answer = extract_answer(prediction)
    if answer is None:
        return False, False
    if normalize(answer) == normalize(reference):
        return True, True
    ours, theirs = parse_answer(answer), parse_answer(reference)
    understood = not isinstance(ours, Text) and not isinstance(theirs, Text)
    return values_equal(ours, theirs), understood


def is_equivalent(prediction: str, reference: str) -> bool:
    """Does the response's final answer equal the reference answer?"""
    return check(prediction, reference)[0]


def math_reward(response: str, reference: str) -> float:
    """1.0 when `is_equivalent(response, reference)`, else 0.0."""
    return 1.0 if is_equivalent(response, reference) else 0.0
